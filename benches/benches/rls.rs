//! The cost of tenant scoping on PostgreSQL, against baselines in the same run.
//!
//! Run: `scripts/bench --bench rls` (starts the throwaway PostgreSQL).
//!
//! Table: 8 tenants x 5 000 rows, primary key (tenant_id, id), isolated with
//! `TenantTable` (RLS enabled and forced). Every variant runs the same SQL
//! `... WHERE tenant_id = $1 AND id = $2` with prepared, cached statements,
//! one client, one single-connection pool per variant with
//! `test_before_acquire` off.
//!
//! - `point_read/unscoped_autocommit`: the read alone (operations role, no RLS).
//! - `point_read/unscoped_tx` (**baseline**): BEGIN, read, COMMIT (operations role, no RLS).
//! - `point_read/scoped_tx`: `TenantDb::begin` (app role, RLS), read, commit; hygiene off.
//! - `point_read/scoped_tx_verified`: the same with `PoolHygiene::Verify` (default).
//! - `point_read/scoped_tx_move_guard`: `scoped_tx` on a handle built with
//!   `TenantDb::with_move_guard` (the tenant recorded in `tenancy.tenants`).
//! - `point_read/unsealed_tx`: what scoping cost before the sealed binding —
//!   `BEGIN; SET LOCAL app.tenant_id = ..` and a policy trusting that setting
//!   (a twin table with the same rows) — to price the seal itself.
//! - `list_100/*`: 100 rows ordered by id instead of one, unscoped tx vs scoped tx.
//!
//! Within a group the variants are interleaved round-robin and each benchmark
//! times only its own variant, so slow drift of the machine affects all of
//! them alike (see `bench`).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tenancy_benches::interleaved;
use tenancy_core::{Tenant, TenantContext, TenantId};
use tenancy_sqlx::rls::{ApplyTenantTable, TenantTable};
use tenancy_sqlx::{PoolHygiene, TenantDb};
use tenancy_testkit::TestDb;
use uuid::Uuid;

const TENANTS: usize = 8;
const ROWS: i64 = 5_000;

/// Every variant has its own one-connection pool, so that when variants are
/// interleaved each backend has the same idle history.
struct Setup {
    table: String,
    ctx: TenantContext,
    probe: Uuid,
    autocommit: PgPool,
    unscoped: PgPool,
    unscoped_list: PgPool,
    scoped: TenantDb,
    scoped_list: TenantDb,
    scoped_verified: TenantDb,
    scoped_guarded: TenantDb,
    unsealed: PgPool,
    twin: String,
}

