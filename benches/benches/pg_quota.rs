//! PostgreSQL stock quota throughput with 16 concurrent clients, against a
//! baseline in the same run.
//!
//! Run: `scripts/bench --bench pg_quota` (starts the throwaway PostgreSQL).
//!
//! Every operation is one tenant transaction: `TenantDb::begin`, the
//! business write (an insert), optionally `consume_stock(1)`, commit.
//!
//! - `pg_stock/insert_only` (**baseline**): the insert without quota.
//! - `pg_stock/insert_and_consume_16_tenants`: plus the quota, one tenant per client.
//! - `pg_stock/insert_and_consume_1_tenant`: plus the quota, all clients on
//!   one tenant's counter (its row lock serialises them: the worst case).
//!
//! `pg_stock` uses the default pool (`PoolHygiene::Verify`: one check query
//! per released connection); `pg_stock_hygiene_off` repeats the three with
//! the check off, to show what it costs under load.
//!
//! After the measurements an exactness run (not timed) lets 16 clients make
//! 3 200 attempts against a limit of 2 000 and prints
//! `pg-stock: attempts=.. granted=.. used=.. overshoot=..`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs,
    clippy::print_stdout
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tenancy_core::plan::{Overrides, PlanCatalog};
use tenancy_core::{Tenant, TenantContext, TenantId};
use tenancy_sqlx::rls::{ApplyTenantTable, TenantTable};
use tenancy_sqlx::{PoolHygiene, TenantDb, migrate};
use tenancy_testkit::TestDb;
use uuid::Uuid;

const CLIENTS: usize = 16;

fn ctx(limit: u64) -> TenantContext {
    let catalog = PlanCatalog::from_json(&format!(
        r#"{{"plans": [{{"id": "p", "name": "P", "limits": {{"orders": {{"stock": {limit}}}}}}}]}}"#
    ))
    .unwrap();
    TenantContext::new(Tenant::new(
        TenantId::new_v4(),
        "bench".parse().unwrap(),
        "B",
    ))
    .with_entitlements(Arc::new(
        catalog
            .entitlements(&"p".into(), &Overrides::default())
            .unwrap(),
    ))
}

async fn op(db: &TenantDb, ctx: &TenantContext, table: &str, quota: bool) -> bool {
    let mut tx = db.begin(ctx).await.unwrap();
    if quota && tx.consume_stock("orders", 1).await.is_err() {
        return false;
    }
    sqlx::query(&format!(
        "INSERT INTO {table} (tenant_id, id) VALUES ($1, $2)"
    ))
    .bind(ctx.tenant_id().as_uuid())
    .bind(Uuid::new_v4())
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    true
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (dbs, table) = rt.block_on(async {
        let env = TestDb::from_env().expect("run with scripts/bench");
        let owner = env.owner_pool(1).await.unwrap();
        let mut conn = owner.acquire().await.unwrap();
        migrate::run(&mut conn).await.unwrap();
        migrate::grant_system_read(&mut conn, "tenancy_app").await.unwrap();
        let schema = env.fresh_schema("pgq").await.unwrap();
        let table = format!("\"{schema}\".orders");
        sqlx::query(&format!(
            "CREATE TABLE {table} (tenant_id uuid NOT NULL, id uuid NOT NULL, PRIMARY KEY (tenant_id, id))"
        ))
        .execute(&mut *conn)
        .await
        .unwrap();
        TenantTable::new("orders")
            .schema(&schema)
            .index_on(["id"])
            .grant_to("tenancy_app")
            .apply(&mut conn)
            .await
            .unwrap();
        let mut dbs = Vec::new();
        for hygiene in [PoolHygiene::Verify, PoolHygiene::Off] {
            let pool = TenantDb::pool_options_with(hygiene)
                .max_connections(CLIENTS as u32)
                .min_connections(CLIENTS as u32)
                .connect(&env.app_url)
                .await
                .unwrap();
            dbs.push(TenantDb::new(pool, env.seal_key().await.unwrap()));
        }
        (dbs, table)
    });
    let (db, db_no_hygiene) = (dbs[0].clone(), dbs[1].clone());

    let many: Vec<TenantContext> = (0..CLIENTS).map(|_| ctx(u64::MAX / 2)).collect();
    let one = ctx(u64::MAX / 2);
    for (group, db) in [("pg_stock", &db), ("pg_stock_hygiene_off", &db_no_hygiene)] {
        let mut g = c.benchmark_group(group);
        g.throughput(Throughput::Elements(CLIENTS as u64))
            .sample_size(30)
            .measurement_time(Duration::from_secs(8));
        for (name, quota, shared) in [
            ("insert_only", false, false),
            ("insert_and_consume_16_tenants", true, false),
            ("insert_and_consume_1_tenant", true, true),
        ] {
            g.bench_function(name, |b| {
                b.to_async(&rt).iter(|| {
                    let (db, table, many, one) =
                        (db.clone(), table.clone(), many.clone(), one.clone());
                    async move {
                        let mut tasks = Vec::with_capacity(CLIENTS);
                        for own in many.iter().take(CLIENTS) {
                            let (db, table) = (db.clone(), table.clone());
                            let ctx = if shared { one.clone() } else { own.clone() };
                            tasks.push(tokio::spawn(
                                async move { op(&db, &ctx, &table, quota).await },
                            ));
                        }
                        for t in tasks {
                            assert!(t.await.unwrap());
                        }
                    }
                });
            });
        }
        g.finish();
    }

    // Exactness under the same load: 3 200 attempts, limit 2 000.
    rt.block_on(async {
        let limited = ctx(2000);
        let start = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..CLIENTS {
            let (db, table, ctx) = (db.clone(), table.clone(), limited.clone());
            tasks.push(tokio::spawn(async move {
                let mut granted = 0u64;
                for _ in 0..200 {
                    granted += u64::from(op(&db, &ctx, &table, true).await);
                }
                granted
            }));
        }
        let mut granted = 0;
        for t in tasks {
            granted += t.await.unwrap();
        }
        let mut tx = db.begin(&limited).await.unwrap();
        let used = tx.stock_used("orders").await.unwrap();
        let rows: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        println!(
            "pg-stock: attempts=3200 granted={granted} used={used} rows={rows} overshoot={} elapsed={:.2?}",
            used.saturating_sub(2000),
            start.elapsed()
        );
        assert_eq!((granted, used, rows), (2000, 2000, 2000));
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
