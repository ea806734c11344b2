//! Audit events: compliance flags, the hash chain, the bounded queue.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use tenancy_core::TenantId;
use tenancy_core::audit::chain::{self, ChainBreak, ChainKey, ChainedEvent, GENESIS};
use tenancy_core::audit::{
    Action, AuditError, AuditEvent, AuditQueue, AuditSink, ComplianceFlags, ComplianceRules,
    MemorySink,
};

fn rules() -> ComplianceRules {
    ComplianceRules::default()
        .pii_field("customers.pan")
        .pii_field("customers.aadhaar")
        .sensitive_field("agents.licence_no")
        .financial_resource("payments")
        .bulk_threshold(100)
}

#[test]
fn compliance_flags_follow_the_rules() {
    let t = TenantId::new_v4();
    let r = rules();
    let flags = |e: AuditEvent| e.classify(&r).flags;
    let f = |pii, financial, bulk_export, high_risk| {
        let mut x = ComplianceFlags::default();
        x.pii = pii;
        x.financial = financial;
        x.bulk_export = bulk_export;
        x.high_risk = high_risk;
        x
    };
    let ev = |action: &str, res: &str| AuditEvent::user(t, "u1", action, res);
    // (event, pii, financial, bulk_export, high_risk)
    let table = [
        (
            ev(Action::READ, "customers").with_fields(["customers.name"]),
            f(false, false, false, false),
        ),
        (
            ev(Action::READ, "customers").with_fields(["customers.pan"]),
            f(true, false, false, false),
        ),
        (
            ev(Action::EXPORT, "customers")
                .with_fields(["customers.name"])
                .with_record_count(101),
            f(false, false, true, false),
        ),
        (
            ev(Action::EXPORT, "customers")
                .with_fields(["customers.name"])
                .with_record_count(100),
            f(false, false, false, false),
        ),
        (
            ev(Action::EXPORT, "customers")
                .with_fields(["customers.aadhaar"])
                .with_record_count(500),
            f(true, false, true, true),
        ),
        (ev(Action::READ, "payments"), f(false, true, false, false)),
        (
            ev(Action::DELETE, "policies").with_resource_id(7),
            f(false, false, false, true),
        ),
        (
            ev(Action::BULK_DELETE, "payments").with_record_count(3),
            f(false, true, false, true),
        ),
        (
            ev(Action::UPDATE, "agents").with_fields(["agents.licence_no"]),
            f(false, false, false, true),
        ),
        (
            ev(Action::UPDATE, "customers").with_fields(["customers.pan"]),
            f(false, false, false, true),
        ),
        (
            ev(Action::UPDATE, "customers").with_fields(["customers.name"]),
            f(false, false, false, false),
        ),
        // Writing PII is not "PII access" (a read or export).
        (
            ev(Action::CREATE, "customers").with_fields(["customers.pan"]),
            f(false, false, false, false),
        ),
    ];
    for (i, (event, want)) in table.into_iter().enumerate() {
        assert_eq!(flags(event), want, "row {i}");
    }
    let custom = ComplianceRules::default()
        .pii_field("x.y")
        .export_action("download");
    let e = AuditEvent::user(t, "u", "download", "x")
        .with_fields(["x.y"])
        .classify(&custom);
    assert!(e.flags.pii);
    assert_eq!(ComplianceFlags::from_names(e.flags.names()), e.flags);
}

fn build_chain(key: &ChainKey, t: TenantId, n: u64) -> Vec<ChainedEvent> {
    let mut prev = GENESIS;
    (1..=n)
        .map(|seq| {
            let e = AuditEvent::user(t, "u1", Action::READ, "customers")
                .with_resource_id(seq)
                .with_details(serde_json::json!({"b": [1, 2.5, {"z": null, "a": "x"}], "a": true}))
                .classify(&rules());
            let hash = key.link(&prev, seq, &e);
            let row = ChainedEvent::new(seq, e, prev, hash);
            prev = hash;
            row
        })
        .collect()
}

#[test]
fn an_intact_chain_verifies_and_every_kind_of_change_is_found() {
    let t = TenantId::new_v4();
    let key = ChainKey::derive(&[3u8; 32], t);
    let rows = build_chain(&key, t, 6);
    let ok = chain::verify(&key, t, rows.clone());
    assert!(ok.is_intact(), "{ok:?}");
    assert_eq!(ok.rows, 6);
    assert_eq!(ok.head, Some((6, rows[5].hash)));

    // Modified content.
    let mut m = rows.clone();
    m[2].event.action = Action::DELETE.into();
    assert_eq!(
        chain::verify(&key, t, m).breaks,
        vec![ChainBreak::Modified { seq: 3 }]
    );

    // Deleted row.
    let mut d = rows.clone();
    d.remove(3);
    let breaks = chain::verify(&key, t, d).breaks;
    assert!(
        breaks.contains(&ChainBreak::Missing { after: 3, next: 5 }),
        "{breaks:?}"
    );
    assert!(
        breaks.contains(&ChainBreak::Relinked { seq: 5 }),
        "{breaks:?}"
    );

    // Reordered (two rows swap their positions).
    let mut r = rows.clone();
    let (a, b) = (r[1].event.clone(), r[2].event.clone());
    r[1].event = b;
    r[2].event = a;
    let breaks = chain::verify(&key, t, r).breaks;
    assert!(
        breaks.contains(&ChainBreak::Modified { seq: 2 })
            && breaks.contains(&ChainBreak::Modified { seq: 3 })
    );

    // Inserted with a hash computed by someone without the key.
    let mut i = rows.clone();
    let forger = ChainKey::derive(&[4u8; 32], t);
    let fake = AuditEvent::user(t, "intruder", Action::READ, "customers");
    let hash = forger.link(&rows[5].hash, 7, &fake);
    i.push(ChainedEvent::new(7, fake, rows[5].hash, hash));
    assert_eq!(
        chain::verify(&key, t, i).breaks,
        vec![ChainBreak::Modified { seq: 7 }]
    );

    // Another tenant's row, or checked under another tenant's key.
    let other = TenantId::new_v4();
    assert!(!chain::verify(&ChainKey::derive(&[3u8; 32], other), other, rows.clone()).is_intact());

    // The documented limit: dropping the newest rows leaves a valid, shorter
    // chain — only the anchored head shows it.
    let truncated = chain::verify(&key, t, rows[..4].to_vec());
    assert!(truncated.is_intact());
    assert_ne!(truncated.head, ok.head);
}

