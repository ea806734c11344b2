//! The shared isolation property suite through tenancy-diesel, sync (r2d2)
//! and async (deadpool), as the application role — and each wall alone:
//! row-level security without the query filter, the query filter and write
//! guard without row-level security.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test
#![allow(missing_docs)] // diesel::table! items

mod common;

use std::sync::Arc;

use async_trait::async_trait;
use common::Walls;
use diesel::pg::PgConnection;
use diesel::{ExpressionMethods, QueryDsl};
use tenancy_core::{TenantContext, TenantId, TenantScoped};
use tenancy_diesel::dsl::{TenantScopedTable, verified};
use tenancy_diesel::{AsyncTenantPool, Error, TenantPool};
use tenancy_testkit::TestDb;
use tenancy_testkit::isolation::{self, Config, Row, Target};
use uuid::Uuid;

/// The suite's three tables in a fixed schema, as a diesel module.
macro_rules! suite_schema {
    ($module:ident, $schema:ident) => {
        mod $module {
            diesel::table! { $schema.customers (tenant_id, id) { tenant_id -> Uuid, id -> Uuid, value -> BigInt, } }
            diesel::table! { $schema.policies (tenant_id, id) { tenant_id -> Uuid, id -> Uuid, value -> BigInt, } }
            diesel::table! { $schema.payments (tenant_id, id) { tenant_id -> Uuid, id -> Uuid, value -> BigInt, } }
            tenancy_diesel::tenant_table!(customers);
            tenancy_diesel::tenant_table!(policies);
            tenancy_diesel::tenant_table!(payments);
        }
    };
}
suite_schema!(both_walls, diesel_iso_sync);
suite_schema!(async_walls, diesel_iso_async);
suite_schema!(rls_only, diesel_iso_rls_only);
suite_schema!(filter_only, diesel_iso_filter_only);

/// Runs `$body` with `$t` naming the diesel module of table `$index`.
macro_rules! on_table {
    ($m:ident, $index:expr, $t:ident => $body:expr) => {
        match $index {
            0 => {
                use $m::customers as $t;
                $body
            }
            1 => {
                use $m::policies as $t;
                $body
            }
            _ => {
                use $m::payments as $t;
                $body
            }
        }
    };
}

type R = (Uuid, Uuid, i64);
fn row((tenant_id, id, value): R) -> Row {
    Row {
        tenant_id,
        id,
        value,
    }
}

/// A suite row as a write-guarded entity.
struct Guarded(Row);
impl TenantScoped for Guarded {
    fn tenant_id(&self) -> TenantId {
        // A nil id is never a context's tenant: the guard refuses it.
        TenantId::from_uuid(self.0.tenant_id).unwrap_or_else(|_| TenantId::new_v4())
    }
}

/// One operation on table `t` through the sync or async door, with or
/// without the application filter (`filter`) and write guard.
macro_rules! ops {
    (load: $conn:expr, $ctx:expr, $filter:expr, $t:ident, $extra:expr) => {{
        let cols = ($t::tenant_id, $t::id, $t::value);
        if $filter {
            $t::table
                .for_tenant($ctx)
                .filter($extra)
                .select(cols)
                .load::<R>($conn)
        } else {
            $t::table.filter($extra).select(cols).load::<R>($conn)
        }
    }};
}

