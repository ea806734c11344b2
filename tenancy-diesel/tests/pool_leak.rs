//! The pool-leak matrix for r2d2 and deadpool: whatever happens to a tenant
//! transaction (commit, rollback, SQL error, panic, dropped future, killed
//! backend), the next user of the pool sees no tenant setting and no rows.
//! Plus: fail closed without a context.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod common;

use std::time::Duration;

use diesel::Connection;
use diesel::connection::SimpleConnection;
use diesel::pg::PgConnection;
use diesel::sql_types::{BigInt, Integer, Text};
use tenancy_core::TenantContext;
use tenancy_diesel::{AsyncTenantPool, Error, TenantPool};
use tenancy_testkit::TestDb;

/// The table of the r2d2 matrix and of the deadpool one (separate schemas:
/// the two tests run concurrently).
const SYNC_TABLE: &str = "\"diesel_leak_sync\".\"customers\"";
const ASYNC_TABLE: &str = "\"diesel_leak_async\".\"customers\"";

/// What a user of the pool sees outside any tenant transaction.
fn next_user_sql(table: &str) -> String {
    format!(
        "coalesce(current_setting('app.tenant_id', true), ''), \
         (SELECT count(*) FROM {table}), pg_backend_pid()"
    )
}

type Seen = (String, i64, i32);

/// The schema (RLS through diesel) with 5 rows of `tenant`.
fn fixture(env: &TestDb, tenant: &TenantContext, schema: &str) {
    let table = format!("\"{schema}\".\"customers\"");
    common::create_schema(env, schema, common::Walls::Rls);
    let pool = TenantPool::connect(&env.app_url, common::seal_key(env)).unwrap();
    pool.transaction_for(tenant, |conn| {
        for v in 0..5 {
            conn.batch_execute(&format!(
                "INSERT INTO {table} (tenant_id, id, value) VALUES ('{}', gen_random_uuid(), {v})",
                tenant.tenant_id()
            ))?;
        }
        Ok::<_, Error>(())
    })
    .unwrap();
}

fn pid(conn: &mut PgConnection) -> Result<i32, Error> {
    use diesel::RunQueryDsl;
    Ok(diesel::select(diesel::dsl::sql::<Integer>("pg_backend_pid()")).get_result(conn)?)
}

fn next_user_sync(pool: &tenancy_diesel::PgPool) -> Seen {
    use diesel::RunQueryDsl;
    let mut conn = pool.get().unwrap();
    diesel::select(diesel::dsl::sql::<(Text, BigInt, Integer)>(&next_user_sql(
        SYNC_TABLE,
    )))
    .get_result(&mut *conn)
    .unwrap()
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Scenario {
    Commit,
    Rollback,
    SqlError,
    Panic,
    DroppedFuture,
    KilledBackend,
}

fn kill(env: &TestDb, pid: i32) {
    use diesel::RunQueryDsl;
    let mut admin = PgConnection::establish(&env.admin_url).unwrap();
    let killed: bool = diesel::select(diesel::dsl::sql::<diesel::sql_types::Bool>(&format!(
        "pg_terminate_backend({pid})"
    )))
    .get_result(&mut admin)
    .unwrap();
    assert!(killed);
    std::thread::sleep(Duration::from_millis(50));
}

/// Runs `s` on a one-connection r2d2 pool; returns the backend the
/// transaction used when the connection should survive it.
fn run_sync(
    s: Scenario,
    env: &TestDb,
    raw: &tenancy_diesel::PgPool,
    ctx: &TenantContext,
) -> Option<i32> {
    use diesel::RunQueryDsl;
    let pool = TenantPool::new(raw.clone(), common::seal_key(env));
    match s {
        Scenario::Commit => {
            let (n, pid) = pool
                .transaction_for(ctx, |conn| {
                    let n: i64 = diesel::select(diesel::dsl::sql::<BigInt>(&format!(
                        "(SELECT count(*) FROM {SYNC_TABLE})"
                    )))
                    .get_result(conn)?;
                    Ok::<_, Error>((n, pid(conn)?))
                })
                .unwrap();
            assert_eq!(n, 5, "inside the transaction the tenant's rows are visible");
            Some(pid)
        }
        Scenario::Rollback => {
            let mut used = None;
            let out: Result<(), Error> = pool.transaction_for(ctx, |conn| {
                conn.batch_execute(&format!(
                    "INSERT INTO {SYNC_TABLE} (tenant_id, id, value) VALUES ('{}', gen_random_uuid(), 99)",
                    ctx.tenant_id()
                ))?;
                used = Some(pid(conn)?);
                Err(Error::Database(diesel::result::Error::RollbackTransaction))
            });
            assert!(out.is_err());
            used
        }
        Scenario::SqlError => {
            let mut used = None;
            let out: Result<(), Error> = pool.transaction_for(ctx, |conn| {
                used = Some(pid(conn)?);
                conn.batch_execute("SELECT * FROM no_such_table_here")?;
                Ok(())
            });
            assert!(out.is_err());
            used
        }
        Scenario::Panic => {
            let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let _: Result<(), Error> = pool.transaction_for(ctx, |conn| {
                    pid(conn)?;
                    panic!("handler bug while holding a tenant transaction");
                });
            }));
            assert!(caught.is_err());
            None
        }
        Scenario::KilledBackend => {
            let out: Result<(), Error> = pool.transaction_for(ctx, |conn| {
                kill(env, pid(conn)?);
                conn.batch_execute("SELECT 1")?;
                Ok(())
            });
            assert!(out.is_err(), "the killed backend cannot answer");
            None
        }
        Scenario::DroppedFuture => unreachable!("async only"),
    }
}

