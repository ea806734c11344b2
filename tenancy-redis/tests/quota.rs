//! Redis quotas: exact stock under concurrency (tasks and processes), rate
//! windows on a controlled clock with the same arithmetic as the other backends.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use tenancy_core::plan::{Overrides, PlanCatalog};
use tenancy_core::quota::{ManualClock, QuotaError};
use tenancy_core::{Tenant, TenantContext, TenantId};
use tenancy_redis::RedisQuota;

const CATALOG: &str = r#"{"plans": [{"id": "p", "name": "P", "limits": {
    "policies": {"stock": 10},
    "seats": {"stock": 50},
    "api_calls": {"rate": {"per_minute": 60, "per_hour": 100}},
    "storage_bytes": {"stock": 100}
}}]}"#;

fn ctx_for(id: TenantId) -> TenantContext {
    let c = PlanCatalog::from_json(CATALOG).unwrap();
    TenantContext::new(Tenant::new(id, "acme".parse().unwrap(), "Acme")).with_entitlements(
        Arc::new(c.entitlements(&"p".into(), &Overrides::default()).unwrap()),
    )
}

async fn quota() -> RedisQuota {
    RedisQuota::connect(&tenancy_testkit::redis_url().unwrap())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_tasks_race_for_ten_and_exactly_ten_win() {
    let q = quota().await;
    let ctx = ctx_for(TenantId::new_v4());
    let barrier = Arc::new(tokio::sync::Barrier::new(64));
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let (q, ctx, barrier) = (q.clone(), ctx.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            match q.reserve(&ctx, "policies", 1).await {
                Ok(r) => {
                    r.commit();
                    true
                }
                Err(QuotaError::Exceeded(e)) => {
                    assert_eq!((e.limit, e.requested), (10, 1));
                    false
                }
                Err(e) => panic!("{e}"),
            }
        }));
    }
    let mut wins = 0;
    for t in tasks {
        wins += usize::from(t.await.unwrap());
    }
    assert_eq!(wins, 10);
    assert_eq!(q.stock_used(&ctx, "policies").await.unwrap(), 10);
}