#[test]
fn the_canonical_form_ignores_key_order_and_survives_json() {
    let t = TenantId::new_v4();
    let a = AuditEvent::user(t, "u", Action::READ, "r")
        .with_details(serde_json::json!({"b": 1, "a": {"y": 2, "x": 3}}));
    let mut b = a.clone();
    b.details = serde_json::from_str(r#"{"a": {"x": 3, "y": 2}, "b": 1}"#).unwrap();
    assert_eq!(chain::canonical(&a), chain::canonical(&b));
    let back: AuditEvent = serde_json::from_str(&serde_json::to_string(&a).unwrap()).unwrap();
    assert_eq!(chain::canonical(&a), chain::canonical(&back));
    assert!(chain::canonical(&a).contains(r#""details":{"a":{"x":3,"y":2},"b":1}"#));
}

/// A sink that takes its time, or fails the first `fail_first` calls.
#[derive(Default)]
struct Slow {
    inner: MemorySink,
    delay_ms: u64,
    fail_first: usize,
    calls: AtomicUsize,
}

#[async_trait]
impl AuditSink for Slow {
    async fn record(&self, e: AuditEvent) -> Result<(), AuditError> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(self.delay_ms)).await;
        if n < self.fail_first {
            return Err(AuditError::Sink("down".into()));
        }
        self.inner.record(e).await
    }
}

fn event(i: u64) -> AuditEvent {
    AuditEvent::system(TenantId::new_v4(), "test", Action::READ, "things").with_resource_id(i)
}

#[tokio::test]
async fn a_full_queue_applies_backpressure_and_loses_nothing() {
    let sink = Arc::new(Slow {
        delay_ms: 2,
        ..Default::default()
    });
    let queue = AuditQueue::spawn(sink.clone(), 2);
    for i in 0..50 {
        queue.record(event(i)).await.unwrap();
    }
    let stats = queue.shutdown().await;
    assert_eq!(
        (stats.enqueued, stats.recorded, stats.dropped, stats.failed),
        (50, 50, 0, 0)
    );
    let ids: Vec<_> = sink
        .inner
        .events()
        .into_iter()
        .map(|e| e.resource_id.unwrap())
        .collect();
    assert_eq!(
        ids,
        (0..50).map(|i| i.to_string()).collect::<Vec<_>>(),
        "all, in order"
    );
}

#[tokio::test]
async fn try_record_refuses_when_full_and_counts_the_drop() {
    let sink = Arc::new(Slow {
        delay_ms: 200,
        ..Default::default()
    });
    let queue = AuditQueue::spawn(sink.clone(), 1);
    let mut refused = 0;
    for i in 0..5 {
        if let Err(e) = queue.try_record(event(i)) {
            assert_eq!(e, AuditError::QueueFull);
            refused += 1;
        }
    }
    assert!(
        refused >= 2,
        "a 1-slot queue behind a 200 ms sink refuses: {refused}"
    );
    let stats = queue.shutdown().await;
    assert_eq!(stats.dropped, refused);
    assert_eq!(stats.recorded + stats.dropped, 5);
}

#[tokio::test]
async fn sink_failures_are_retried_then_counted() {
    let flaky = Arc::new(Slow {
        fail_first: 2,
        ..Default::default()
    });
    let queue = AuditQueue::spawn(flaky.clone(), 8);
    queue.record(event(1)).await.unwrap();
    let stats = queue.shutdown().await;
    assert_eq!((stats.recorded, stats.failed), (1, 0), "recovered on retry");

    let down = Arc::new(Slow {
        fail_first: usize::MAX,
        ..Default::default()
    });
    let queue = AuditQueue::spawn(down.clone(), 8);
    queue.record(event(2)).await.unwrap();
    let stats = queue.shutdown().await;
    assert_eq!((stats.recorded, stats.failed), (0, 1));
    assert_eq!(down.calls.load(Ordering::SeqCst), 5, "five attempts");

    let bad = AuditEvent::system(TenantId::new_v4(), "", Action::READ, "x");
    assert!(matches!(
        MemorySink::default().record(bad).await,
        Err(AuditError::Invalid(_))
    ));
}

#[test]
fn malformed_anchors_are_refused_not_panicked_on() {
    use tenancy_core::audit::chain::Anchor;
    let hex = "0f".repeat(32);
    assert!(format!("7:{hex}").parse::<Anchor>().is_ok());
    for bad in [
        String::new(),
        "7".into(),
        format!("0:{hex}"),
        format!("-1:{hex}"),
        format!("99999999999999999999999:{hex}"),
        format!("7:{}", &hex[1..]),
        format!("7:{hex}00"),
        format!("7:{}", "zz".repeat(32)),
        format!("7:{}é", "0".repeat(62)),
        format!("7:{}", "é".repeat(32)),
        format!("7:{}", "+a".repeat(32)),
    ] {
        assert!(bad.parse::<Anchor>().is_err(), "{bad:?}");
    }
}
