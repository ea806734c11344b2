//! The in-memory quota engine: exactness under concurrency, rate windows on a
//! controlled clock, concurrency permits, thresholds, usage and records.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tenancy_core::plan::{Overrides, PlanCatalog, ResourceKind};
use tenancy_core::quota::{ManualClock, MemoryQuota, QuotaError, QuotaEvents, ThresholdCrossed};
use tenancy_core::{Tenant, TenantContext, TenantError, TenantId};

const CATALOG: &str = r#"{"plans": [{"id": "p", "name": "P", "limits": {
    "users": {"stock": 10},
    "storage_bytes": {"stock": 1000},
    "api_calls": {"rate": {"per_minute": 60, "per_hour": 100}},
    "burst": {"rate": {"per_second": 5}},
    "sessions": {"concurrency": 3},
    "exports": "unlimited"
}}]}"#;

fn ctx() -> TenantContext {
    let c = PlanCatalog::from_json(CATALOG).unwrap();
    TenantContext::new(Tenant::new(
        TenantId::new_v4(),
        "acme".parse().unwrap(),
        "Acme",
    ))
    .with_entitlements(Arc::new(
        c.entitlements(&"p".into(), &Overrides::default()).unwrap(),
    ))
}

fn exceeded(r: Result<impl std::fmt::Debug, QuotaError>) -> tenancy_core::quota::QuotaExceeded {
    match r {
        Err(QuotaError::Exceeded(q)) => q,
        other => panic!("expected QuotaExceeded, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_tasks_race_for_ten_slots_and_exactly_ten_win() {
    for round in 0..20 {
        let quota = Arc::new(MemoryQuota::new());
        let ctx = ctx();
        let barrier = Arc::new(tokio::sync::Barrier::new(64));
        let mut tasks = Vec::new();
        for _ in 0..64 {
            let (quota, ctx, barrier) = (quota.clone(), ctx.clone(), barrier.clone());
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                match quota.reserve(&ctx, "users", 1) {
                    Ok(r) => {
                        r.commit();
                        true
                    }
                    Err(_) => false,
                }
            }));
        }
        let mut wins = 0;
        for t in tasks {
            wins += usize::from(t.await.unwrap());
        }
        assert_eq!(wins, 10, "round {round}");
        assert_eq!(quota.usage(&ctx).unwrap()["users"].used, 10);
    }
}

