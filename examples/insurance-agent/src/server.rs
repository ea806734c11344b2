//! The HTTP server: accepting connections with a cap, and HTTP/1.1 with a
//! deadline on request headers — a client cannot hold a connection, a
//! request or a tenant's snapshot open by sending slowly.
//!
//! - **Connections**: at most [`Limits::max_connections`] at once; past it,
//!   new ones wait in the kernel's backlog until one closes.
//! - **Headers**: a request's headers (and, on a kept-alive connection, the
//!   next request's) must arrive within [`Limits::header_timeout`], or the
//!   connection is closed.
//! - **Bodies**: read in full, within [`Limits::body_timeout`] and
//!   [`Limits::max_body`], *before* the request reaches the tenancy pipeline
//!   (408 `app.body-timeout` / 413 `app.body-too-large`, and the connection
//!   closed); so a slowly streamed body never holds a tenant snapshot or a
//!   database connection.
//! - **Handling**: each request then has [`Limits::request_timeout`]
//!   ([`crate::drain`]).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, Request};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower_service::Service;

/// What one client may hold, and for how long.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once.
    pub max_connections: usize,
    /// Time to receive a request's headers (and to wait for the next request
    /// on an idle kept-alive connection).
    pub header_timeout: Duration,
    /// Time to receive a request's whole body.
    pub body_timeout: Duration,
    /// The largest request body, in bytes.
    pub max_body: usize,
    /// Time to handle a request once received.
    pub request_timeout: Duration,
}

impl Default for Limits {
    /// 1 024 connections, 10 s for headers, 10 s for a body of at most
    /// 2 MiB, [`crate::drain::REQUEST_TIMEOUT`] to answer.
    fn default() -> Self {
        Self {
            max_connections: 1024,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            max_body: 2 * 1024 * 1024,
            request_timeout: crate::drain::REQUEST_TIMEOUT,
        }
    }
}

/// Binds `addr`, saying which port is taken and how to choose another when
/// it is.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, crate::app::Error> {
    TcpListener::bind(addr).await.map_err(|e| {
        let hint = match e.kind() {
            std::io::ErrorKind::AddrInUse => format!(
                "port {} on {} is already in use (another insurance-agent?): stop that \
                 process, or choose another address with --bind {}:{} or \
                 INSURANCE_BIND={}:{}",
                addr.port(),
                addr.ip(),
                addr.ip(),
                addr.port().wrapping_add(1).max(1),
                addr.ip(),
                addr.port().wrapping_add(1).max(1),
            ),
            std::io::ErrorKind::PermissionDenied => format!(
                "not allowed to listen on {addr} (ports below 1024 need privileges): choose \
                 another address with --bind or INSURANCE_BIND"
            ),
            _ => format!("cannot listen on {addr}: {e}"),
        };
        hint.into()
    })
}

/// Serves `app` on `listener` until `shutdown` resolves, then waits for the
/// open connections to finish (at most `grace`).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: pause, do not spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let router = app.clone();
        let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(remote));
            let mut router = router.clone();
            async move { router.call(request.map(axum::body::Body::new)).await }
        });
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, client = %remote, "connection ended");
            }
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            ?grace,
            "connections still open after the grace period; closing"
        );
    }
    Ok(())
}
