//! One behaviour table for every [`OutboxStore`] (memory, PostgreSQL,
//! SQLite), delivering over real HTTP to a [`Receiver`]:
//!
//! 1. A committed message survives the loss of every deliverer: a deliverer
//!    killed after the receiver got the message but before recording it
//!    leaves it pending; the next deliverer waits out the lease and sends it
//!    again **with the same idempotency key**, so the receiver's effect
//!    happens once (the twin that ignores keys applies it twice).
//! 2. Failed attempts are retried with back-off until acknowledged; a
//!    permanent refusal is given up (dead), never resent.
//! 3. Concurrent deliverers never send one message twice while none dies.
//! 4. Every request is signed (HMAC) and verifies with the shared secret.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tenancy_core::TenantId;
use tenancy_core::outbox::{
    Backoff, Deliverer, DeliveryError, OutboxMessage, OutboxStore, Transport,
};
use tenancy_core::webhook::{HttpTransport, WebhookSecret};

use crate::webhook::Receiver;

/// Writes a message the way the backend's application code does (in a
/// committed transaction).
#[async_trait]
pub trait OutboxWriter: Send + Sync {
    /// Commits `message`.
    async fn write(&self, message: &OutboxMessage) -> Result<(), String>;
}

/// What [`delivery`] observed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryFigures {
    /// Requests the killed message took (2: the lost acknowledgement, the redelivery).
    pub killed_requests: usize,
    /// Its effects at a receiver that deduplicates by key (1).
    pub killed_effects: usize,
    /// Its effects at the twin that ignores keys (2).
    pub killed_effects_ignoring_keys: usize,
    /// Requests the message answered 503, 503, 200 took (3).
    pub retried_requests: usize,
    /// Of [`CONCURRENT`] messages and 3 deliverers, duplicate sends (0).
    pub concurrent_duplicates: usize,
}

/// Messages in the concurrent step.
pub const CONCURRENT: usize = 40;

/// A transport that dies after the receiver acknowledged: it signals, then
/// never returns (the test aborts its task, as a crash would).
struct DieAfterSend {
    inner: HttpTransport,
    sent: Arc<tokio::sync::Notify>,
}

#[async_trait]
impl Transport for DieAfterSend {
    async fn send(&self, message: &OutboxMessage) -> Result<(), DeliveryError> {
        self.inner.send(message).await?;
        self.sent.notify_one();
        std::future::pending::<()>().await;
        Ok(())
    }
}

fn fail(step: &str, what: impl std::fmt::Display) -> String {
    format!("{step} {what}")
}