macro_rules! sync_target {
    ($name:ident, $m:ident) => {
        struct $name {
            pool: TenantPool,
            admin: sqlx::PgPool,
            filter: bool,
        }

        impl $name {
            async fn run<T: Send + 'static>(
                &self,
                ctx: &TenantContext,
                f: impl FnOnce(&mut PgConnection, &TenantContext, bool) -> Result<T, Error> + Send + 'static,
            ) -> Result<T, String> {
                let pool = self.pool.clone();
                let ctx = ctx.clone();
                let filter = self.filter;
                tokio::task::spawn_blocking(move || {
                    pool.transaction_for(&ctx, |conn| f(conn, &ctx, filter))
                })
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())
            }
        }

        #[async_trait]
        impl Target for $name {
            async fn insert(&self, ctx: &TenantContext, table: usize, r: Row) -> Result<(), String> {
                self.run(ctx, move |conn, ctx, filter| {
                    use diesel::RunQueryDsl;
                    if filter {
                        verified(ctx, &[Guarded(r)])?;
                    }
                    on_table!($m, table, t => diesel::insert_into(t::table)
                        .values((t::tenant_id.eq(r.tenant_id), t::id.eq(r.id), t::value.eq(r.value)))
                        .execute(conn))?;
                    Ok(())
                })
                .await
            }

            async fn select_all(&self, ctx: &TenantContext, table: usize) -> Result<Vec<Row>, String> {
                let rows = self
                    .run(ctx, move |conn, ctx, filter| {
                    use diesel::RunQueryDsl;
                        Ok(on_table!($m, table, t => ops!(load: conn, ctx, filter, t, t::value.eq(t::value)))?)
                    })
                    .await?;
                Ok(rows.into_iter().map(row).collect())
            }

            async fn select_one(&self, ctx: &TenantContext, table: usize, id: Uuid) -> Result<Option<Row>, String> {
                let rows = self
                    .run(ctx, move |conn, ctx, filter| {
                    use diesel::RunQueryDsl;
                        Ok(on_table!($m, table, t => ops!(load: conn, ctx, filter, t, t::id.eq(id)))?)
                    })
                    .await?;
                Ok(rows.into_iter().next().map(row))
            }

            async fn update(&self, ctx: &TenantContext, table: usize, id: Uuid, value: i64) -> Result<u64, String> {
                self.run(ctx, move |conn, ctx, filter| {
                    use diesel::RunQueryDsl;
                    let n = on_table!($m, table, t => if filter {
                        diesel::update(t::table.for_tenant(ctx).filter(t::id.eq(id)))
                            .set(t::value.eq(value))
                            .execute(conn)
                    } else {
                        diesel::update(t::table.filter(t::id.eq(id)))
                            .set(t::value.eq(value))
                            .execute(conn)
                    })?;
                    Ok(n as u64)
                })
                .await
            }

            async fn delete(&self, ctx: &TenantContext, table: usize, id: Uuid) -> Result<u64, String> {
                self.run(ctx, move |conn, ctx, filter| {
                    use diesel::RunQueryDsl;
                    let n = on_table!($m, table, t => if filter {
                        diesel::delete(t::table.for_tenant(ctx).filter(t::id.eq(id))).execute(conn)
                    } else {
                        diesel::delete(t::table.filter(t::id.eq(id))).execute(conn)
                    })?;
                    Ok(n as u64)
                })
                .await
            }

            async fn oracle(&self, table: usize) -> Result<Vec<Row>, String> {
                oracle(&self.admin, stringify!($m), table).await
            }
        }
    };
}

sync_target!(BothWalls, both_walls);
sync_target!(RlsOnly, rls_only);
sync_target!(FilterOnly, filter_only);

/// Every row of the table, read as superuser.
async fn oracle(admin: &sqlx::PgPool, module: &str, table: usize) -> Result<Vec<Row>, String> {
    let schema = match module {
        "both_walls" => "diesel_iso_sync",
        "rls_only" => "diesel_iso_rls_only",
        "filter_only" => "diesel_iso_filter_only",
        _ => "diesel_iso_async",
    };
    let rows: Vec<R> = sqlx::query_as(&format!(
        "SELECT tenant_id, id, value FROM \"{schema}\".\"{}\"",
        isolation::TABLES[table]
    ))
    .fetch_all(admin)
    .await
    .map_err(|e| e.to_string())?;
    Ok(rows.into_iter().map(row).collect())
}

struct AsyncWalls {
    pool: AsyncTenantPool,
    admin: sqlx::PgPool,
}

#[async_trait]
impl Target for AsyncWalls {
    async fn insert(&self, ctx: &TenantContext, table: usize, r: Row) -> Result<(), String> {
        use diesel_async::RunQueryDsl;
        self.pool
            .transaction_for(ctx, async |conn| {
                verified(ctx, &[Guarded(r)])?;
                on_table!(async_walls, table, t => diesel::insert_into(t::table)
                    .values((t::tenant_id.eq(r.tenant_id), t::id.eq(r.id), t::value.eq(r.value)))
                    .execute(conn)
                    .await)?;
                Ok::<_, Error>(())
            })
            .await
            .map_err(|e| e.to_string())
    }

    async fn select_all(&self, ctx: &TenantContext, table: usize) -> Result<Vec<Row>, String> {
        use diesel_async::RunQueryDsl;
        let rows = self
            .pool
            .transaction_for(ctx, async |conn| {
                Ok::<_, Error>(on_table!(async_walls, table, t => t::table
                    .for_tenant(ctx)
                    .select((t::tenant_id, t::id, t::value))
                    .load::<R>(conn)
                    .await)?)
            })
            .await
            .map_err(|e| e.to_string())?;
        Ok(rows.into_iter().map(row).collect())
    }

    async fn select_one(
        &self,
        ctx: &TenantContext,
        table: usize,
        id: Uuid,
    ) -> Result<Option<Row>, String> {
        use diesel_async::RunQueryDsl;
        let rows = self
            .pool
            .transaction_for(ctx, async |conn| {
                Ok::<_, Error>(on_table!(async_walls, table, t => t::table
                    .for_tenant(ctx)
                    .filter(t::id.eq(id))
                    .select((t::tenant_id, t::id, t::value))
                    .load::<R>(conn)
                    .await)?)
            })
            .await
            .map_err(|e| e.to_string())?;
        Ok(rows.into_iter().next().map(row))
    }

