//! The server against slow and greedy clients: headers and bodies have
//! deadlines, connections a cap; and a taken port is named with the way out.
//! Each wall is shown with its twin: the same client against a server whose
//! limit is out of reach is still waiting.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use insurance_agent::app::{self, Config, Limits, Security};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;

#[macro_use]
mod common;
use common::*;

on_both_backends!(
    a_slow_body_is_refused_before_the_tenant_pipeline,
    headers_sent_slowly_end_the_connection,
    connections_past_the_cap_wait_for_a_free_slot,
);

async fn start_limited(backend: Backend, limits: Limits) -> (App, SocketAddr) {
    let app = start_with_limits(backend, Security::default(), limits).await;
    let addr = app.running.addr;
    (app, addr)
}

/// What arrives on `stream` within `wait`: `Some(text)` up to the end of the
/// response head (or the bytes before the server closed), `None` when the
/// server sent nothing and kept the connection open.
async fn answer(stream: &mut (impl AsyncRead + Unpin), wait: Duration) -> Option<String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => {
                return (!got.is_empty()).then(|| String::from_utf8_lossy(&got).into_owned());
            }
            Ok(Ok(0)) | Ok(Err(_)) => return Some(String::from_utf8_lossy(&got).into_owned()),
            Ok(Ok(n)) => {
                got.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&got).into_owned();
                if text.contains("\r\n\r\n") {
                    // The head, plus whatever body came with it.
                    return Some(text);
                }
            }
        }
    }
}

async fn a_slow_body_is_refused_before_the_tenant_pipeline(backend: Backend) {
    let limits = Limits {
        body_timeout: Duration::from_millis(600),
        max_body: 4096,
        ..Limits::default()
    };
    let (app, addr) = start_limited(backend, limits).await;
    let token = login(addr, "admin@sunrise.test", "sunrise-insurance").await;
    // A body past the size limit: 413, whatever the route.
    let big =
        json!({"first_name": "x".repeat(5000), "last_name": "y", "customer_type": "individual"});
    assert_problem(
        &call(addr, "POST", "/customers", Some(&token), Some(big)).await,
        413,
        "app.body-too-large",
    );
    let started = Instant::now();
    let (mut stream, trickle) = slow_post(addr, &token).await;
    let head = answer(&mut stream, Duration::from_secs(5))
        .await
        .expect("an answer");
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");
    assert!(head.contains("app.body-timeout"), "{head}");
    assert!(head.to_lowercase().contains("connection: close"), "{head}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    trickle.abort();
    // Nothing was created.
    let customers = call(addr, "GET", "/customers?limit=100", Some(&token), None).await;
    assert!(!customers.text().contains("Loris"), "{}", customers.text());
    app.running.stop().await.unwrap();

    // Twin: the same client against a body deadline out of reach is still
    // being waited for.
    let limits = Limits {
        body_timeout: Duration::from_secs(60),
        ..Limits::default()
    };
    let (app, addr) = start_limited(backend, limits).await;
    let token = login(addr, "admin@sunrise.test", "sunrise-insurance").await;
    let (mut stream, trickle) = slow_post(addr, &token).await;
    assert_eq!(answer(&mut stream, Duration::from_millis(1500)).await, None);
    trickle.abort();
    drop(stream);
    app.running.stop().await.unwrap();
}

/// A `POST /customers` whose body is promised in full but sent one byte
/// every 200 ms after the first 10: the read half, and the writing task.
async fn slow_post(addr: SocketAddr, token: &str) -> (OwnedReadHalf, tokio::task::JoinHandle<()>) {
    let body = json!({"first_name": "Slow", "last_name": "Loris", "customer_type": "individual"})
        .to_string();
    let head = format!(
        "POST /customers HTTP/1.1\r\nhost: test\r\nauthorization: Bearer {token}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    let (read, mut write) = TcpStream::connect(addr).await.unwrap().into_split();
    write.write_all(head.as_bytes()).await.unwrap();
    write.write_all(&body.as_bytes()[..10]).await.unwrap();
    let rest = body.as_bytes()[10..].to_vec();
    let trickle = tokio::spawn(async move {
        for b in rest {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if write.write_all(&[b]).await.is_err() {
                return;
            }
        }
    });
    (read, trickle)
}

async fn headers_sent_slowly_end_the_connection(backend: Backend) {
    let partial = b"GET /health HTTP/1.1\r\nhost: test\r\n";
    let limits = Limits {
        header_timeout: Duration::from_millis(500),
        ..Limits::default()
    };
    let (app, addr) = start_limited(backend, limits).await;
    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(partial).await.unwrap();
    let started = Instant::now();
    // The server closes the connection (with or without a 408 head).
    let got = answer(&mut slow, Duration::from_secs(5)).await;
    assert!(got.is_some(), "the connection is still open");
    assert!(!got.unwrap().contains(" 200 "));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    // A client that sends its request at once is served (control).
    assert_eq!(call(addr, "GET", "/health", None, None).await.status, 200);
    // An idle kept-alive connection is closed the same way.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET /health HTTP/1.1\r\nhost: test\r\n\r\n")
        .await
        .unwrap();
    let first = answer(&mut idle, Duration::from_secs(2)).await.unwrap();
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(3), idle.read_to_end(&mut rest)).await;
    assert!(
        closed.is_ok(),
        "an idle connection outlived the header deadline"
    );
    app.running.stop().await.unwrap();

    // Twin: with the deadline out of reach, the same partial request keeps
    // its connection.
    let limits = Limits {
        header_timeout: Duration::from_secs(60),
        ..Limits::default()
    };
    let (app, addr) = start_limited(backend, limits).await;
    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(partial).await.unwrap();
    assert_eq!(answer(&mut slow, Duration::from_millis(1500)).await, None);
    drop(slow);
    app.running.stop().await.unwrap();
}

async fn connections_past_the_cap_wait_for_a_free_slot(backend: Backend) {
    let limits = Limits {
        max_connections: 2,
        header_timeout: Duration::from_secs(30),
        ..Limits::default()
    };
    let (app, addr) = start_limited(backend, limits).await;
    let hog_a = TcpStream::connect(addr).await.unwrap();
    let hog_b = TcpStream::connect(addr).await.unwrap();
    // Both slots are taken by connections that send nothing.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut third = TcpStream::connect(addr).await.unwrap();
    third
        .write_all(b"GET /health HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(
        answer(&mut third, Duration::from_millis(1000)).await,
        None,
        "served past the cap"
    );
    // One hog leaves: the waiting client is served.
    drop(hog_a);
    let served = answer(&mut third, Duration::from_secs(5)).await.unwrap();
    assert!(served.starts_with("HTTP/1.1 200"), "{served}");
    drop(hog_b);
    app.running.stop().await.unwrap();
}

#[tokio::test]
async fn a_taken_port_is_named_with_the_way_to_choose_another() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let err = app::start(&Config {
        data_dir: dir.path().to_owned(),
        bind: addr,
        plans: None,
        postgres: None,
        redis: None,
        security: Security::default(),
        limits: Limits::default(),
        billing: Default::default(),
    })
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains(&format!("port {}", addr.port())), "{err}");
    assert!(
        err.contains("INSURANCE_BIND") && err.contains("--bind"),
        "{err}"
    );
    // The binary says the same on its default command.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_insurance-agent"))
        .env("INSURANCE_DATA_DIR", dir.path())
        .env("INSURANCE_BIND", addr.to_string())
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("port {}", addr.port())) && stderr.contains("INSURANCE_BIND"),
        "{stderr}"
    );
    drop(taken);
}