#[test]
fn os_threads_race_too() {
    let quota = Arc::new(MemoryQuota::new());
    let ctx = ctx();
    let wins: usize = std::thread::scope(|s| {
        let handles: Vec<_> = (0..64)
            .map(|_| {
                let (quota, ctx) = (quota.clone(), ctx.clone());
                s.spawn(move || {
                    quota
                        .reserve(&ctx, "users", 1)
                        .map(tenancy_core::quota::Reservation::commit)
                        .is_ok()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| usize::from(h.join().unwrap()))
            .sum()
    });
    assert_eq!(wins, 10);
}

#[test]
fn uncommitted_reservations_are_returned_and_releases_free_stock() {
    let quota = MemoryQuota::new();
    let ctx = ctx();
    {
        let _held = quota.reserve(&ctx, "users", 10).unwrap();
        let q = exceeded(quota.reserve(&ctx, "users", 1));
        assert_eq!(
            (q.used, q.limit, q.requested, q.retry_after),
            (10, 10, 1, None)
        );
        assert_eq!(q.kind, ResourceKind::Stock);
    } // dropped without commit
    quota.reserve(&ctx, "users", 7).unwrap().commit();
    assert_eq!(quota.usage(&ctx).unwrap()["users"].used, 7);
    quota.release(&ctx, "users", 5);
    quota.reserve(&ctx, "users", 8).unwrap().commit();
    assert!(quota.reserve(&ctx, "users", 1).is_err());
}

#[test]
fn rate_windows_allow_exactly_their_limits_with_correct_retry_after() {
    let clock = ManualClock::new(Duration::from_secs(1_000_000));
    let quota = MemoryQuota::new().with_clock(Arc::new(clock.clone()));
    let ctx = ctx();
    // per_minute 60: a burst of 60, then one per second.
    for i in 0..60 {
        let d = quota.check_rate(&ctx, "api_calls", 1).unwrap();
        assert_eq!(d.remaining(), 59 - i, "call {i}");
        assert_eq!(d.limit(), 60);
    }
    let q = exceeded(quota.check_rate(&ctx, "api_calls", 1));
    assert_eq!((q.used, q.limit, q.requested), (60, 60, 1));
    assert_eq!(q.retry_after, Some(Duration::from_secs(1)));
    assert_eq!(q.kind, ResourceKind::Rate);
    clock.advance(Duration::from_millis(999));
    assert!(quota.check_rate(&ctx, "api_calls", 1).is_err());
    clock.advance(Duration::from_millis(1));
    quota.check_rate(&ctx, "api_calls", 1).unwrap();

    // The hourly window (100) binds next: 61 used; run the minute window
    // dry repeatedly until the hour refuses.
    let mut allowed = 61;
    for _ in 0..200 {
        clock.advance(Duration::from_secs(1));
        match quota.check_rate(&ctx, "api_calls", 1) {
            Ok(_) => allowed += 1,
            Err(QuotaError::Exceeded(q)) => {
                assert_eq!(q.limit, 100, "the hourly window refuses");
                // Hour window: one call per 36 s once the burst is spent.
                let retry = q.retry_after.unwrap();
                assert!(
                    retry <= Duration::from_secs(36) && retry > Duration::ZERO,
                    "{retry:?}"
                );
                break;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(
        allowed,
        100 + 1,
        "100 in the hour plus the one emission interval that elapsed"
    );
}

#[test]
fn a_refusal_by_one_window_consumes_nothing_from_the_others() {
    let clock = ManualClock::new(Duration::from_secs(5_000));
    let quota = MemoryQuota::new().with_clock(Arc::new(clock.clone()));
    let ctx = ctx();
    for _ in 0..60 {
        quota.check_rate(&ctx, "api_calls", 1).unwrap();
    }
    // Refused by the minute window: the hour window must not have moved.
    for _ in 0..50 {
        assert!(quota.check_rate(&ctx, "api_calls", 1).is_err());
    }
    let usage = quota.usage(&ctx).unwrap();
    assert_eq!(usage["api_calls"].used, 60);
    clock.advance(Duration::from_secs(60));
    // A minute later the minute window is empty again. The hour window holds
    // 60 calls' worth (2160 s of its 3600 s) less the 60 s drained: 2100 s, so
    // floor((3600 - 2100) / 36) = 41 more fit. Had the 50 refused calls
    // been charged to the hour, none would.
    let mut ok = 0;
    while quota.check_rate(&ctx, "api_calls", 1).is_ok() {
        ok += 1;
    }
    assert_eq!(ok, 41);
}

#[test]
fn cost_above_a_window_can_never_succeed() {
    let quota = MemoryQuota::new();
    let ctx = ctx();
    let q = exceeded(quota.check_rate(&ctx, "burst", 6));
    assert_eq!((q.requested, q.limit, q.retry_after), (6, 5, None));
    quota.check_rate(&ctx, "burst", 5).unwrap();
}

#[test]
fn concurrency_permits_are_released_on_drop() {
    let quota = MemoryQuota::new();
    let ctx = ctx();
    let a = quota.acquire(&ctx, "sessions").unwrap();
    let _b = quota.acquire(&ctx, "sessions").unwrap();
    let _c = quota.acquire(&ctx, "sessions").unwrap();
    let q = exceeded(quota.acquire(&ctx, "sessions"));
    assert_eq!((q.used, q.limit, q.kind), (3, 3, ResourceKind::Concurrency));
    assert_eq!(TenantError::from(q).status(), 429);
    drop(a);
    let _d = quota.acquire(&ctx, "sessions").unwrap();
}

#[test]
fn unmetered_wrong_kind_and_missing_entitlements() {
    let quota = MemoryQuota::new();
    let ctx = ctx();
    // Not in the plan: refused, never unlimited.
    let q = exceeded(quota.reserve(&ctx, "projects", 1));
    assert_eq!(q.limit, 0);
    assert!(quota.check_rate(&ctx, "webhooks", 1).is_err());
    // Explicitly unlimited: allowed.
    for _ in 0..1000 {
        quota.reserve(&ctx, "exports", 1_000_000).unwrap().commit();
    }
    assert!(matches!(
        quota.reserve(&ctx, "api_calls", 1),
        Err(QuotaError::WrongKind { .. })
    ));
    let bare = TenantContext::new(ctx.tenant().clone());
    assert!(matches!(
        quota.reserve(&bare, "users", 1),
        Err(QuotaError::NoEntitlements)
    ));
}

#[test]
fn http_statuses_by_kind() {
    let quota = MemoryQuota::new();
    let ctx = ctx();
    let storage = exceeded(quota.reserve(&ctx, "storage_bytes", 1001));
    assert_eq!(storage.status(), 413);
    let users = exceeded(quota.reserve(&ctx, "users", 11));
    assert_eq!(users.status(), 403);
    let err = TenantError::from(exceeded(quota.check_rate(&ctx, "burst", 6)));
    assert_eq!((err.status(), err.code()), (429, "rate-limited"));
}

#[derive(Default)]
struct Recorded(Mutex<Vec<ThresholdCrossed>>);
impl QuotaEvents for Recorded {
    fn threshold_crossed(&self, e: &ThresholdCrossed) {
        self.0.lock().unwrap().push(e.clone());
    }
}

#[test]
fn thresholds_fire_once_per_crossing_per_period() {
    let clock = ManualClock::new(Duration::from_secs(86_400 * 100));
    let events = Arc::new(Recorded::default());
    let quota = MemoryQuota::new()
        .with_clock(Arc::new(clock.clone()))
        .with_events(events.clone())
        .with_thresholds(&[80, 95]);
    let ctx = ctx();
    let percents = || {
        events
            .0
            .lock()
            .unwrap()
            .iter()
            .map(|e| e.percent)
            .collect::<Vec<_>>()
    };
    for _ in 0..7 {
        quota.reserve(&ctx, "users", 1).unwrap().commit();
    }
    assert!(percents().is_empty(), "70% crosses nothing");
    quota.reserve(&ctx, "users", 1).unwrap().commit(); // 80%
    assert_eq!(percents(), vec![80]);
    quota.release(&ctx, "users", 2);
    quota.reserve(&ctx, "users", 2).unwrap().commit(); // back to 80%: same period
    assert_eq!(
        percents(),
        vec![80],
        "a repeated crossing in the same period is silent"
    );
    quota.reserve(&ctx, "users", 2).unwrap().commit(); // 100% crosses 95
    assert_eq!(percents(), vec![80, 95]);
    let e = events.0.lock().unwrap()[1].clone();
    assert_eq!((e.used, e.limit, e.tenant), (10, 10, ctx.tenant_id()));

    clock.advance(Duration::from_secs(86_400)); // next period
    quota.release(&ctx, "users", 3);
    quota.reserve(&ctx, "users", 1).unwrap().commit(); // 80% again, new period
    assert_eq!(percents(), vec![80, 95, 80]);
}

#[test]
fn usage_snapshot_and_records_per_period() {
    let clock = ManualClock::new(Duration::from_secs(86_400 * 200));
    let quota = MemoryQuota::new().with_clock(Arc::new(clock.clone()));
    let ctx = ctx();
    quota.reserve(&ctx, "users", 4).unwrap().commit();
    for _ in 0..30 {
        quota.check_rate(&ctx, "api_calls", 1).unwrap();
    }
    let _s = quota.acquire(&ctx, "sessions").unwrap();
    let usage = quota.usage(&ctx).unwrap();
    assert_eq!((usage["users"].used, usage["users"].limit), (4, Some(10)));
    // The most loaded window is reported: 30 of 60 per minute (50 %), not 30 of 100 per hour.
    assert_eq!(
        (usage["api_calls"].used, usage["api_calls"].limit),
        (30, Some(60))
    );
    assert_eq!(usage["sessions"].used, 1);
    assert_eq!(usage["exports"].limit, None);

    clock.advance(Duration::from_secs(86_400));
    for _ in 0..5 {
        quota.check_rate(&ctx, "api_calls", 1).unwrap();
    }
    let records = quota.usage_records(chrono::DateTime::UNIX_EPOCH);
    let calls: Vec<u64> = records
        .iter()
        .filter(|r| &*r.resource == "api_calls")
        .map(|r| r.amount)
        .collect();
    assert_eq!(calls, vec![30, 5], "one record per day");
    let users: Vec<u64> = records
        .iter()
        .filter(|r| &*r.resource == "users")
        .map(|r| r.amount)
        .collect();
    assert_eq!(users, vec![4]);
}

#[cfg(feature = "calendar")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn monthly_usage_in_memory_and_its_unchecked_twin() {
    use tenancy_core::quota::monthly::MemoryMonthly;
    use tenancy_testkit::monthly::{UncheckedMonthly, calendar_months};
    let t = Tenant::new(TenantId::new_v4(), "monthly".parse().unwrap(), "M");
    let report = calendar_months(Arc::new(MemoryMonthly::default()), &t)
        .await
        .unwrap();
    assert_eq!((report.accepted, report.refused), (60, 4));
    let err = calendar_months(
        Arc::new(UncheckedMonthly(Arc::new(MemoryMonthly::default()))),
        &t,
    )
    .await
    .unwrap_err();
    assert!(err.starts_with("2."), "{err}");
}