#[test]
fn r2d2_pool_leak_matrix() {
    use diesel::RunQueryDsl;
    let env = TestDb::from_env().unwrap();
    let ctx = common::tenants(1, "leak-sync").remove(0);
    fixture(&env, &ctx, "diesel_leak_sync");
    for s in [
        Scenario::Commit,
        Scenario::Rollback,
        Scenario::SqlError,
        Scenario::Panic,
        Scenario::KilledBackend,
    ] {
        // One connection: the next user gets the very same client connection.
        let raw = diesel::r2d2::Pool::builder()
            .max_size(1)
            .build(diesel::r2d2::ConnectionManager::<PgConnection>::new(
                &env.app_url,
            ))
            .unwrap();
        let used = run_sync(s, &env, &raw, &ctx);
        let (setting, rows, pid) = next_user_sync(&raw);
        assert_eq!(
            setting, "",
            "{s:?}: the tenant setting survived the transaction"
        );
        assert_eq!(rows, 0, "{s:?}: rows visible without a tenant");
        if let Some(used) = used {
            assert_eq!(pid, used, "{s:?}: the check must run on the same backend");
        }
    }
    // The rolled-back row is not there.
    let pool = TenantPool::connect(&env.app_url, common::seal_key(&env)).unwrap();
    let n: i64 = pool
        .transaction_for(&ctx, |conn| {
            Ok::<_, Error>(
                diesel::select(diesel::dsl::sql::<BigInt>(&format!(
                    "(SELECT count(*) FROM {SYNC_TABLE})"
                )))
                .get_result(conn)?,
            )
        })
        .unwrap();
    assert_eq!(n, 5);
}

async fn next_user_async(pool: &tenancy_diesel::AsyncPgPool) -> Seen {
    use diesel_async::RunQueryDsl;
    let mut conn = pool.get().await.unwrap();
    diesel::select(diesel::dsl::sql::<(Text, BigInt, Integer)>(&next_user_sql(
        ASYNC_TABLE,
    )))
    .get_result(&mut *conn)
    .await
    .unwrap()
}

async fn pid_async(conn: &mut diesel_async::AsyncPgConnection) -> Result<i32, Error> {
    use diesel_async::RunQueryDsl;
    Ok(
        diesel::select(diesel::dsl::sql::<Integer>("pg_backend_pid()"))
            .get_result(conn)
            .await?,
    )
}