#[tokio::test]
async fn dropped_reservations_are_returned_and_tenants_are_separate() {
    let q = quota().await;
    let ctx = ctx_for(TenantId::new_v4());
    q.reserve(&ctx, "policies", 6).await.unwrap().commit();
    {
        let _pending = q.reserve(&ctx, "policies", 4).await.unwrap();
        assert!(q.reserve(&ctx, "policies", 1).await.is_err());
    }
    // The drop returns the stock asynchronously.
    for _ in 0..100 {
        if q.stock_used(&ctx, "policies").await.unwrap() == 6 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(q.stock_used(&ctx, "policies").await.unwrap(), 6);
    q.reserve(&ctx, "policies", 2)
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
    q.release(&ctx, "policies", 10).await.unwrap(); // never below zero
    assert_eq!(q.stock_used(&ctx, "policies").await.unwrap(), 0);
    let other = ctx_for(TenantId::new_v4());
    assert_eq!(q.stock_used(&other, "policies").await.unwrap(), 0);
    let err = q.reserve(&ctx, "storage_bytes", 101).await.unwrap_err();
    assert!(matches!(err, QuotaError::Exceeded(ref e) if e.status() == 413));
    assert!(matches!(
        q.reserve(&ctx, "projects", 1).await,
        Err(QuotaError::Exceeded(ref e)) if e.limit == 0
    ));
}

/// Runs inside a child process started by `two_processes_share_the_limit`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "worker for two_processes_share_the_limit; runs as a child process"]
async fn redis_worker_process() {
    let tenant: TenantId = std::env::var("TENANCY_REDIS_WORKER_TENANT")
        .expect("started by two_processes_share_the_limit")
        .parse()
        .unwrap();
    let wins = race(&quota().await, &ctx_for(tenant), 40).await;
    println!("worker-wins={wins}");
}

async fn race(q: &RedisQuota, ctx: &TenantContext, attempts: usize) -> usize {
    let mut tasks = Vec::new();
    for _ in 0..attempts {
        let (q, ctx) = (q.clone(), ctx.clone());
        tasks.push(tokio::spawn(async move {
            match q.reserve(&ctx, "seats", 1).await {
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
    wins
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_share_the_limit() {
    let q = quota().await;
    let tenant = TenantId::new_v4();
    let child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "redis_worker_process",
            "--ignored",
            "--nocapture",
        ])
        .env("TENANCY_REDIS_WORKER_TENANT", tenant.to_string())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mine = race(&q, &ctx_for(tenant), 40).await;
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "worker failed: {stdout}");
    let theirs: usize = stdout
        .lines()
        .find_map(|l| l.strip_prefix("worker-wins="))
        .expect("worker reported")
        .trim()
        .parse()
        .unwrap();
    // Each process made 40 attempts, so reaching 50 needs both of them.
    assert_eq!(mine + theirs, 50);
    assert_eq!(q.stock_used(&ctx_for(tenant), "seats").await.unwrap(), 50);
}

#[tokio::test]
async fn rate_windows_on_a_controlled_clock() {
    let clock = ManualClock::new(Duration::from_secs(1_700_000_000));
    let a = quota().await.with_clock(Arc::new(clock.clone()));
    let b = quota().await.with_clock(Arc::new(clock.clone())); // a second instance
    let ctx = ctx_for(TenantId::new_v4());
    for i in 0..60 {
        let q = if i % 2 == 0 { &a } else { &b };
        assert_eq!(
            q.check_rate(&ctx, "api_calls", 1)
                .await
                .unwrap()
                .remaining(),
            59 - i
        );
    }
    match a.check_rate(&ctx, "api_calls", 1).await {
        Err(QuotaError::Exceeded(q)) => {
            assert_eq!((q.used, q.limit), (60, 60));
            assert_eq!(q.retry_after, Some(Duration::from_secs(1)));
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    for _ in 0..20 {
        assert!(b.check_rate(&ctx, "api_calls", 1).await.is_err());
    }
    clock.advance(Duration::from_secs(60));
    let mut ok = 0;
    while a.check_rate(&ctx, "api_calls", 1).await.is_ok() {
        ok += 1;
    }
    assert_eq!(
        ok, 41,
        "same GCRA arithmetic as the in-memory and PostgreSQL backends"
    );
}

#[derive(Default)]
struct Recorded(std::sync::Mutex<Vec<(u8, u64)>>);
impl tenancy_core::quota::QuotaEvents for Recorded {
    fn threshold_crossed(&self, e: &tenancy_core::quota::ThresholdCrossed) {
        self.0.lock().unwrap().push((e.percent, e.used));
    }
}

#[tokio::test]
async fn thresholds_fire_once_per_day_across_instances() {
    let events = Arc::new(Recorded::default());
    let a = quota().await.with_events(events.clone(), &[50, 90]);
    let b = quota().await.with_events(events.clone(), &[50, 90]);
    let ctx = ctx_for(TenantId::new_v4());
    let seen = || events.0.lock().unwrap().clone();
    a.reserve(&ctx, "policies", 4).await.unwrap().commit();
    assert!(seen().is_empty());
    b.reserve(&ctx, "policies", 1).await.unwrap().commit();
    assert_eq!(seen(), vec![(50, 5)]);
    a.release(&ctx, "policies", 2).await.unwrap();
    a.reserve(&ctx, "policies", 2).await.unwrap().commit();
    assert_eq!(
        seen(),
        vec![(50, 5)],
        "re-crossing the same day is silent on every instance"
    );
    b.reserve(&ctx, "policies", 4).await.unwrap().commit();
    assert_eq!(seen(), vec![(50, 5), (90, 9)]);
}

#[tokio::test]
async fn the_request_pipeline_can_rate_limit_through_redis() {
    use tenancy_core::pipeline::RequestPipeline;
    use tenancy_core::resolve::{HeaderStrategy, ResolverChain, SimpleRequest};
    use tenancy_core::store::InMemoryTenantStore;
    use tenancy_core::{PlanId, RequestMeta};

    let tenant = Tenant::new(TenantId::new_v4(), "acme".parse().unwrap(), "Acme")
        .with_plan(PlanId::new("p"));
    let store = Arc::new(InMemoryTenantStore::with_tenants([tenant.clone()]).unwrap());
    let pipeline = RequestPipeline::new(
        ResolverChain::new().with(HeaderStrategy::tenant_id()),
        store,
    )
    .with_plans(Arc::new(PlanCatalog::from_json(CATALOG).unwrap()))
    .with_rate_limit(Arc::new(quota().await), "api_calls")
    .rate_headers_on_success(true);
    let req = SimpleRequest::new("/").with_header("x-tenant-id", tenant.id.to_string());
    // 60 a minute: the burst admits about 60, then refusals begin (a slow
    // machine may earn back a token or two meanwhile, never 200).
    let mut admitted = 0;
    let mut refused = None;
    for _ in 0..200 {
        match pipeline.admit(&req, None, RequestMeta::default()).await {
            Ok(_) => admitted += 1,
            Err(r) => {
                refused = Some(r);
                break;
            }
        }
    }
    assert!(admitted >= 60, "{admitted}");
    assert_eq!(
        refused
            .expect("the plan's rate limit bites")
            .problem()
            .status,
        429
    );
}

/// A reservation whose threshold claim cannot be written (a Redis user
/// that may not `SET`, standing in for a failed write) is refused and gives
/// its stock back: the full limit is still available afterwards.
#[tokio::test]
async fn a_failed_threshold_write_gives_the_reserved_stock_back() {
    let url = tenancy_testkit::redis_url().unwrap();
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut admin = client.get_multiplexed_async_connection().await.unwrap();
    let user = format!("no_set_{}", std::process::id());
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg(&user)
        .arg("reset")
        .arg("on")
        .arg(">pw")
        .arg("~*")
        .arg("&*")
        .arg("+@all")
        .arg("-set")
        .query_async(&mut admin)
        .await
        .unwrap();
    let limited_url = url.replacen("redis://", &format!("redis://{user}:pw@"), 1);
    let limited = RedisQuota::connect(&limited_url).await.unwrap();
    let ctx = ctx_for(TenantId::new_v4());
    // 10 of 10 crosses the 80 % and 95 % thresholds: their claims fail.
    let refused = limited.reserve(&ctx, "policies", 10).await.unwrap_err();
    assert!(matches!(refused, QuotaError::Backend(_)), "{refused}");
    // Nothing leaked: an unrestricted client gets all ten.
    let full = quota().await.reserve(&ctx, "policies", 10).await.unwrap();
    full.release().await.unwrap();
    let _: () = redis::cmd("ACL")
        .arg("DELUSER")
        .arg(&user)
        .query_async(&mut admin)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_are_counted_apart_from_each_other_and_the_tenant() {
    let q = quota().await;
    let ctx = ctx_for(TenantId::new_v4());
    tenancy_testkit::rate::subjects_are_counted_apart(&q, &ctx, "api_calls", 60).await;
}
