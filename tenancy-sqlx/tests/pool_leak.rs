//! The pool-leak matrix: whatever happens to a tenant transaction, the next
//! user of the same physical connection sees no tenant setting and no rows —
//! directly and through pgbouncer in transaction pooling mode.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::time::Duration;

use sqlx::{PgPool, Row};
use tenancy_core::{Placement, Tenant, TenantContext, TenantId};
use tenancy_sqlx::TenantDb;
use tenancy_sqlx::rls::{ApplyTenantTable, TenantTable};
use tenancy_testkit::TestDb;

fn tenant(slug: &str) -> TenantContext {
    TenantContext::new(Tenant::new(TenantId::new_v4(), slug.parse().unwrap(), slug))
}

struct Fixture {
    env: TestDb,
    table: String,
    tenant: TenantContext,
}

async fn fixture() -> Fixture {
    fixture_for(Model::Shared).await
}

async fn fixture_for(model: Model) -> Fixture {
    let env = TestDb::from_env().unwrap();
    let owner = env.owner_pool(1).await.unwrap();
    let tenant = match model {
        Model::Shared => tenant("leaky"),
        Model::Schema => {
            let id = TenantId::new_v4();
            TenantContext::new(
                Tenant::new(id, "leaky".parse().unwrap(), "leaky")
                    .with_placement(Placement::schema(&Placement::name_for(id)).unwrap()),
            )
        }
    };
    let schema = match model {
        Model::Shared => env.fresh_schema("leak").await.unwrap(),
        Model::Schema => {
            let schema = Placement::name_for(tenant.tenant_id());
            sqlx::raw_sql(&format!(
                "CREATE SCHEMA \"{schema}\"; GRANT USAGE ON SCHEMA \"{schema}\" TO tenancy_app"
            ))
            .execute(&owner)
            .await
            .unwrap();
            schema
        }
    };
    let table = format!("\"{schema}\".\"items\"");
    sqlx::query(&format!(
        "CREATE TABLE {table} (tenant_id uuid NOT NULL, id uuid NOT NULL DEFAULT gen_random_uuid(), \
         value int NOT NULL, PRIMARY KEY (tenant_id, id))"
    ))
    .execute(&owner)
    .await
    .unwrap();
    TenantTable::new("items")
        .schema(&schema)
        .index_on(["id"])
        .grant_to("tenancy_app")
        .apply(&mut owner.acquire().await.unwrap())
        .await
        .unwrap();
    // Data that could leak: rows of the tenant used in every scenario.
    let db = TenantDb::connect(&env.app_url, env.seal_key().await.unwrap())
        .await
        .unwrap();
    let mut tx = db.begin(&tenant).await.unwrap();
    for v in 0..5 {
        sqlx::query(&format!(
            "INSERT INTO {table} (tenant_id, value) VALUES ($1, $2)"
        ))
        .bind(tenant.tenant_id().as_uuid())
        .bind(v)
        .execute(&mut *tx)
        .await
        .unwrap();
    }
    tx.commit().await.unwrap();
    Fixture { env, table, tenant }
}

/// What the next user of a pooled connection observes outside any tenant
/// transaction: (tenant setting, visible rows, backend pid, search_path).
/// Simple-query protocol, so the check itself works through pgbouncer.
async fn next_user(pool: &PgPool, table: &str) -> (String, i64, i32, String) {
    let row = sqlx::raw_sql(&format!(
        "SELECT coalesce(current_setting('app.tenant_id', true), ''), \
                (SELECT count(*) FROM {table}), pg_backend_pid(), current_setting('search_path')"
    ))
    .fetch_one(pool)
    .await
    .unwrap();
    (row.get(0), row.get(1), row.get(2), row.get(3))
}

/// The application role's search_path outside any transaction.
const DEFAULT_SEARCH_PATH: &str = "\"$user\", public";

/// Which isolation model the fixture's tenant uses.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Model {
    /// Shared table, row-level security.
    Shared,
    /// A schema of its own (`search_path` per transaction), table still under RLS.
    Schema,
}

