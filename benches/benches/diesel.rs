//! tenancy-diesel's scoped transaction against an unscoped one, same run.
//!
//! Run: `scripts/bench --bench diesel` (starts the throwaway PostgreSQL).
//!
//! Table `diesel_bench.items`: 8 tenants x 5 000 rows, primary key
//! (tenant_id, id), isolated with the shared RLS DDL applied through diesel.
//! Every variant reads one row by `(tenant_id, id)` with the same diesel
//! query, one client, one single-connection pool per variant, no
//! check-on-checkout ping (r2d2 `test_on_check_out(false)`, deadpool
//! `RecyclingMethod::Fast`) so the figures are the transactions alone.
//!
//! - `diesel_r2d2/unscoped_tx` (**baseline**): `conn.transaction(..)` (BEGIN,
//!   read, COMMIT) as the operations role, no RLS.
//! - `diesel_r2d2/scoped_tx`: `TenantPool::transaction_for` (BEGIN + SET
//!   LOCAL in one round trip, RLS, `for_tenant` filter), read, COMMIT.
//! - `diesel_r2d2/raw_scoped_sql`: the scoped transaction's SQL sent by hand
//!   (`BEGIN; SET LOCAL ...`, the read, `COMMIT`) as the app role: what the
//!   library adds on top of its SQL.
//! - `diesel_r2d2/unscoped_tx_set_local`: the baseline plus the `SET LOCAL`
//!   in the `BEGIN` message (operations role, no policy): the setting's own cost.
//! - `diesel_async/*`: baseline and scoped with diesel-async over deadpool.
//!
//! Run it pinned to one CPU (`taskset -c 1 scripts/bench --bench diesel`):
//! PostgreSQL and the client then share a core, which removes the
//! cross-core wake-up latency that otherwise makes loopback round trips
//! bimodal (60 or 230 µs) on a 2-core VM.
//!
//! The variants of a group are interleaved round-robin and each benchmark
//! times only its own, so drift of the machine hits baseline and contender
//! alike.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use diesel::connection::SimpleConnection;
use diesel::pg::PgConnection;
use diesel::r2d2::{ConnectionManager, Pool};
use diesel::{Connection, ExpressionMethods, QueryDsl};
use diesel_async::AsyncPgConnection;
use diesel_async::pooled_connection::{
    AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod,
};
use tenancy_benches::interleaved;
use tenancy_core::{Tenant, TenantContext, TenantId};
use tenancy_diesel::dsl::TenantScopedTable;
use tenancy_diesel::rls::TenantTable;
use tenancy_diesel::{AsyncPgPool, AsyncTenantPool, Error, TenantPool};
use tenancy_testkit::TestDb;
use uuid::Uuid;

diesel::table! {
    diesel_bench.items (tenant_id, id) {
        tenant_id -> Uuid,
        id -> Uuid,
        value -> BigInt,
        payload -> Text,
    }
}
tenancy_diesel::tenant_table!(items);

const TENANTS: usize = 8;
const ROWS: i64 = 5_000;

type Item = (Uuid, i64, String);

struct Setup {
    ctx: TenantContext,
    probe: Uuid,
    seal: tenancy_core::rls::SealKey,
    unscoped: Pool<ConnectionManager<PgConnection>>,
    scoped: TenantPool,
    raw_scoped: Pool<ConnectionManager<PgConnection>>,
    unscoped_set_local: Pool<ConnectionManager<PgConnection>>,
    unscoped_async: AsyncPgPool,
    scoped_async: AsyncTenantPool,
}

fn r2d2(url: &str) -> Pool<ConnectionManager<PgConnection>> {
    Pool::builder()
        .max_size(1)
        .min_idle(Some(1))
        .test_on_check_out(false)
        .build(ConnectionManager::new(url))
        .unwrap()
}

fn deadpool(url: &str) -> AsyncPgPool {
    let mut config = ManagerConfig::default();
    config.recycling_method = RecyclingMethod::Fast;
    AsyncPgPool::builder(
        AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config(url, config),
    )
    .max_size(1)
    .build()
    .unwrap()
}

