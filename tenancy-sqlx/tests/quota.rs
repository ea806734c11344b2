//! PostgreSQL quotas: exact stock under concurrency (tasks and processes),
//! in the same transaction as the write; shared rate windows.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use tenancy_core::plan::{Overrides, PlanCatalog};
use tenancy_core::quota::{ManualClock, QuotaError};
use tenancy_core::{Tenant, TenantContext, TenantId};
use tenancy_sqlx::{PgRateLimiter, TenantDb, migrate};
use tenancy_testkit::TestDb;
use tokio::sync::OnceCell;

static MIGRATED: OnceCell<()> = OnceCell::const_new();

const CATALOG: &str = r#"{"plans": [{"id": "p", "name": "P", "limits": {
    "policies": {"stock": 10},
    "seats": {"stock": 50},
    "api_calls": {"rate": {"per_minute": 60, "per_hour": 100}}
}}]}"#;

async fn db(max: u32) -> (TestDb, TenantDb) {
    let env = TestDb::from_env().unwrap();
    MIGRATED
        .get_or_init(|| async {
            let owner = env.owner_pool(1).await.unwrap();
            let mut conn = owner.acquire().await.unwrap();
            migrate::run(&mut conn).await.unwrap();
            migrate::grant_system_read(&mut conn, "tenancy_app")
                .await
                .unwrap();
        })
        .await;
    let pool = TenantDb::pool_options()
        .max_connections(max)
        .connect(&env.app_url)
        .await
        .unwrap();
    let seal = env.seal_key().await.unwrap();
    (env, TenantDb::new(pool, seal))
}