async fn setup() -> Setup {
    let env =
        TestDb::from_env().expect("benchmarks need the database: run them with scripts/bench");
    let schema = env.fresh_schema("bench").await.unwrap();
    let owner = env.owner_pool(1).await.unwrap();
    let table = format!("\"{schema}\".items");
    sqlx::query(&format!(
        "CREATE TABLE {table} (tenant_id uuid NOT NULL, id uuid NOT NULL, value bigint NOT NULL, \
         payload text NOT NULL, PRIMARY KEY (tenant_id, id))"
    ))
    .execute(&owner)
    .await
    .unwrap();
    TenantTable::new("items")
        .schema(&schema)
        .index_on(["id"])
        .grant_to("tenancy_app")
        .grant_to("tenancy_ops")
        .apply(&mut owner.acquire().await.unwrap())
        .await
        .unwrap();
    let tenants: Vec<TenantContext> = (0..TENANTS)
        .map(|i| {
            TenantContext::new(Tenant::new(
                TenantId::new_v4(),
                format!("bench-{i}").parse().unwrap(),
                "bench",
            ))
        })
        .collect();
    let ops = || async {
        PgPoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .test_before_acquire(false)
            .connect(&env.ops_url)
            .await
            .unwrap()
    };
    let unscoped = ops().await;
    for t in &tenants {
        sqlx::query(&format!(
            "INSERT INTO {table} (tenant_id, id, value, payload) \
             SELECT $1, gen_random_uuid(), g, repeat('x', 64) FROM generate_series(1, $2) g"
        ))
        .bind(t.tenant_id().as_uuid())
        .bind(ROWS)
        .execute(&unscoped)
        .await
        .unwrap();
    }
    sqlx::query(&format!("ANALYZE {table}"))
        .execute(&owner)
        .await
        .unwrap();
    // The twin: same rows, the policy shape that trusts `app.tenant_id`.
    let twin = format!("\"{schema}\".items_unsealed");
    sqlx::raw_sql(&format!(
        "CREATE TABLE {twin} (LIKE {table} INCLUDING ALL); \
         GRANT SELECT ON {twin} TO tenancy_app; GRANT SELECT, INSERT ON {twin} TO tenancy_ops"
    ))
    .execute(&owner)
    .await
    .unwrap();
    sqlx::query(&format!("INSERT INTO {twin} SELECT * FROM {table}"))
        .execute(&unscoped)
        .await
        .unwrap();
    let legacy = tenancy_core::rls::unsealed_predicate("tenant_id");
    sqlx::raw_sql(&format!(
        "ALTER TABLE {twin} ENABLE ROW LEVEL SECURITY; ALTER TABLE {twin} FORCE ROW LEVEL SECURITY; \
         CREATE POLICY tenant_isolation ON {twin} FOR ALL USING ({legacy}) WITH CHECK ({legacy}); \
         ANALYZE {twin}"
    ))
    .execute(&owner)
    .await
    .unwrap();
    let ctx = tenants[3].clone();
    // The move guard reads the tenant's placement from the system schema.
    {
        let mut conn = owner.acquire().await.unwrap();
        tenancy_sqlx::migrate::run(&mut conn).await.unwrap();
        tenancy_sqlx::migrate::grant_system_read(&mut conn, "tenancy_app")
            .await
            .unwrap();
    }
    tenancy_sqlx::PgTenantStore::new(owner.clone())
        .create(ctx.tenant())
        .await
        .unwrap();
    let probe: Uuid = sqlx::query_scalar(&format!(
        "SELECT id FROM {table} WHERE tenant_id = $1 ORDER BY id OFFSET 2500 LIMIT 1"
    ))
    .bind(ctx.tenant_id().as_uuid())
    .fetch_one(&unscoped)
    .await
    .unwrap();
    let app_url = env.app_url.clone();
    let seal = env.seal_key().await.unwrap();
    let app = |h| {
        let url = app_url.clone();
        let seal = seal.clone();
        async move {
            TenantDb::new(
                TenantDb::pool_options_with(h)
                    .max_connections(1)
                    .min_connections(1)
                    .connect(&url)
                    .await
                    .unwrap(),
                seal,
            )
        }
    };
    Setup {
        table,
        ctx,
        probe,
        autocommit: ops().await,
        unscoped,
        unscoped_list: ops().await,
        scoped: app(PoolHygiene::Off).await,
        scoped_list: app(PoolHygiene::Off).await,
        scoped_verified: app(PoolHygiene::Verify).await,
        scoped_guarded: app(PoolHygiene::Off).await.with_move_guard(),
        unsealed: TenantDb::pool_options_with(PoolHygiene::Off)
            .max_connections(1)
            .min_connections(1)
            .connect(&env.app_url)
            .await
            .unwrap(),
        twin,
    }
}

type Item = (Uuid, i64, String);

/// One kind of request the benchmark can issue.
#[derive(Clone, Copy, PartialEq)]
enum Variant {
    UnscopedAutocommit,
    UnscopedTx,
    ScopedTx,
    ScopedTxVerified,
    ScopedTxMoveGuard,
    UnsealedTx,
    ListUnscopedTx,
    ListScopedTx,
}