fn setup() -> Setup {
    let env =
        TestDb::from_env().expect("benchmarks need the database: run them with scripts/bench");
    let mut owner = PgConnection::establish(&env.owner_url).unwrap();
    owner
        .batch_execute(
            "DROP SCHEMA IF EXISTS diesel_bench CASCADE; CREATE SCHEMA diesel_bench; \
             GRANT USAGE ON SCHEMA diesel_bench TO tenancy_app, tenancy_ops; \
             CREATE TABLE diesel_bench.items (tenant_id uuid NOT NULL, id uuid NOT NULL, \
               value bigint NOT NULL, payload text NOT NULL, PRIMARY KEY (tenant_id, id))",
        )
        .unwrap();
    tenancy_diesel::rls::apply(
        &mut owner,
        &TenantTable::new("items")
            .schema("diesel_bench")
            .index_on(["id"])
            .grant_to("tenancy_app")
            .grant_to("tenancy_ops"),
    )
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
    let mut ops = PgConnection::establish(&env.ops_url).unwrap();
    for t in &tenants {
        ops.batch_execute(&format!(
            "INSERT INTO diesel_bench.items (tenant_id, id, value, payload) \
             SELECT '{}', gen_random_uuid(), g, repeat('x', 64) FROM generate_series(1, {ROWS}) g",
            t.tenant_id()
        ))
        .unwrap();
    }
    owner.batch_execute("ANALYZE diesel_bench.items").unwrap();
    let ctx = tenants[3].clone();
    let probe: Uuid = {
        use diesel::RunQueryDsl;
        items::table
            .filter(items::tenant_id.eq(ctx.tenant_id().as_uuid()))
            .order(items::id)
            .offset(2500)
            .select(items::id)
            .first(&mut ops)
            .unwrap()
    };
    let seal = env.seal_key_blocking().unwrap();
    Setup {
        ctx,
        probe,
        seal: seal.clone(),
        unscoped: r2d2(&env.ops_url),
        scoped: TenantPool::new(r2d2(&env.app_url), seal.clone()),
        raw_scoped: r2d2(&env.app_url),
        unscoped_set_local: r2d2(&env.ops_url),
        unscoped_async: deadpool(&env.ops_url),
        scoped_async: AsyncTenantPool::new(deadpool(&env.app_url), seal),
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Variant {
    Unscoped,
    Scoped,
    RawScoped,
    UnscopedSetLocal,
    UnscopedAsync,
    ScopedAsync,
}

impl Setup {
    async fn run(&self, v: Variant) {
        let tenant = self.ctx.tenant_id().as_uuid();
        let probe = self.probe;
        let cols = (items::id, items::value, items::payload);
        let row: Item = match v {
            Variant::Unscoped => {
                use diesel::RunQueryDsl;
                let mut conn = self.unscoped.get().unwrap();
                conn.transaction(|c| {
                    items::table
                        .filter(items::tenant_id.eq(tenant))
                        .filter(items::id.eq(probe))
                        .select(cols)
                        .first(c)
                })
                .unwrap()
            }
            Variant::Scoped => {
                use diesel::RunQueryDsl;
                self.scoped
                    .transaction_for(&self.ctx, |c| {
                        Ok::<_, Error>(
                            items::table
                                .for_tenant(&self.ctx)
                                .filter(items::id.eq(probe))
                                .select(cols)
                                .first(c)?,
                        )
                    })
                    .unwrap()
            }
            Variant::RawScoped | Variant::UnscopedSetLocal => {
                use diesel::RunQueryDsl;
                let pool = if v == Variant::RawScoped {
                    &self.raw_scoped
                } else {
                    &self.unscoped_set_local
                };
                let mut conn = pool.get().unwrap();
                conn.batch_execute(&tenancy_core::rls::begin_sql(
                    self.ctx.tenant_id(),
                    &self.seal,
                ))
                .unwrap();
                let r = items::table
                    .filter(items::tenant_id.eq(tenant))
                    .filter(items::id.eq(probe))
                    .select(cols)
                    .first(&mut *conn)
                    .unwrap();
                conn.batch_execute("COMMIT").unwrap();
                r
            }
            Variant::UnscopedAsync => {
                use diesel_async::{AsyncConnection, RunQueryDsl};
                let mut conn = self.unscoped_async.get().await.unwrap();
                conn.transaction::<_, diesel::result::Error, _>(async |c| {
                    items::table
                        .filter(items::tenant_id.eq(tenant))
                        .filter(items::id.eq(probe))
                        .select(cols)
                        .first(c)
                        .await
                })
                .await
                .unwrap()
            }
            Variant::ScopedAsync => {
                use diesel_async::RunQueryDsl;
                let ctx = &self.ctx;
                self.scoped_async
                    .transaction_for(ctx, async |c| {
                        Ok::<_, Error>(
                            items::table
                                .for_tenant(ctx)
                                .filter(items::id.eq(probe))
                                .select(cols)
                                .first(c)
                                .await?,
                        )
                    })
                    .await
                    .unwrap()
            }
        };
        black_box(row);
    }
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let s = setup();
    let run = |v| s.run(v);
    interleaved(
        c,
        &rt,
        "diesel_r2d2",
        &[
            ("unscoped_tx", Variant::Unscoped),
            ("scoped_tx", Variant::Scoped),
            ("raw_scoped_sql", Variant::RawScoped),
            ("unscoped_tx_set_local", Variant::UnscopedSetLocal),
        ],
        run,
    );
    interleaved(
        c,
        &rt,
        "diesel_async",
        &[
            ("unscoped_tx", Variant::UnscopedAsync),
            ("scoped_tx", Variant::ScopedAsync),
        ],
        run,
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