async fn run_async(
    s: Scenario,
    env: &TestDb,
    raw: &tenancy_diesel::AsyncPgPool,
    ctx: &TenantContext,
) -> Option<i32> {
    use diesel_async::{RunQueryDsl, SimpleAsyncConnection};
    let pool = AsyncTenantPool::new(raw.clone(), common::seal_key(env));
    match s {
        Scenario::Commit => {
            let (n, pid) = pool
                .transaction_for(ctx, async |conn| {
                    let n: i64 = diesel::select(diesel::dsl::sql::<BigInt>(&format!(
                        "(SELECT count(*) FROM {ASYNC_TABLE})"
                    )))
                    .get_result(conn)
                    .await?;
                    Ok::<_, Error>((n, pid_async(conn).await?))
                })
                .await
                .unwrap();
            assert_eq!(n, 5);
            Some(pid)
        }
        Scenario::Rollback => {
            let (tx, rx) = std::sync::mpsc::channel();
            let out: Result<(), Error> = pool
                .transaction_for(ctx, async |conn| {
                    conn.batch_execute(&format!(
                        "INSERT INTO {ASYNC_TABLE} (tenant_id, id, value) VALUES ('{}', gen_random_uuid(), 99)",
                        ctx.tenant_id()
                    ))
                    .await?;
                    tx.send(pid_async(conn).await?).unwrap();
                    Err(Error::Database(diesel::result::Error::RollbackTransaction))
                })
                .await;
            assert!(out.is_err());
            rx.try_recv().ok()
        }
        Scenario::SqlError => {
            let (tx, rx) = std::sync::mpsc::channel();
            let out: Result<(), Error> = pool
                .transaction_for(ctx, async |conn| {
                    tx.send(pid_async(conn).await?).unwrap();
                    conn.batch_execute("SELECT * FROM no_such_table_here")
                        .await?;
                    Ok(())
                })
                .await;
            assert!(out.is_err());
            rx.try_recv().ok()
        }
        Scenario::Panic => {
            let ctx = ctx.clone();
            let handle = tokio::spawn(async move {
                let _: Result<(), Error> = pool
                    .transaction_for(&ctx, async |conn| {
                        pid_async(conn).await?;
                        panic!("handler bug while holding a tenant transaction");
                    })
                    .await;
            });
            assert!(handle.await.unwrap_err().is_panic());
            None
        }
        Scenario::DroppedFuture => {
            let work = pool.transaction_for(ctx, async |conn| {
                conn.batch_execute("SELECT pg_sleep(1)").await?;
                Ok::<_, Error>(())
            });
            assert!(
                tokio::time::timeout(Duration::from_millis(150), work)
                    .await
                    .is_err(),
                "the future must be cancelled mid-query"
            );
            None
        }
        Scenario::KilledBackend => {
            let out: Result<(), Error> = pool
                .transaction_for(ctx, async |conn| {
                    let pid = pid_async(conn).await?;
                    let url = env.admin_url.clone();
                    tokio::task::spawn_blocking(move || {
                        let env = TestDb {
                            admin_url: url,
                            ..TestDb::from_env().unwrap()
                        };
                        kill(&env, pid);
                    })
                    .await
                    .unwrap();
                    conn.batch_execute("SELECT 1").await?;
                    Ok(())
                })
                .await;
            assert!(out.is_err(), "the killed backend cannot answer");
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadpool_pool_leak_matrix() {
    let env = TestDb::from_env().unwrap();
    let ctx = common::tenants(1, "leak-async").remove(0);
    let setup = env.clone();
    let fixture_ctx = ctx.clone();
    tokio::task::spawn_blocking(move || fixture(&setup, &fixture_ctx, "diesel_leak_async"))
        .await
        .unwrap();
    for s in [
        Scenario::Commit,
        Scenario::Rollback,
        Scenario::SqlError,
        Scenario::Panic,
        Scenario::DroppedFuture,
        Scenario::KilledBackend,
    ] {
        let raw = tenancy_diesel::AsyncPgPool::builder(
            diesel_async::pooled_connection::AsyncDieselConnectionManager::new(&env.app_url),
        )
        .max_size(1)
        .build()
        .unwrap();
        let used = run_async(s, &env, &raw, &ctx).await;
        let (setting, rows, pid) = next_user_async(&raw).await;
        assert_eq!(
            setting, "",
            "{s:?}: the tenant setting survived the transaction"
        );
        assert_eq!(rows, 0, "{s:?}: rows visible without a tenant");
        if let Some(used) = used {
            assert_eq!(pid, used, "{s:?}: the check must run on the same backend");
        }
    }
}

#[test]
fn without_a_tenant_nothing_is_visible_or_writable() {
    use diesel::RunQueryDsl;
    let env = TestDb::from_env().unwrap();
    common::create_schema(&env, "diesel_closed", common::Walls::Rls);
    let ctx = common::tenants(1, "closed").remove(0);
    let pool = TenantPool::connect(&env.app_url, common::seal_key(&env)).unwrap();
    let table = "\"diesel_closed\".\"customers\"";
    pool.transaction_for(&ctx, |conn| {
        conn.batch_execute(&format!(
            "INSERT INTO {table} (tenant_id, id, value) VALUES ('{}', gen_random_uuid(), 1)",
            ctx.tenant_id()
        ))?;
        Ok::<_, Error>(())
    })
    .unwrap();
    // A plain connection as the application role, outside `transaction_for`.
    let mut raw = PgConnection::establish(&env.app_url).unwrap();
    let n: i64 = diesel::select(diesel::dsl::sql::<BigInt>(&format!(
        "(SELECT count(*) FROM {table})"
    )))
    .get_result(&mut raw)
    .unwrap();
    assert_eq!(n, 0, "no tenant set: no row visible");
    let write = raw.batch_execute(&format!(
        "INSERT INTO {table} (tenant_id, id, value) VALUES ('{}', gen_random_uuid(), 2)",
        ctx.tenant_id()
    ));
    let err = write.unwrap_err().to_string();
    assert!(err.contains("row-level security"), "{err}");
}