impl Setup {
    async fn run(&self, v: Variant, point: &str, list: &str) {
        let tenant = self.ctx.tenant_id().as_uuid();
        match v {
            Variant::UnscopedAutocommit => {
                let row: Item = sqlx::query_as(point)
                    .bind(tenant)
                    .bind(self.probe)
                    .fetch_one(&self.autocommit)
                    .await
                    .unwrap();
                black_box(row);
            }
            Variant::UnscopedTx => {
                let mut tx = self.unscoped.begin().await.unwrap();
                let row: Item = sqlx::query_as(point)
                    .bind(tenant)
                    .bind(self.probe)
                    .fetch_one(&mut *tx)
                    .await
                    .unwrap();
                tx.commit().await.unwrap();
                black_box(row);
            }
            Variant::ScopedTx | Variant::ScopedTxVerified | Variant::ScopedTxMoveGuard => {
                let db = match v {
                    Variant::ScopedTx => &self.scoped,
                    Variant::ScopedTxVerified => &self.scoped_verified,
                    _ => &self.scoped_guarded,
                };
                let mut tx = db.begin(&self.ctx).await.unwrap();
                let row: Item = sqlx::query_as(point)
                    .bind(tenant)
                    .bind(self.probe)
                    .fetch_one(&mut *tx)
                    .await
                    .unwrap();
                tx.commit().await.unwrap();
                black_box(row);
            }
            Variant::UnsealedTx => {
                let mut tx = self
                    .unsealed
                    .begin_with(format!(
                        "BEGIN; SET LOCAL app.tenant_id = '{}'",
                        self.ctx.tenant_id()
                    ))
                    .await
                    .unwrap();
                let row: Item = sqlx::query_as(&point.replace(&self.table, &self.twin))
                    .bind(tenant)
                    .bind(self.probe)
                    .fetch_one(&mut *tx)
                    .await
                    .unwrap();
                tx.commit().await.unwrap();
                black_box(row);
            }
            Variant::ListUnscopedTx => {
                let mut tx = self.unscoped_list.begin().await.unwrap();
                let rows: Vec<Item> = sqlx::query_as(list)
                    .bind(tenant)
                    .fetch_all(&mut *tx)
                    .await
                    .unwrap();
                tx.commit().await.unwrap();
                black_box(rows);
            }
            Variant::ListScopedTx => {
                let mut tx = self.scoped_list.begin(&self.ctx).await.unwrap();
                let rows: Vec<Item> = sqlx::query_as(list)
                    .bind(tenant)
                    .fetch_all(&mut *tx)
                    .await
                    .unwrap();
                tx.commit().await.unwrap();
                black_box(rows);
            }
        }
    }
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let s = rt.block_on(setup());
    let point = format!(
        "SELECT id, value, payload FROM {} WHERE tenant_id = $1 AND id = $2",
        s.table
    );
    let list = format!(
        "SELECT id, value, payload FROM {} WHERE tenant_id = $1 ORDER BY id LIMIT 100",
        s.table
    );

    // On a small, shared machine, loopback latency drifts by tens of percent
    // over seconds. So every benchmark in a group interleaves all the group's
    // variants round-robin and times only its own: baseline and contenders
    // see the same conditions, and the ratios stay meaningful. The
    // verified variant's after_release check runs in the background and can
    // overlap the request that follows it (unscoped_autocommit), never the
    // baseline.
    let run = |v| s.run(v, &point, &list);
    interleaved(
        c,
        &rt,
        "point_read",
        &[
            ("unscoped_autocommit", Variant::UnscopedAutocommit),
            ("unscoped_tx", Variant::UnscopedTx),
            ("scoped_tx", Variant::ScopedTx),
            ("scoped_tx_verified", Variant::ScopedTxVerified),
            ("scoped_tx_move_guard", Variant::ScopedTxMoveGuard),
            ("unsealed_tx", Variant::UnsealedTx),
        ],
        run,
    );
    interleaved(
        c,
        &rt,
        "list_100",
        &[
            ("unscoped_tx", Variant::ListUnscopedTx),
            ("scoped_tx", Variant::ListScopedTx),
        ],
        run,
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