    async fn update(
        &self,
        ctx: &TenantContext,
        table: usize,
        id: Uuid,
        value: i64,
    ) -> Result<u64, String> {
        use diesel_async::RunQueryDsl;
        self.pool
            .transaction_for(ctx, async |conn| {
                let n = on_table!(async_walls, table, t => diesel::update(t::table.for_tenant(ctx).filter(t::id.eq(id)))
                    .set(t::value.eq(value))
                    .execute(conn)
                    .await)?;
                Ok::<_, Error>(n as u64)
            })
            .await
            .map_err(|e| e.to_string())
    }

    async fn delete(&self, ctx: &TenantContext, table: usize, id: Uuid) -> Result<u64, String> {
        use diesel_async::RunQueryDsl;
        self.pool
            .transaction_for(ctx, async |conn| {
                let n = on_table!(async_walls, table, t => diesel::delete(t::table.for_tenant(ctx).filter(t::id.eq(id)))
                    .execute(conn)
                    .await)?;
                Ok::<_, Error>(n as u64)
            })
            .await
            .map_err(|e| e.to_string())
    }

    async fn oracle(&self, table: usize) -> Result<Vec<Row>, String> {
        oracle(&self.admin, "async_walls", table).await
    }
}

fn r2d2_pool(env: &TestDb) -> TenantPool {
    let url = &env.app_url;
    // Fewer connections than tenants: physical connections are shared.
    TenantPool::new(
        diesel::r2d2::Pool::builder()
            .max_size(4)
            .build(diesel::r2d2::ConnectionManager::new(url))
            .unwrap(),
        common::seal_key(env),
    )
}

/// A shorter run for the single-wall variants (the full count runs with both walls).
fn single_wall_config() -> Config {
    let mut config = Config::from_env();
    config.ops = config.ops.min(20_000);
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn isolation_suite_sync_r2d2() {
    let env = TestDb::from_env().unwrap();
    common::create_schema(&env, "diesel_iso_sync", Walls::Rls);
    let target = Arc::new(BothWalls {
        pool: r2d2_pool(&env),
        admin: env.admin_pool(2).await.unwrap(),
        filter: true,
    });
    let config = Config::from_env();
    let report = isolation::run(target, &common::tenants(8, "dsync"), &config).await;
    report.assert_clean(&config, "diesel-r2d2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn isolation_suite_async_deadpool() {
    let env = TestDb::from_env().unwrap();
    common::create_schema(&env, "diesel_iso_async", Walls::Rls);
    let target = Arc::new(AsyncWalls {
        pool: AsyncTenantPool::connect(&env.app_url, 4, common::seal_key(&env)).unwrap(),
        admin: env.admin_pool(2).await.unwrap(),
    });
    let config = Config::from_env();
    let report = isolation::run(target, &common::tenants(8, "dasync"), &config).await;
    report.assert_clean(&config, "diesel-async");
}

/// The second wall alone: no `for_tenant`, no write guard — row-level
/// security (applied through diesel) must hold by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn row_level_security_alone_holds() {
    let env = TestDb::from_env().unwrap();
    common::create_schema(&env, "diesel_iso_rls_only", Walls::Rls);
    let target = Arc::new(RlsOnly {
        pool: r2d2_pool(&env),
        admin: env.admin_pool(2).await.unwrap(),
        filter: false,
    });
    let config = single_wall_config();
    let report = isolation::run(target, &common::tenants(8, "drls"), &config).await;
    report.assert_clean(&config, "diesel-rls-only");
}

/// The first wall alone: tables without row-level security, every query
/// through `for_tenant` and every insert through the write guard.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_query_filter_and_write_guard_alone_hold() {
    let env = TestDb::from_env().unwrap();
    common::create_schema(&env, "diesel_iso_filter_only", Walls::NoRls);
    let target = Arc::new(FilterOnly {
        pool: r2d2_pool(&env),
        admin: env.admin_pool(2).await.unwrap(),
        filter: true,
    });
    let config = single_wall_config();
    let report = isolation::run(target, &common::tenants(8, "dfilter"), &config).await;
    report.assert_clean(&config, "diesel-filter-only");

    // Broken twin of both walls, on the same (recreated) schema — diesel's
    // `table!` fixes the schema name: no row-level security and no filter
    // or write guard. The suite must see the leaks, kind by kind.
    common::create_schema(&env, "diesel_iso_filter_only", Walls::NoRls);
    let twin = Arc::new(FilterOnly {
        pool: r2d2_pool(&env),
        admin: env.admin_pool(2).await.unwrap(),
        filter: false,
    });
    let config = Config { ops: 2000, seed: 5 };
    let report = isolation::run(twin, &common::tenants(3, "dnowall"), &config).await;
    report.assert_detects(
        "diesel-no-walls",
        &[
            "read-foreign",
            "update-foreign",
            "delete-foreign",
            "insert-foreign",
            "read-all",
        ],
    );
}