async fn backend_pid(tx: &mut tenancy_sqlx::TenantTx) -> i32 {
    use sqlx::Executor;
    let conn: &mut sqlx::PgConnection = tx;
    conn.fetch_one("SELECT pg_backend_pid()")
        .await
        .unwrap()
        .get(0)
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

const ALL: [Scenario; 6] = [
    Scenario::Commit,
    Scenario::Rollback,
    Scenario::SqlError,
    Scenario::Panic,
    Scenario::DroppedFuture,
    Scenario::KilledBackend,
];

/// Runs one scenario on `db`; returns the backend pid the transaction used.
async fn run_scenario(s: Scenario, db: &TenantDb, f: &Fixture) -> Option<i32> {
    let ctx = f.tenant.clone();
    let table = f.table.clone();
    match s {
        Scenario::Commit => {
            let mut tx = db.begin(&ctx).await.unwrap();
            let n: i64 = sqlx::raw_sql(&format!("SELECT count(*) FROM {table}"))
                .fetch_one(&mut *tx)
                .await
                .unwrap()
                .get(0);
            assert_eq!(n, 5, "inside the transaction the tenant's rows are visible");
            let pid = backend_pid(&mut tx).await;
            tx.commit().await.unwrap();
            Some(pid)
        }
        Scenario::Rollback => {
            let mut tx = db.begin(&ctx).await.unwrap();
            sqlx::raw_sql(&format!(
                "INSERT INTO {table} (tenant_id, value) VALUES ('{}', 99)",
                ctx.tenant_id()
            ))
            .execute(&mut *tx)
            .await
            .unwrap();
            let pid = backend_pid(&mut tx).await;
            tx.rollback().await.unwrap();
            Some(pid)
        }
        Scenario::SqlError => {
            let mut tx = db.begin(&ctx).await.unwrap();
            let pid = backend_pid(&mut tx).await;
            let err = sqlx::raw_sql("SELECT * FROM no_such_table_here")
                .execute(&mut *tx)
                .await;
            assert!(err.is_err());
            drop(tx);
            Some(pid)
        }
        Scenario::Panic => {
            let db = db.clone();
            let handle = tokio::spawn(async move {
                let mut tx = db.begin(&ctx).await.unwrap();
                let _pid = backend_pid(&mut tx).await;
                panic!("handler bug while holding a tenant transaction");
            });
            assert!(handle.await.unwrap_err().is_panic());
            None
        }
        Scenario::DroppedFuture => {
            let work = async {
                let mut tx = db.begin(&ctx).await.unwrap();
                sqlx::raw_sql("SELECT pg_sleep(1)")
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                tx.commit().await.unwrap();
            };
            assert!(
                tokio::time::timeout(Duration::from_millis(150), work)
                    .await
                    .is_err(),
                "the future must be cancelled mid-query"
            );
            None
        }
        Scenario::KilledBackend => {
            let mut tx = db.begin(&ctx).await.unwrap();
            let pid = backend_pid(&mut tx).await;
            let admin = f.env.admin_pool(1).await.unwrap();
            let killed: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
                .bind(pid)
                .fetch_one(&admin)
                .await
                .unwrap();
            assert!(killed);
            tokio::time::sleep(Duration::from_millis(50)).await;
            let after = sqlx::raw_sql("SELECT 1").execute(&mut *tx).await;
            assert!(after.is_err(), "the killed backend cannot answer");
            drop(tx);
            None
        }
    }
}

async fn matrix(url: &str, same_backend_expected: bool) {
    matrix_for(url, same_backend_expected, Model::Shared).await;
}

async fn matrix_for(url: &str, same_backend_expected: bool, model: Model) {
    // `same_backend_expected`: the next user must land on the very backend the
    // scenario used (proves the connection really was shared).
    let f = fixture_for(model).await;
    for s in ALL {
        // One connection: the next user gets the very same client connection.
        let pool = TenantDb::pool_options()
            .max_connections(1)
            .connect(url)
            .await
            .unwrap();
        let db = TenantDb::new(pool.clone(), f.env.seal_key().await.unwrap());
        let pid = run_scenario(s, &db, &f).await;
        let (setting, rows, next_pid, search_path) = next_user(&pool, &f.table).await;
        assert_eq!(
            setting, "",
            "{s:?}: tenant setting survived on the pooled connection"
        );
        assert_eq!(
            search_path, DEFAULT_SEARCH_PATH,
            "{model:?} {s:?}: search_path survived on the pooled connection"
        );
        assert_eq!(rows, 0, "{s:?}: next user without a tenant saw rows");
        if same_backend_expected && let Some(pid) = pid {
            assert_eq!(
                pid, next_pid,
                "{s:?}: the connection should have been reused"
            );
        }
        // And the tenant still works on this pool afterwards.
        let mut tx = db.begin(&f.tenant).await.unwrap();
        let n: i64 = sqlx::raw_sql(&format!("SELECT count(*) FROM {}", f.table))
            .fetch_one(&mut *tx)
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 5, "{s:?}: tenant data intact");
        tx.commit().await.unwrap();
        pool.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_leak_matrix_direct() {
    let env = TestDb::from_env().unwrap();
    matrix(&env.app_url, true).await;
}

/// pgbouncer has a single server connection for the whole suite, and the
/// matrix kills it in one scenario: the two pgbouncer matrices take turns,
/// or one's kill shows up in the other's "same backend" check.
static PGBOUNCER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_leak_matrix_through_pgbouncer_transaction_mode() {
    let _turn = PGBOUNCER.lock().await;
    let env = TestDb::from_env().unwrap();
    // pgbouncer 1.18 cannot keep named prepared statements across
    // transactions: disable sqlx's statement cache (unnamed statements).
    // scripts/test gives pgbouncer a single server connection, so the next
    // client lands on the same PostgreSQL backend.
    let url = format!("{}?statement-cache-capacity=0", env.pgbouncer_app_url);
    matrix(&url, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_leak_matrix_schema_per_tenant_direct() {
    let env = TestDb::from_env().unwrap();
    matrix_for(&env.app_url, true, Model::Schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_leak_matrix_schema_per_tenant_through_pgbouncer() {
    let _turn = PGBOUNCER.lock().await;
    let env = TestDb::from_env().unwrap();
    let url = format!("{}?statement-cache-capacity=0", env.pgbouncer_app_url);
    matrix_for(&url, true, Model::Schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_level_setting_is_caught_by_pool_hygiene() {
    let f = fixture().await;
    let pool = TenantDb::pool_options()
        .max_connections(1)
        .connect(&f.env.app_url)
        .await
        .unwrap();
    // Misbehaving application code sets the tenant at session level.
    let pid: i32 = {
        let mut conn = pool.acquire().await.unwrap();
        sqlx::raw_sql(&format!(
            "SELECT set_config('app.tenant_id', '{}', false)",
            f.tenant.tenant_id()
        ))
        .execute(&mut *conn)
        .await
        .unwrap();
        sqlx::raw_sql("SELECT pg_backend_pid()")
            .fetch_one(&mut *conn)
            .await
            .unwrap()
            .get(0)
    };
    // The release check closes that connection; the next user gets a clean one.
    let (setting, rows, next_pid, _) = next_user(&pool, &f.table).await;
    assert_eq!((setting.as_str(), rows), ("", 0));
    assert_ne!(pid, next_pid, "the polluted connection must not be reused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_hygiene_the_setting_survives_but_the_seal_does_not() {
    // Negative control for the hygiene test above: with the checks off the
    // polluted connection is reused and the setting survives — yet it opens
    // nothing, because the policies trust only a sealed transaction: the next
    // user's read is refused instead of showing the tenant's rows.
    let f = fixture().await;
    let pool = TenantDb::pool_options_with(tenancy_sqlx::PoolHygiene::Off)
        .max_connections(1)
        .connect(&f.env.app_url)
        .await
        .unwrap();
    sqlx::raw_sql(&format!(
        "SELECT set_config('app.tenant_id', '{}', false)",
        f.tenant.tenant_id()
    ))
    .execute(&pool)
    .await
    .unwrap();
    let setting: String =
        sqlx::query_scalar("SELECT coalesce(current_setting('app.tenant_id', true), '')")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(setting, f.tenant.tenant_id().to_string());
    let read = sqlx::query_scalar::<_, i64>(&format!("SELECT count(*) FROM {}", f.table))
        .fetch_one(&pool)
        .await;
    match read {
        // A session that never sealed: the claim is an error (55000).
        Err(sqlx::Error::Database(e)) => assert_eq!(e.code().as_deref(), Some("55000")),
        Ok(n) => assert_eq!(n, 0, "an unsealed claim must not show the tenant's rows"),
        Err(e) => panic!("unexpected error {e}"),
    }
}

/// A session-level `search_path` set inside a tenant transaction (a plain
/// `SET`, not `SET LOCAL`) outlives it; with hygiene the connection is
/// closed on release, without it the next user inherits the schema.
async fn session_search_path(hygiene: tenancy_sqlx::PoolHygiene) -> (i32, i32, String) {
    let f = fixture().await;
    let pool = TenantDb::pool_options_with(hygiene)
        .max_connections(1)
        .connect(&f.env.app_url)
        .await
        .unwrap();
    let db = TenantDb::new(pool.clone(), f.env.seal_key().await.unwrap());
    let mut tx = db.begin(&f.tenant).await.unwrap();
    let pid = backend_pid(&mut tx).await;
    sqlx::raw_sql("SET search_path TO pg_catalog")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let (_, _, next_pid, search_path) = next_user(&pool, &f.table).await;
    (pid, next_pid, search_path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_level_search_path_is_caught_by_pool_hygiene() {
    let (pid, next_pid, search_path) = session_search_path(tenancy_sqlx::PoolHygiene::Verify).await;
    assert_ne!(
        pid, next_pid,
        "the connection with a changed search_path must not be reused"
    );
    assert_eq!(search_path, DEFAULT_SEARCH_PATH);
    // Negative control: without the checks the next user inherits it.
    let (pid, next_pid, search_path) = session_search_path(tenancy_sqlx::PoolHygiene::Off).await;
    assert_eq!(pid, next_pid);
    assert_eq!(search_path, "pg_catalog");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_options_carrying_a_tenant_are_refused() {
    let f = fixture().await;
    let connect = |options: String| {
        let url = format!("{}?options={options}", f.env.app_url);
        async move {
            TenantDb::pool_options()
                .max_connections(1)
                .acquire_timeout(Duration::from_secs(2))
                .connect(&url)
                .await
        }
    };
    // Control: other session options are fine.
    let ok = connect("-c%20application_name%3Dtenancy".into()).await;
    assert!(ok.is_ok(), "{ok:?}");
    // A tenant baked into the connection options: every connection is refused
    // by the after_connect check, so the pool never hands one out.
    let err = connect(format!("-c%20app.tenant_id%3D{}", f.tenant.tenant_id()))
        .await
        .unwrap_err();
    assert!(matches!(err, sqlx::Error::PoolTimedOut), "{err}");
}

// ------------------------------------------------------------ session state

/// Session state SQL inside a tenant transaction can leave on a pooled
/// connection, beyond the tenant setting and `search_path`.
#[derive(Debug, Clone, Copy)]
enum Residue {
    /// `CREATE TEMP TABLE items AS …`: `pg_temp` is searched first and has
    /// no row-level security, so the next tenant's unqualified `items`
    /// reads the copy.
    TempTable,
    /// `pg_advisory_lock(…)` at session level: held for the next user.
    AdvisoryLock,
    /// `LISTEN …`: the next user receives this tenant's notifications.
    Listen,
    /// `SET myapp.secret = …` at session level: the next user reads it.
    CustomSetting,
}

const RESIDUES: [Residue; 4] = [
    Residue::TempTable,
    Residue::AdvisoryLock,
    Residue::Listen,
    Residue::CustomSetting,
];

/// The tenant tables of the `tenancy_loose` database (where the application
/// role keeps TEMPORARY, so a temporary table can be made at all): `items`
/// in `public`, three rows of `a`, two of `b`.
async fn loose_fixture() -> (
    TestDb,
    tenancy_core::rls::SealKey,
    TenantContext,
    TenantContext,
) {
    let env = TestDb::from_env().unwrap().loose();
    let seal = env.seal_key().await.unwrap();
    let owner = env.owner_pool(1).await.unwrap();
    sqlx::raw_sql(
        "SELECT pg_advisory_lock(hashtext('tenancy.migrate')); \
         CREATE TABLE IF NOT EXISTS public.items (tenant_id uuid NOT NULL, \
           id uuid NOT NULL DEFAULT gen_random_uuid(), PRIMARY KEY (tenant_id, id)); \
         SELECT pg_advisory_unlock(hashtext('tenancy.migrate'))",
    )
    .execute(&owner)
    .await
    .unwrap();
    let mut conn = owner.acquire().await.unwrap();
    sqlx::raw_sql("SELECT pg_advisory_lock(hashtext('tenancy.migrate'))")
        .execute(&mut *conn)
        .await
        .unwrap();
    TenantTable::new("items")
        .schema("public")
        .grant_to("tenancy_app")
        .apply(&mut conn)
        .await
        .unwrap();
    sqlx::raw_sql("SELECT pg_advisory_unlock(hashtext('tenancy.migrate'))")
        .execute(&mut *conn)
        .await
        .unwrap();
    let db = TenantDb::connect(&env.app_url, seal.clone()).await.unwrap();
    let (a, b) = (tenant("residue-a"), tenant("residue-b"));
    for (ctx, n) in [(&a, 3), (&b, 2)] {
        let mut tx = db.begin(ctx).await.unwrap();
        for _ in 0..n {
            sqlx::query("INSERT INTO items (tenant_id) VALUES ($1)")
                .bind(ctx.tenant_id().as_uuid())
                .execute(&mut *tx)
                .await
                .unwrap();
        }
        tx.commit().await.unwrap();
    }
    (env, seal, a, b)
}

/// Tenant `a` leaves `residue` on the only pooled connection; returns
/// whether tenant `b`, the next user of that pool, finds it.
async fn residue_reaches_next_user(
    url: &str,
    hygiene: tenancy_sqlx::PoolHygiene,
    residue: Residue,
) -> bool {
    let (env, seal, a, b) = loose_fixture().await;
    let pool = TenantDb::pool_options_with(hygiene)
        .max_connections(1)
        .connect(url)
        .await
        .unwrap();
    let db = TenantDb::new(pool.clone(), seal);
    // A lock key and channel of this run only.
    let key = i64::from(rand_key(&a));
    let channel = format!("tenant_{}", a.tenant_id().as_uuid().simple());
    let mut tx = db.begin(&a).await.unwrap();
    let pollute = match residue {
        Residue::TempTable => "CREATE TEMP TABLE items AS SELECT * FROM public.items".to_owned(),
        Residue::AdvisoryLock => format!("SELECT pg_advisory_lock({key})"),
        Residue::Listen => format!("LISTEN {channel}"),
        Residue::CustomSetting => "SET myapp.secret = 'residue-of-a'".to_owned(),
    };
    sqlx::raw_sql(&pollute).execute(&mut *tx).await.unwrap();
    tx.commit().await.unwrap();

    // Simple-protocol reads only: behind pgbouncer, prepared statements of
    // successive client connections would meet on the one server connection.
    let mut tx = db.begin(&b).await.unwrap();
    let found = match residue {
        Residue::TempTable => {
            let foreign: i64 = sqlx::raw_sql(&format!(
                "SELECT count(*) FROM items WHERE tenant_id = '{}'",
                a.tenant_id()
            ))
            .fetch_one(&mut *tx)
            .await
            .unwrap()
            .get(0);
            foreign > 0
        }
        Residue::AdvisoryLock => {
            // Held by anyone? (asked from another session)
            let admin = env.admin_pool(1).await.unwrap();
            let held: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' \
                 AND ((classid::bigint << 32) | objid::bigint) = $1",
            )
            .bind(key)
            .fetch_one(&admin)
            .await
            .unwrap();
            held > 0
        }
        Residue::Listen => {
            let listening: Vec<String> = sqlx::raw_sql("SELECT pg_listening_channels()::text")
                .fetch_all(&mut *tx)
                .await
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect();
            listening.contains(&channel)
        }
        Residue::CustomSetting => {
            let seen: String =
                sqlx::raw_sql("SELECT coalesce(current_setting('myapp.secret', true), '')")
                    .fetch_one(&mut *tx)
                    .await
                    .unwrap()
                    .get(0);
            seen == "residue-of-a"
        }
    };
    tx.rollback().await.unwrap();
    // Leave nothing behind for other tests on the shared pgbouncer server connection.
    sqlx::raw_sql(&format!(
        "DISCARD TEMP; UNLISTEN *; SELECT pg_advisory_unlock_all(); RESET ALL; SELECT {key}"
    ))
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
    found
}

/// A positive 31-bit key from the tenant id (advisory lock keys of this run).
fn rand_key(ctx: &TenantContext) -> i32 {
    let b = ctx.tenant_id().as_uuid().as_bytes()[..4].to_owned();
    i32::from_be_bytes([b[0] & 0x7f, b[1], b[2], b[3]])
}

async fn residues_both_ways(url: &str) {
    for residue in RESIDUES {
        assert!(
            !residue_reaches_next_user(url, tenancy_sqlx::PoolHygiene::Verify, residue).await,
            "{residue:?} reached the next user despite pool hygiene"
        );
        assert!(
            residue_reaches_next_user(url, tenancy_sqlx::PoolHygiene::Off, residue).await,
            "{residue:?}: without hygiene it must reach the next user, or this test proves nothing"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_residue_never_reaches_the_next_user_directly() {
    let env = TestDb::from_env().unwrap().loose();
    residues_both_ways(&env.app_url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_residue_never_reaches_the_next_user_through_pgbouncer() {
    let env = TestDb::from_env().unwrap().loose();
    residues_both_ways(&env.pgbouncer_app_url).await;
}
