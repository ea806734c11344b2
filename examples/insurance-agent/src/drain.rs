//! Graceful shutdown: on SIGTERM (or Ctrl-C, or [`crate::app::Running::stop`])
//! the server stops admitting work — every new request is answered 503 with
//! `Retry-After` and `Connection: close`, so a load balancer retries it on
//! another instance — lets the requests in flight finish, and only then
//! stops listening. An acknowledged write is never cut off half-way.
//!
//! The same middleware receives each request's body in full, within the
//! server's [`Limits`] (408 or 413 otherwise), before the request goes on,
//! and bounds the handling by [`REQUEST_TIMEOUT`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use tenancy_core::problem::{CONTENT_TYPE, Problem};

use crate::server::Limits;

/// How long a drain waits for requests in flight before it gives up on them.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// The longest a request may take: past it the client gets 503 with
/// `Retry-After` (a dependency is not answering — a database restarting, a
/// pooler queueing) and the request is cancelled; its transaction, not yet
/// committed, rolls back, so a timed-out write is never half-applied.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Requests in flight, and whether the server is draining.
#[derive(Debug, Default)]
pub struct Drain {
    draining: AtomicBool,
    in_flight: AtomicUsize,
    idle: tokio::sync::Notify,
}

impl Drain {
    /// Stops admitting requests and waits (at most `timeout`) until none is
    /// in flight; returns how many were still running at the deadline.
    pub async fn drain(&self, timeout: Duration) -> usize {
        self.draining.store(true, Ordering::SeqCst);
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let idle = self.idle.notified();
            let running = self.in_flight.load(Ordering::SeqCst);
            if running == 0 {
                return 0;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                let left = self.in_flight.load(Ordering::SeqCst);
                tracing::warn!(in_flight = left, "drain timed out; stopping anyway");
                return left;
            }
        }
    }

    /// Whether the server has stopped admitting requests.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }
}

/// Counts a request in flight until it is answered.
struct InFlight<'a>(&'a Drain);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// What the admission middleware needs: the drain and the server's limits.
#[derive(Debug, Clone)]
pub struct Admission {
    /// Requests in flight.
    pub drain: Arc<Drain>,
    /// Body and handling deadlines.
    pub limits: Limits,
}

/// The middleware: 503 while draining; otherwise, counted in flight, the
/// body is received (408 past the body deadline, 413 past the size limit)
/// and the request runs within the request deadline.
pub async fn admit(State(gate): State<Arc<Admission>>, request: Request, next: Next) -> Response {
    let (drain, limits) = (&gate.drain, gate.limits);
    // In flight from the moment its head arrived: a drain waits for the
    // body still on its way (bounded by the body deadline).
    drain.in_flight.fetch_add(1, Ordering::SeqCst);
    let guard = InFlight(drain);
    if drain.is_draining() {
        drop(guard);
        return unavailable(
            "app.shutting-down",
            "Shutting down",
            "this server is shutting down; retry the request",
            true,
        );
    }
    let (parts, body) = request.into_parts();
    let received = tokio::time::timeout(
        limits.body_timeout,
        Limited::new(body, limits.max_body).collect(),
    )
    .await;
    let body = match received {
        Ok(Ok(collected)) => axum::body::Body::from(collected.to_bytes()),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
            return refused(
                413,
                "app.body-too-large",
                format!("the request body is larger than {} bytes", limits.max_body),
            );
        }
        Ok(Err(e)) => {
            return refused(
                400,
                "app.body-unreadable",
                format!("the request body could not be read: {e}"),
            );
        }
        Err(_) => {
            tracing::info!(timeout = ?limits.body_timeout, "request body too slow; refused");
            return refused(
                408,
                "app.body-timeout",
                format!(
                    "the request body did not arrive within {} s; send it at once",
                    limits.body_timeout.as_secs_f64()
                ),
            );
        }
    };
    let request = Request::from_parts(parts, body);
    let response = match tokio::time::timeout(limits.request_timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            tracing::warn!(timeout = ?limits.request_timeout, "request timed out; cancelled");
            unavailable(
                "app.timeout",
                "Try again",
                "the request took too long (a dependency is not answering); it was cancelled \
                 and nothing was changed; retry shortly",
                false,
            )
        }
    };
    drop(guard);
    response
}

/// A client error that ends the connection (the rest of the body may still
/// be on its way).
fn refused(status: u16, code: &'static str, detail: String) -> Response {
    let title = match status {
        408 => "Request Timeout",
        413 => "Content Too Large",
        _ => "Bad Request",
    };
    let problem = Problem::new(status, code, title, detail);
    (
        http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::BAD_REQUEST),
        [
            (http::header::CONTENT_TYPE, CONTENT_TYPE),
            (http::header::CONNECTION, "close"),
        ],
        problem.to_json().to_string(),
    )
        .into_response()
}

fn unavailable(
    code: &'static str,
    title: &'static str,
    detail: &'static str,
    close: bool,
) -> Response {
    let problem = Problem::new(503, code, title, detail);
    let mut response = (
        http::StatusCode::SERVICE_UNAVAILABLE,
        [
            (http::header::CONTENT_TYPE, CONTENT_TYPE),
            (http::header::RETRY_AFTER, "1"),
        ],
        problem.to_json().to_string(),
    )
        .into_response();
    if close {
        response.headers_mut().insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("close"),
        );
    }
    response
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; Ctrl-C only");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