/// Runs the table on `channel` (use a fresh one per run: the store may be
/// shared with other tests). Returns the figures, or the failed step.
pub async fn delivery(
    store: Arc<dyn OutboxStore>,
    writer: &dyn OutboxWriter,
    tenant: TenantId,
    channel: &str,
) -> Result<DeliveryFigures, String> {
    let secret = WebhookSecret::new(vec![42; 32]).map_err(|e| fail("0.", e))?;
    let receiver = Receiver::start(secret.clone())
        .await
        .map_err(|e| fail("0.", e))?;
    let transport = HttpTransport::new(&receiver.url(), secret).map_err(|e| fail("0.", e))?;
    let lease = Duration::from_millis(800);
    let fast = Backoff {
        base: Duration::from_millis(50),
        cap: Duration::from_millis(200),
        max_attempts: 5,
    };
    let deliverer = |t: Arc<dyn Transport>| {
        Deliverer::new(store.clone(), t, channel)
            .lease(lease)
            .backoff(fast)
    };

    // 1. Committed, then the deliverer dies after the send.
    let m1 = OutboxMessage::new(
        tenant,
        channel,
        "usage.recorded",
        serde_json::json!({"n": 1}),
    );
    writer.write(&m1).await.map_err(|e| fail("1.", e))?;
    let pending = store.pending(channel).await.map_err(|e| fail("1.", e))?;
    if pending != 1 {
        return Err(fail(
            "1.",
            format!("{pending} pending after the commit, not 1"),
        ));
    }
    let sent = Arc::new(tokio::sync::Notify::new());
    let dying = deliverer(Arc::new(DieAfterSend {
        inner: transport.clone(),
        sent: sent.clone(),
    }));
    let task = tokio::spawn(async move { dying.run_once().await });
    tokio::time::timeout(Duration::from_secs(10), sent.notified())
        .await
        .map_err(|_| fail("1.", "the first deliverer never sent"))?;
    task.abort();
    let _ = task.await;
    let healthy = deliverer(Arc::new(transport.clone()));
    // Its lease still holds: nobody sends meanwhile.
    let early = healthy.run_once().await.map_err(|e| fail("1.", e))?;
    if early.delivered != 0 {
        return Err(fail(
            "1.",
            "a second deliverer sent during the first one's lease",
        ));
    }
    tokio::time::sleep(lease + Duration::from_millis(200)).await;
    let late = healthy.run_once().await.map_err(|e| fail("1.", e))?;
    if late.delivered != 1 {
        return Err(fail(
            "1.",
            format!("after the lease: {late:?}, not 1 delivered"),
        ));
    }
    let again = healthy.run_once().await.map_err(|e| fail("1.", e))?;
    if again.delivered != 0 {
        return Err(fail("1.", "a delivered message was sent again"));
    }
    let of = |key: &str| {
        receiver
            .deliveries()
            .into_iter()
            .filter(|d| d.key.as_deref() == Some(key))
            .count()
    };
    let killed_requests = of(&m1.id.to_string());
    let figures_killed = (receiver.applied(), receiver.applied_ignoring_keys());

    // 2. Retried with back-off; a permanent refusal is dead.
    let m2 = OutboxMessage::new(
        tenant,
        channel,
        "usage.recorded",
        serde_json::json!({"n": 2}),
    );
    writer.write(&m2).await.map_err(|e| fail("2.", e))?;
    receiver.script(&[503, 503]);
    let mut delivered = 0;
    for _ in 0..100 {
        delivered += healthy
            .run_once()
            .await
            .map_err(|e| fail("2.", e))?
            .delivered;
        if delivered == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if delivered != 1 {
        return Err(fail(
            "2.",
            "a message answered 503 twice was never delivered",
        ));
    }
    let retried_requests = of(&m2.id.to_string());
    let m3 = OutboxMessage::new(
        tenant,
        channel,
        "usage.recorded",
        serde_json::json!({"n": 3}),
    );
    writer.write(&m3).await.map_err(|e| fail("2.", e))?;
    receiver.script(&[400]);
    let r = healthy.run_once().await.map_err(|e| fail("2.", e))?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r2 = healthy.run_once().await.map_err(|e| fail("2.", e))?;
    if r.dead != 1 || r2.delivered + r2.retried + r2.dead != 0 || of(&m3.id.to_string()) != 1 {
        return Err(fail(
            "2.",
            format!("a 400 was not given up once: {r:?} then {r2:?}"),
        ));
    }

    // 3. Concurrent deliverers, nobody dies: one send per message.
    let mut keys = Vec::new();
    for n in 0..CONCURRENT {
        let m = OutboxMessage::new(
            tenant,
            channel,
            "usage.recorded",
            serde_json::json!({"n": n}),
        );
        writer.write(&m).await.map_err(|e| fail("3.", e))?;
        keys.push(m.id.to_string());
    }
    let runs: Vec<_> = (0..3)
        .map(|_| {
            let d = deliverer(Arc::new(transport.clone())).batch(5);
            tokio::spawn(async move { d.run_once().await })
        })
        .collect();
    for r in runs {
        r.await
            .map_err(|e| fail("3.", e))?
            .map_err(|e| fail("3.", e))?;
    }
    let pending = store.pending(channel).await.map_err(|e| fail("3.", e))?;
    if pending != 0 {
        return Err(fail("3.", format!("{pending} left pending")));
    }
    let concurrent_duplicates = keys.iter().map(|k| of(k).saturating_sub(1)).sum();
    let missing = keys.iter().filter(|k| of(k) == 0).count();
    if missing != 0 {
        return Err(fail("3.", format!("{missing} messages never sent")));
    }

    // 4. Every request signed, each with its key.
    let deliveries = receiver.deliveries();
    if let Some(d) = deliveries.iter().find(|d| !d.signed || d.key.is_none()) {
        return Err(fail("4.", format!("an unsigned or keyless request: {d:?}")));
    }
    if let Some(d) = deliveries
        .iter()
        .find(|d| d.body["tenant_id"] != serde_json::json!(tenant))
    {
        return Err(fail("4.", format!("a request without its tenant: {d:?}")));
    }
    Ok(DeliveryFigures {
        killed_requests,
        killed_effects: figures_killed.0,
        killed_effects_ignoring_keys: figures_killed.1,
        retried_requests,
        concurrent_duplicates,
    })
}