fn ctx_for(id: TenantId) -> TenantContext {
    let c = PlanCatalog::from_json(CATALOG).unwrap();
    TenantContext::new(Tenant::new(id, "acme".parse().unwrap(), "Acme")).with_entitlements(
        Arc::new(c.entitlements(&"p".into(), &Overrides::default()).unwrap()),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_tasks_race_for_ten_and_exactly_ten_commit() {
    let (_env, db) = db(16).await;
    let ctx = ctx_for(TenantId::new_v4());
    let barrier = Arc::new(tokio::sync::Barrier::new(64));
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let (db, ctx, barrier) = (db.clone(), ctx.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let mut tx = db.begin(&ctx).await.unwrap();
            match tx.consume_stock("policies", 1).await {
                Ok(_) => {
                    tx.commit().await.unwrap();
                    true
                }
                Err(QuotaError::Exceeded(q)) => {
                    assert_eq!((q.limit, q.requested), (10, 1));
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
    let mut tx = db.begin(&ctx).await.unwrap();
    assert_eq!(tx.stock_used("policies").await.unwrap(), 10);
}

#[tokio::test]
async fn quota_follows_the_transaction() {
    let (_env, db) = db(2).await;
    let ctx = ctx_for(TenantId::new_v4());
    // Rolled back: the consumption goes with it.
    let mut tx = db.begin(&ctx).await.unwrap();
    assert_eq!(tx.consume_stock("policies", 4).await.unwrap(), 4);
    tx.rollback().await.unwrap();
    // Dropped without commit: likewise.
    {
        let mut tx = db.begin(&ctx).await.unwrap();
        tx.consume_stock("policies", 4).await.unwrap();
    }
    let mut tx = db.begin(&ctx).await.unwrap();
    assert_eq!(tx.stock_used("policies").await.unwrap(), 0);
    assert_eq!(tx.consume_stock("policies", 10).await.unwrap(), 10);
    let refused = tx.consume_stock("policies", 1).await;
    assert!(matches!(refused, Err(QuotaError::Exceeded(ref q)) if q.used == 10));
    tx.release_stock("policies", 3).await.unwrap();
    assert_eq!(tx.consume_stock("policies", 3).await.unwrap(), 10);
    let usage = tx.usage().await.unwrap();
    assert_eq!(
        (usage["policies"].used, usage["policies"].limit),
        (10, Some(10))
    );
    assert_eq!((usage["seats"].used, usage["seats"].limit), (0, Some(50)));
    assert_eq!(
        usage["api_calls"].limit,
        Some(60),
        "the most loaded (here: first) window"
    );
    tx.commit().await.unwrap();
    // Another tenant's counter is separate and invisible.
    let other = ctx_for(TenantId::new_v4());
    let mut tx = db.begin(&other).await.unwrap();
    assert_eq!(tx.stock_used("policies").await.unwrap(), 0);
}

#[tokio::test]
async fn over_limit_after_a_downgrade_blocks_new_consumption() {
    let (env, db) = db(2).await;
    let ctx = ctx_for(TenantId::new_v4());
    let mut tx = db.begin(&ctx).await.unwrap();
    tx.set_stock_used("policies", 25).await.unwrap(); // the old plan allowed more
    let refused = tx.consume_stock("policies", 1).await;
    assert!(matches!(refused, Err(QuotaError::Exceeded(ref q)) if q.used == 25 && q.limit == 10));
    tx.release_stock("policies", 16).await.unwrap();
    tx.consume_stock("policies", 1).await.unwrap();
    tx.commit().await.unwrap();
    // Without a tenant, the quota tables show nothing (row-level security).
    let app = env.app_pool(1).await.unwrap();
    let visible: i64 = sqlx::query_scalar("SELECT count(*) FROM tenancy.quota_usage")
        .fetch_one(&app)
        .await
        .unwrap();
    assert_eq!(visible, 0);
}

/// Runs inside a child process started by `two_processes_share_the_limit`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "worker for two_processes_share_the_limit; runs as a child process"]
async fn quota_worker_process() {
    let tenant: TenantId = std::env::var("TENANCY_QUOTA_WORKER_TENANT")
        .expect("started by two_processes_share_the_limit")
        .parse()
        .unwrap();
    let (_env, db) = db(8).await;
    let ctx = ctx_for(tenant);
    let wins = race(&db, &ctx, 40).await;
    println!("worker-wins={wins}");
}

async fn race(db: &TenantDb, ctx: &TenantContext, attempts: usize) -> usize {
    let mut tasks = Vec::new();
    for _ in 0..attempts {
        let (db, ctx) = (db.clone(), ctx.clone());
        tasks.push(tokio::spawn(async move {
            let mut tx = db.begin(&ctx).await.unwrap();
            let ok = tx.consume_stock("seats", 1).await.is_ok();
            tokio::time::sleep(Duration::from_millis(2)).await; // hold the row lock a little
            tx.commit().await.unwrap();
            ok
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
    let (_env, db) = db(8).await;
    let tenant = TenantId::new_v4();
    let ctx = ctx_for(tenant);
    let child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "quota_worker_process",
            "--ignored",
            "--nocapture",
        ])
        .env("TENANCY_QUOTA_WORKER_TENANT", tenant.to_string())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mine = race(&db, &ctx, 40).await;
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
    assert_eq!(
        mine + theirs,
        50,
        "80 attempts from two processes, limit 50"
    );
    let mut tx = db.begin(&ctx).await.unwrap();
    assert_eq!(tx.stock_used("seats").await.unwrap(), 50);
}

#[tokio::test]
async fn shared_rate_windows_on_a_controlled_clock() {
    let (_env, db) = db(4).await;
    let clock = ManualClock::new(Duration::from_secs(1_700_000_000));
    let limiter = PgRateLimiter::new(db.clone()).with_clock(Arc::new(clock.clone()));
    // A second "instance" sharing the same table.
    let other = PgRateLimiter::new(db.clone()).with_clock(Arc::new(clock.clone()));
    let ctx = ctx_for(TenantId::new_v4());
    for i in 0..60 {
        let l = if i % 2 == 0 { &limiter } else { &other };
        let d = l.check(&ctx, "api_calls", 1).await.unwrap();
        assert_eq!(d.remaining(), 59 - i, "call {i}");
    }
    let refused = limiter.check(&ctx, "api_calls", 1).await;
    match refused {
        Err(QuotaError::Exceeded(q)) => {
            assert_eq!((q.used, q.limit), (60, 60));
            assert_eq!(q.retry_after, Some(Duration::from_secs(1)));
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // Refusals by the minute window charge nothing to the hour window.
    for _ in 0..20 {
        assert!(other.check(&ctx, "api_calls", 1).await.is_err());
    }
    clock.advance(Duration::from_secs(60));
    let mut ok = 0;
    while limiter.check(&ctx, "api_calls", 1).await.is_ok() {
        ok += 1;
    }
    assert_eq!(ok, 41, "same GCRA arithmetic as the in-memory backend");
    let mut tx = db.begin(&ctx).await.unwrap();
    let records = tx
        .usage_records(chrono::DateTime::UNIX_EPOCH)
        .await
        .unwrap();
    assert_eq!(records.values().sum::<u64>(), 101);
}

#[derive(Default)]
struct Recorded(std::sync::Mutex<Vec<(u8, u64)>>);
impl tenancy_core::quota::QuotaEvents for Recorded {
    fn threshold_crossed(&self, e: &tenancy_core::quota::ThresholdCrossed) {
        self.0.lock().unwrap().push((e.percent, e.used));
    }
}

#[tokio::test]
async fn thresholds_fire_once_across_instances_and_only_after_commit() {
    let (_env, plain) = db(4).await;
    let events = Arc::new(Recorded::default());
    // Two "instances" sharing the database and the event sink.
    let a = plain.clone().with_quota_events(events.clone(), &[50, 90]);
    let b = plain.with_quota_events(events.clone(), &[50, 90]);
    let ctx = ctx_for(TenantId::new_v4());
    let seen = || events.0.lock().unwrap().clone();

    let mut tx = a.begin(&ctx).await.unwrap();
    tx.consume_stock("policies", 4).await.unwrap();
    tx.commit().await.unwrap();
    assert!(seen().is_empty(), "40 % crosses nothing");

    // Crossing 50 % in a transaction that rolls back announces nothing...
    let mut tx = a.begin(&ctx).await.unwrap();
    tx.consume_stock("policies", 1).await.unwrap();
    assert!(seen().is_empty(), "nothing is announced before commit");
    tx.rollback().await.unwrap();
    assert!(seen().is_empty());

    // ...and the next crossing, on the other instance, does.
    let mut tx = b.begin(&ctx).await.unwrap();
    tx.consume_stock("policies", 1).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(seen(), vec![(50, 5)]);

    // Dipping and re-crossing in the same day is silent, on either instance.
    let mut tx = a.begin(&ctx).await.unwrap();
    tx.release_stock("policies", 2).await.unwrap();
    tx.consume_stock("policies", 2).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(seen(), vec![(50, 5)]);

    let mut tx = a.begin(&ctx).await.unwrap();
    tx.consume_stock("policies", 4).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(seen(), vec![(50, 5), (90, 9)]);
}

#[tokio::test]
async fn the_request_pipeline_can_rate_limit_through_postgres() {
    use tenancy_core::pipeline::{RateCheck, RequestPipeline};
    use tenancy_core::resolve::{HeaderStrategy, ResolverChain, SimpleRequest};
    use tenancy_core::store::InMemoryTenantStore;
    use tenancy_core::{PlanId, RequestMeta, Tenant};

    let (_env, db) = db(2).await;
    let tenant = Tenant::new(TenantId::new_v4(), "acme".parse().unwrap(), "Acme")
        .with_plan(PlanId::new("p"));
    let store = Arc::new(InMemoryTenantStore::with_tenants([tenant.clone()]).unwrap());
    let limiter: Arc<dyn RateCheck> = Arc::new(PgRateLimiter::new(db));
    let pipeline = RequestPipeline::new(
        ResolverChain::new().with(HeaderStrategy::tenant_id()),
        store,
    )
    .with_plans(Arc::new(
        tenancy_core::plan::PlanCatalog::from_json(CATALOG).unwrap(),
    ))
    .with_rate_limit(limiter, "api_calls")
    .rate_headers_on_success(true);
    let req = SimpleRequest::new("/").with_header("x-tenant-id", tenant.id.to_string());
    let first = pipeline
        .admit(&req, None, RequestMeta::default())
        .await
        .unwrap();
    assert!(
        first
            .headers()
            .iter()
            .any(|(h, _)| *h == "ratelimit-remaining")
    );
    let mut refused = None;
    for _ in 0..200 {
        if let Err(r) = pipeline.admit(&req, None, RequestMeta::default()).await {
            refused = Some(r);
            break;
        }
    }
    assert_eq!(
        refused
            .expect("the plan's rate limit bites")
            .problem()
            .status,
        429
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_are_counted_apart_from_each_other_and_the_tenant() {
    let (_env, db) = db(2).await;
    let limiter = tenancy_sqlx::PgRateLimiter::new(db);
    let ctx = ctx_for(TenantId::new_v4());
    tenancy_testkit::rate::subjects_are_counted_apart(&limiter, &ctx, "api_calls", 60).await;
}
