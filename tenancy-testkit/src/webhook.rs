//! A real HTTP webhook receiver on loopback, for outbox and billing tests:
//! it records every request (idempotency key, signature, topic, body),
//! checks each signature with the shared secret, answers with scripted
//! statuses, and keeps two tallies of effects — one applied once per
//! idempotency key (what a correct receiver does) and one applied per
//! request (the broken twin: a receiver that ignores the key).

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use tenancy_core::webhook::{
    IDEMPOTENCY_HEADER, SIGNATURE_HEADER, TOPIC_HEADER, WebhookSecret, WebhookVerifier,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// One request as received.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// `Idempotency-Key`.
    pub key: Option<String>,
    /// `Tenancy-Topic`.
    pub topic: Option<String>,
    /// Whether `Tenancy-Signature` verified with the receiver's secret.
    pub signed: bool,
    /// The body, parsed.
    pub body: serde_json::Value,
    /// The status answered.
    pub status: u16,
}

#[derive(Debug, Default)]
struct State {
    deliveries: Vec<Delivery>,
    script: VecDeque<u16>,
    applied: HashSet<String>,
    applied_naive: usize,
}

/// The receiver. Dropping it stops accepting.
#[derive(Debug)]
pub struct Receiver {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Receiver {
    /// Listens on `127.0.0.1:0`, verifying with `secret`.
    pub async fn start(secret: WebhookSecret) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        // Signatures are checked without replay memory: redeliveries are
        // expected, and counted by key below.
        let verifier = WebhookVerifier::with_tolerance(secret, std::time::Duration::from_secs(300));
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else {
                    continue;
                };
                let state = shared.clone();
                let verifier = verifier.clone();
                tokio::spawn(async move {
                    let Some((headers, body)) = read_request(&mut socket).await else {
                        return;
                    };
                    let header = |name: &str| {
                        headers
                            .iter()
                            .find(|(n, _)| n == name)
                            .map(|(_, v)| v.clone())
                    };
                    let key = header(IDEMPOTENCY_HEADER);
                    let signed = verifier
                        .verify_signature_at(
                            header(SIGNATURE_HEADER).as_deref(),
                            key.as_deref(),
                            &body,
                            chrono::Utc::now(),
                        )
                        .is_ok();
                    let status = {
                        let mut s = lock(&state);
                        let status = s.script.pop_front().unwrap_or(200);
                        if (200..300).contains(&status) {
                            s.applied_naive += 1;
                            if let Some(k) = &key {
                                s.applied.insert(k.clone());
                            }
                        }
                        s.deliveries.push(Delivery {
                            key: key.clone(),
                            topic: header(TOPIC_HEADER),
                            signed,
                            body: serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
                            status,
                        });
                        status
                    };
                    let response = format!(
                        "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                    );
                    let _ = socket.write_all(response.as_bytes()).await;
                    let _ = socket.shutdown().await;
                });
            }
        });
        Ok(Self { addr, state, task })
    }

    /// `http://127.0.0.1:<port>/hook`.
    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// Answers the next requests with these statuses (then 200 again).
    pub fn script(&self, statuses: &[u16]) {
        lock(&self.state).script.extend(statuses);
    }

    /// Every request so far.
    pub fn deliveries(&self) -> Vec<Delivery> {
        lock(&self.state).deliveries.clone()
    }

    /// Effects of a receiver that applies each idempotency key once.
    pub fn applied(&self) -> usize {
        lock(&self.state).applied.len()
    }

    /// Effects of the broken twin: a receiver that applies every 2xx request.
    pub fn applied_ignoring_keys(&self) -> usize {
        lock(&self.state).applied_naive
    }
}

async fn read_request(
    socket: &mut tokio::net::TcpStream,
) -> Option<(Vec<(String, String)>, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 1 << 20 {
            return None;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let headers: Vec<(String, String)> = head
        .split("\r\n")
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end..].to_vec();
    while body.len() < length {
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Some((headers, body))
}
