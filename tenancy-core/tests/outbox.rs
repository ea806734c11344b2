//! The deliverer's own rules, on the in-memory outbox: a batch never runs
//! past half its lease (the rest is left for a later claim, so no second
//! deliverer sends a message this one is still sending), and failures are
//! retried, then given up.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use tenancy_core::TenantId;
use tenancy_core::outbox::{
    Backoff, Deliverer, DeliveryError, MemoryOutbox, OutboxMessage, OutboxStore, Transport,
};

/// Takes `delay` per send; counts them.
struct Slow {
    delay: Duration,
    sent: AtomicUsize,
}

#[async_trait]
impl Transport for Slow {
    async fn send(&self, _: &OutboxMessage) -> Result<(), DeliveryError> {
        tokio::time::sleep(self.delay).await;
        self.sent.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

fn outbox_with(n: usize) -> Arc<MemoryOutbox> {
    let outbox = Arc::new(MemoryOutbox::new());
    let tenant = TenantId::new_v4();
    for i in 0..n {
        outbox.enqueue(OutboxMessage::new(
            tenant,
            "c",
            "t",
            serde_json::json!({ "i": i }),
        ));
    }
    outbox
}

#[tokio::test]
async fn a_batch_stops_at_half_its_lease_and_the_rest_waits_for_a_later_claim() {
    let outbox = outbox_with(3);
    let slow = Arc::new(Slow {
        delay: Duration::from_millis(150),
        sent: AtomicUsize::new(0),
    });
    let d = Deliverer::new(outbox.clone(), slow.clone(), "c")
        .lease(Duration::from_millis(200))
        .batch(3);
    let report = d.run_once().await.unwrap();
    assert_eq!((report.delivered, report.deferred), (1, 2), "{report:?}");
    // Still leased to the first run: nobody takes them yet.
    assert!(
        outbox
            .claim("c", 10, Duration::from_secs(1))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(outbox.pending("c").await.unwrap(), 2);
    // The control: with a lease long enough, the whole batch goes.
    let roomy = outbox_with(3);
    let report = Deliverer::new(roomy.clone(), slow, "c")
        .lease(Duration::from_secs(5))
        .batch(3)
        .run_once()
        .await
        .unwrap();
    assert_eq!((report.delivered, report.deferred), (3, 0), "{report:?}");
}

/// Fails `failures` times, then succeeds; `permanent` makes failures final.
struct Flaky {
    failures: usize,
    permanent: bool,
    calls: AtomicUsize,
}

#[async_trait]
impl Transport for Flaky {
    async fn send(&self, _: &OutboxMessage) -> Result<(), DeliveryError> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        match (n < self.failures, self.permanent) {
            (false, _) => Ok(()),
            (true, false) => Err(DeliveryError::Retry("503".into())),
            (true, true) => Err(DeliveryError::Permanent("400".into())),
        }
    }
}

#[tokio::test]
async fn failures_are_retried_with_back_off_then_given_up() {
    let fast = Backoff {
        base: Duration::from_millis(10),
        cap: Duration::from_millis(20),
        max_attempts: 3,
    };
    // Two failures, then acknowledged: three attempts.
    let outbox = outbox_with(1);
    let flaky = Arc::new(Flaky {
        failures: 2,
        permanent: false,
        calls: AtomicUsize::new(0),
    });
    let d = Deliverer::new(outbox.clone(), flaky.clone(), "c").backoff(fast);
    let mut delivered = 0;
    for _ in 0..50 {
        delivered += d.run_once().await.unwrap().delivered;
        if delivered == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!((delivered, flaky.calls.load(Ordering::SeqCst)), (1, 3));
    // Always failing: dead after max_attempts, never sent again.
    let outbox = outbox_with(1);
    let down = Arc::new(Flaky {
        failures: usize::MAX,
        permanent: false,
        calls: AtomicUsize::new(0),
    });
    let d = Deliverer::new(outbox.clone(), down.clone(), "c").backoff(fast);
    let mut dead = 0;
    for _ in 0..50 {
        dead += d.run_once().await.unwrap().dead;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!((dead, down.calls.load(Ordering::SeqCst)), (1, 3));
    assert_eq!(outbox.pending("c").await.unwrap(), 0);
    // A permanent refusal: dead at once.
    let outbox = outbox_with(1);
    let refused = Arc::new(Flaky {
        failures: usize::MAX,
        permanent: true,
        calls: AtomicUsize::new(0),
    });
    let report = Deliverer::new(outbox, refused.clone(), "c")
        .run_once()
        .await
        .unwrap();
    assert_eq!((report.dead, refused.calls.load(Ordering::SeqCst)), (1, 1));
}
