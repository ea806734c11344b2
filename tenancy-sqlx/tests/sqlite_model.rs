//! Database-per-tenant on SQLite (one file per tenant, WAL) through
//! `SqliteTenantDb::begin`: the shared isolation suite, the pool-leak matrix,
//! each wall alone (file, stamp, triggers, write guard), the pool cache's
//! bounds, and tenant migrations kept inside each file.
#![cfg(feature = "sqlite")]
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::FutureExt;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection, Row as _, SqliteConnection};
use tenancy_core::{Placement, Tenant, TenantContext, TenantId, TenantScoped};
use tenancy_sqlx::DbError;
use tenancy_sqlx::sqlite::{SqliteTenantDb, guard_table_sql};
use tenancy_sqlx::tenant_migrate::{Progress, TenantMigration, TenantMigrator};
use tenancy_testkit::isolation::{self, Row, TABLES, Target};
use uuid::Uuid;

/// The suite's tables, SQLite flavour, each with the tenant triggers.
fn suite_migrator() -> TenantMigrator {
    let mut sql = String::new();
    for t in TABLES {
        sql.push_str(&format!(
            "CREATE TABLE {t} (tenant_id TEXT NOT NULL, id TEXT NOT NULL, value INTEGER NOT NULL, \
             PRIMARY KEY (tenant_id, id));\n{}\n",
            guard_table_sql(t)
        ));
    }
    TenantMigrator::new(vec![TenantMigration::new(1, "suite tables", &sql)]).unwrap()
}

fn file_tenant(slug: &str) -> TenantContext {
    let id = TenantId::new_v4();
    TenantContext::new(
        Tenant::new(id, slug.parse().unwrap(), slug)
            .with_placement(Placement::database(&Placement::name_for(id)).unwrap()),
    )
}

async fn provisioned(db: &SqliteTenantDb, n: usize, prefix: &str) -> Vec<TenantContext> {
    provisioned_with(db, n, prefix, &suite_migrator()).await
}

async fn provisioned_with(
    db: &SqliteTenantDb,
    n: usize,
    prefix: &str,
    migrator: &TenantMigrator,
) -> Vec<TenantContext> {
    let mut out = Vec::new();
    for i in 0..n {
        let ctx = file_tenant(&format!("{prefix}-{i}"));
        assert_eq!(db.provision(ctx.tenant(), migrator).await.unwrap(), 1);
        out.push(ctx);
    }
    out
}

/// A raw connection to a tenant file, around the library (the oracle).
async fn raw(path: &Path) -> SqliteConnection {
    SqliteConnectOptions::new()
        .filename(path)
        .connect()
        .await
        .unwrap()
}

struct SqliteTarget {
    db: SqliteTenantDb,
    tenants: Vec<TenantContext>,
}

fn row_of(r: &sqlx::sqlite::SqliteRow) -> Row {
    Row {
        tenant_id: Uuid::from_str(&r.get::<String, _>(0)).unwrap(),
        id: Uuid::from_str(&r.get::<String, _>(1)).unwrap(),
        value: r.get(2),
    }
}

#[async_trait]
impl Target for SqliteTarget {
    // Raw queries, no write guard: the file and the triggers alone.
    async fn insert(&self, ctx: &TenantContext, table: usize, row: Row) -> Result<(), String> {
        let mut tx = self.db.begin(ctx).await.map_err(|e| e.to_string())?;
        sqlx::query(&format!(
            "INSERT INTO {} (tenant_id, id, value) VALUES (?, ?, ?)",
            TABLES[table]
        ))
        .bind(row.tenant_id.to_string())
        .bind(row.id.to_string())
        .bind(row.value)
        .execute(&mut *tx)
        .await
        .map_err(|e| e.to_string())?;
        tx.commit().await.map_err(|e| e.to_string())
    }

    async fn select_all(&self, ctx: &TenantContext, table: usize) -> Result<Vec<Row>, String> {
        let mut tx = self.db.begin(ctx).await.map_err(|e| e.to_string())?;
        let rows = sqlx::query(&format!(
            "SELECT tenant_id, id, value FROM {}",
            TABLES[table]
        ))
        .fetch_all(&mut *tx)
        .await
        .map_err(|e| e.to_string())?;
        tx.commit().await.map_err(|e| e.to_string())?;
        Ok(rows.iter().map(row_of).collect())
    }

    async fn select_one(
        &self,
        ctx: &TenantContext,
        table: usize,
        id: Uuid,
    ) -> Result<Option<Row>, String> {
        let mut tx = self.db.begin(ctx).await.map_err(|e| e.to_string())?;
        let row = sqlx::query(&format!(
            "SELECT tenant_id, id, value FROM {} WHERE id = ?",
            TABLES[table]
        ))
        .bind(id.to_string())
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| e.to_string())?;
        tx.commit().await.map_err(|e| e.to_string())?;
        Ok(row.as_ref().map(row_of))
    }

    async fn update(
        &self,
        ctx: &TenantContext,
        table: usize,
        id: Uuid,
        value: i64,
    ) -> Result<u64, String> {
        let mut tx = self.db.begin(ctx).await.map_err(|e| e.to_string())?;
        let done = sqlx::query(&format!(
            "UPDATE {} SET value = ? WHERE id = ?",
            TABLES[table]
        ))
        .bind(value)
        .bind(id.to_string())
        .execute(&mut *tx)
        .await
        .map_err(|e| e.to_string())?;
        tx.commit().await.map_err(|e| e.to_string())?;
        Ok(done.rows_affected())
    }

    async fn delete(&self, ctx: &TenantContext, table: usize, id: Uuid) -> Result<u64, String> {
        let mut tx = self.db.begin(ctx).await.map_err(|e| e.to_string())?;
        let done = sqlx::query(&format!("DELETE FROM {} WHERE id = ?", TABLES[table]))
            .bind(id.to_string())
            .execute(&mut *tx)
            .await
            .map_err(|e| e.to_string())?;
        tx.commit().await.map_err(|e| e.to_string())?;
        Ok(done.rows_affected())
    }

    async fn oracle(&self, table: usize) -> Result<Vec<Row>, String> {
        let mut out = Vec::new();
        for t in &self.tenants {
            let mut conn = raw(&self.db.path_of(t.tenant()).unwrap()).await;
            let rows = sqlx::query(&format!(
                "SELECT tenant_id, id, value FROM {}",
                TABLES[table]
            ))
            .fetch_all(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
            out.extend(rows.iter().map(row_of));
        }
        Ok(out)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn isolation_suite_sqlite_file_per_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let db = SqliteTenantDb::new(dir.path())
        .max_pools(8)
        .connection_budget(16);
    let tenants = provisioned(&db, 8, "iso").await;
    let target = Arc::new(SqliteTarget {
        db,
        tenants: tenants.clone(),
    });
    let mut config = isolation::Config::from_env();
    config.ops = config.ops.min(20_000);
    let report = isolation::run(target, &tenants, &config).await;
    report.assert_clean(&config, "sqlite-file");
}

/// Broken twin: the same files without the tenant triggers — a row stamped
/// for another tenant is accepted into the attacker's file, and the suite
/// must say so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolation_suite_detects_files_without_triggers() {
    let dir = tempfile::tempdir().unwrap();
    let db = SqliteTenantDb::new(dir.path())
        .max_pools(4)
        .connection_budget(8);
    let mut sql = String::new();
    for t in TABLES {
        sql.push_str(&format!(
            "CREATE TABLE {t} (tenant_id TEXT NOT NULL, id TEXT NOT NULL, value INTEGER NOT NULL, \
             PRIMARY KEY (tenant_id, id));\n"
        ));
    }
    let bare = TenantMigrator::new(vec![TenantMigration::new(1, "no triggers", &sql)]).unwrap();
    let tenants = provisioned_with(&db, 3, "twin", &bare).await;
    let target = Arc::new(SqliteTarget {
        db,
        tenants: tenants.clone(),
    });
    let config = isolation::Config { ops: 2000, seed: 9 };
    let report = isolation::run(target, &tenants, &config).await;
    report.assert_detects("sqlite-no-triggers", &["insert-foreign"]);
}

/// What the next user of a tenant's pool finds: the tenant's own file
/// (path and stamp), WAL mode, no transaction left open, and the committed
/// rows only.
async fn next_user_sees(db: &SqliteTenantDb, ctx: &TenantContext, expected_ids: &[&str]) {
    let path = db.path_of(ctx.tenant()).unwrap();
    // The pool has 1 connection: this is the one the failed user returned.
    let mut tx = db.begin_immediate(ctx).await.unwrap();
    let file: String = sqlx::query("PRAGMA database_list")
        .fetch_one(&mut *tx)
        .await
        .unwrap()
        .get(2);
    assert_eq!(Path::new(&file), path.canonicalize().unwrap());
    let stamp: String = sqlx::query_scalar("SELECT id FROM tenancy_tenant")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(stamp, ctx.tenant_id().to_string());
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(mode, "wal");
    let mut ids: Vec<String> = sqlx::query_scalar("SELECT id FROM customers ORDER BY id")
        .fetch_all(&mut *tx)
        .await
        .unwrap();
    ids.sort();
    let mut want: Vec<String> = expected_ids.iter().map(|s| (*s).to_owned()).collect();
    want.sort();
    assert_eq!(ids, want);
    tx.commit().await.unwrap();
}

async fn insert(tx: &mut tenancy_sqlx::sqlite::SqliteTenantTx, id: &str) {
    let tenant = tx.tenant_id().to_string();
    sqlx::query("INSERT INTO customers (tenant_id, id, value) VALUES (?, ?, 1)")
        .bind(tenant)
        .bind(id)
        .execute(&mut **tx)
        .await
        .unwrap();
}

#[tokio::test]
async fn pool_leak_matrix_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    // One connection per file, so every step reuses the same connection.
    let db = SqliteTenantDb::new(dir.path())
        .max_pools(4)
        .connection_budget(4);
    assert_eq!(db.per_pool(), 1);
    let ts = provisioned(&db, 2, "leak").await;
    let (a, b) = (&ts[0], &ts[1]);

    // commit
    let mut tx = db.begin(a).await.unwrap();
    insert(&mut tx, "committed").await;
    tx.commit().await.unwrap();
    next_user_sees(&db, a, &["committed"]).await;
    next_user_sees(&db, b, &[]).await;

    // rollback
    let mut tx = db.begin(a).await.unwrap();
    insert(&mut tx, "rolled-back").await;
    tx.rollback().await.unwrap();
    next_user_sees(&db, a, &["committed"]).await;

    // SQL error mid-transaction, then dropped
    let mut tx = db.begin(a).await.unwrap();
    insert(&mut tx, "before-error").await;
    assert!(
        sqlx::query("SELECT * FROM no_such_table")
            .execute(&mut *tx)
            .await
            .is_err()
    );
    drop(tx);
    next_user_sees(&db, a, &["committed"]).await;

    // panic while holding the transaction
    let db2 = db.clone();
    let a2 = a.clone();
    let panicked = tokio::spawn(async move {
        let mut tx = db2.begin(&a2).await.unwrap();
        insert(&mut tx, "panicked").await;
        panic!("handler panicked mid-transaction");
    })
    .await;
    assert!(panicked.is_err());
    next_user_sees(&db, a, &["committed"]).await;

    // dropped future (cancelled request) after a write
    let db3 = db.clone();
    let a3 = a.clone();
    let cancelled = async move {
        let mut tx = db3.begin(&a3).await.unwrap();
        insert(&mut tx, "cancelled").await;
        std::future::pending::<()>().await;
    };
    assert!(
        tokio::time::timeout(Duration::from_millis(50), cancelled)
            .await
            .is_err()
    );
    next_user_sees(&db, a, &["committed"]).await;
    next_user_sees(&db, b, &[]).await;
}

#[tokio::test]
async fn a_missing_file_is_refused_never_created() {
    let dir = tempfile::tempdir().unwrap();
    let db = SqliteTenantDb::new(dir.path());
    let ctx = file_tenant("ghost");
    let err = db.begin(&ctx).await.unwrap_err();
    assert!(
        matches!(&err, DbError::Placement { reason, .. } if reason.contains("provision")),
        "{err}"
    );
    assert!(!db.path_of(ctx.tenant()).unwrap().exists());
    // Not cached: once provisioned, the tenant is served.
    db.provision(ctx.tenant(), &suite_migrator()).await.unwrap();
    db.begin(&ctx).await.unwrap().commit().await.unwrap();
}

#[tokio::test]
async fn only_file_placements_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let db = SqliteTenantDb::new(dir.path());
    for placement in [Placement::Shared, Placement::schema("t_abc").unwrap()] {
        let ctx = TenantContext::new(
            Tenant::new(TenantId::new_v4(), "other".parse().unwrap(), "o")
                .with_placement(placement),
        );
        let err = db.begin(&ctx).await.unwrap_err();
        assert!(
            matches!(&err, DbError::Placement { reason, .. } if reason.contains("one file per tenant")),
            "{err}"
        );
    }
}

#[tokio::test]
async fn the_stamp_refuses_a_file_of_another_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let db = SqliteTenantDb::new(dir.path());
    let ts = provisioned(&db, 1, "stamp").await;
    let a = &ts[0];
    let mut tx = db.begin(a).await.unwrap();
    insert(&mut tx, "a-secret").await;
    tx.commit().await.unwrap();
    db.run_pending_tasks().await;

    // B's placement points at A's file (a copy-paste in the placement).
    let b_id = TenantId::new_v4();
    let b = TenantContext::new(
        Tenant::new(b_id, "intruder".parse().unwrap(), "b")
            .with_placement(a.tenant().placement.clone()),
    );
    let err = db.begin(&b).await.unwrap_err();
    assert!(matches!(err, DbError::Placement { .. }), "{err}");
    // Through a fresh handle too (no pool open for A yet): the stamp check.
    let fresh = SqliteTenantDb::new(dir.path());
    let err = fresh.begin(&b).await.unwrap_err();
    assert!(
        matches!(&err, DbError::Placement { reason, .. } if reason.contains("stamped for tenant")),
        "{err}"
    );
    // Provisioning B over A's file is refused too.
    assert!(matches!(
        fresh.provision(b.tenant(), &suite_migrator()).await,
        Err(DbError::Placement { .. })
    ));
    // A copy of A's file under B's own name is still A's file.
    let b2 = file_tenant("copy");
    std::fs::copy(
        db.path_of(a.tenant()).unwrap(),
        db.path_of(b2.tenant()).unwrap(),
    )
    .unwrap();
    assert!(matches!(
        fresh.begin(&b2).await.unwrap_err(),
        DbError::Placement { .. }
    ));
}

#[tokio::test]
async fn triggers_alone_refuse_rows_of_another_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let db = SqliteTenantDb::new(dir.path());
    let ts = provisioned(&db, 2, "trig").await;
    let (a, b) = (&ts[0], &ts[1]);
    let mut tx = db.begin(a).await.unwrap();
    // Raw SQL, no guard: an insert stamped with B's id.
    let err = sqlx::query("INSERT INTO customers (tenant_id, id, value) VALUES (?, 'x', 1)")
        .bind(b.tenant_id().to_string())
        .execute(&mut *tx)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not this file's tenant"), "{err}");
    // A uuid bound as a blob is not the text id either.
    assert!(
        sqlx::query("INSERT INTO customers (tenant_id, id, value) VALUES (?, 'y', 1)")
            .bind(a.tenant_id().as_uuid())
            .execute(&mut *tx)
            .await
            .is_err()
    );
    insert(&mut tx, "mine").await;
    // Re-stamping an existing row is refused.
    assert!(
        sqlx::query("UPDATE customers SET tenant_id = ? WHERE id = 'mine'")
            .bind(b.tenant_id().to_string())
            .execute(&mut *tx)
            .await
            .is_err()
    );
    tx.commit().await.unwrap();
    next_user_sees(&db, a, &["mine"]).await;
}

struct Customer {
    tenant: TenantId,
}

impl TenantScoped for Customer {
    fn tenant_id(&self) -> TenantId {
        self.tenant
    }
}

#[tokio::test]
async fn the_write_guard_refuses_before_any_sql() {
    let dir = tempfile::tempdir().unwrap();
    let db = SqliteTenantDb::new(dir.path());
    let ts = provisioned(&db, 2, "guard").await;
    let (a, b) = (&ts[0], &ts[1]);
    let mut tx = db.begin(a).await.unwrap();
    let foreign = Customer {
        tenant: b.tenant_id(),
    };
    let err = tx
        .write(
            &foreign,
            sqlx::query("INSERT INTO customers (tenant_id, id, value) VALUES (?, 'z', 1)")
                .bind(b.tenant_id().to_string()),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, DbError::Mismatch(_)), "{err}");
    let own = Customer {
        tenant: a.tenant_id(),
    };
    tx.write(
        &own,
        sqlx::query("INSERT INTO customers (tenant_id, id, value) VALUES (?, 'ok', 1)")
            .bind(a.tenant_id().to_string()),
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    next_user_sees(&db, a, &["ok"]).await;
}

fn wal_exists(db: &SqliteTenantDb, ctx: &TenantContext) -> bool {
    let mut wal = db.path_of(ctx.tenant()).unwrap().into_os_string();
    wal.push("-wal");
    Path::new(&wal).exists()
}

#[tokio::test]
async fn the_pool_cache_bounds_open_files_and_closes_what_it_evicts() {
    let dir = tempfile::tempdir().unwrap();
    let db = SqliteTenantDb::new(dir.path())
        .max_pools(2)
        .connection_budget(4);
    assert_eq!(db.per_pool(), 2);
    let ts = provisioned(&db, 6, "bound").await;
    for round in 0..3 {
        for (i, t) in ts.iter().enumerate() {
            let mut tx = db.begin(t).await.unwrap();
            insert(&mut tx, &format!("r{round}")).await;
            tx.commit().await.unwrap();
            db.run_pending_tasks().await;
            assert!(
                db.open_pools() <= 2,
                "round {round}: {} open",
                db.open_pools()
            );
            assert!(wal_exists(&db, t), "a file in use has its WAL");
            // SQLite removes a file's WAL when its last connection closes:
            // the files evicted from the cache have none.
            tokio::time::sleep(Duration::from_millis(20)).await;
            let open_files = ts.iter().filter(|t| wal_exists(&db, t)).count();
            assert!(
                open_files <= 2,
                "round {round} tenant {i}: {open_files} files open"
            );
        }
    }
    for t in &ts {
        let mut tx = db.begin(t).await.unwrap();
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM customers")
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        assert_eq!(n, 3, "every write survived the evictions");
        tx.commit().await.unwrap();
    }
}

#[tokio::test]
async fn an_idle_file_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let db = SqliteTenantDb::new(dir.path()).idle_timeout(Duration::from_millis(200));
    let ts = provisioned(&db, 1, "idle").await;
    let mut tx = db.begin(&ts[0]).await.unwrap();
    insert(&mut tx, "x").await;
    tx.commit().await.unwrap();
    assert!(wal_exists(&db, &ts[0]));
    tokio::time::sleep(Duration::from_millis(400)).await;
    db.run_pending_tasks().await;
    assert_eq!(db.open_pools(), 0);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        !wal_exists(&db, &ts[0]),
        "the idle pool's connections are closed"
    );
    next_user_sees(&db, &ts[0], &["x"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_of_one_file_queue_and_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = SqliteTenantDb::new(dir.path())
        .max_pools(1)
        .connection_budget(4);
    let ts = provisioned(&db, 1, "busy").await;
    let mut tx = db.begin(&ts[0]).await.unwrap();
    insert(&mut tx, "counter").await;
    tx.commit().await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (db, ctx) = (db.clone(), ts[0].clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..50 {
                // Read, then write: IMMEDIATE queues for the lock.
                let mut tx = db.begin_immediate(&ctx).await.unwrap();
                let v: i64 = sqlx::query_scalar("SELECT value FROM customers WHERE id = 'counter'")
                    .fetch_one(&mut *tx)
                    .await
                    .unwrap();
                sqlx::query("UPDATE customers SET value = ? WHERE id = 'counter'")
                    .bind(v + 1)
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                tx.commit().await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut tx = db.begin(&ts[0]).await.unwrap();
    let v: i64 = sqlx::query_scalar("SELECT value FROM customers WHERE id = 'counter'")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(v, 1 + 200);
}

fn step(version: i64, sql: &str) -> TenantMigration {
    TenantMigration::new(version, &format!("step {version}"), sql)
}

#[tokio::test]
async fn migrations_live_in_each_file_quarantine_one_and_resume() {
    let dir = tempfile::tempdir().unwrap();
    let db = SqliteTenantDb::new(dir.path());
    let base = "CREATE TABLE customers (tenant_id TEXT NOT NULL, id TEXT NOT NULL, value INTEGER NOT NULL, PRIMARY KEY (tenant_id, id))";
    let v1 = TenantMigrator::new(vec![step(1, base)]).unwrap();
    let ts = provisioned_with(&db, 5, "mig", &v1).await;
    let tenants: Vec<Tenant> = ts.iter().map(|c| c.tenant().clone()).collect();

    // Nothing to do for the files already at version 1.
    let report = db.migrate(&v1, &tenants, |_| {}).await.unwrap();
    assert_eq!(report.up_to_date, 5);

    // Tenant 3 already has a column the next step adds: it fails there.
    let mut conn = raw(&db.path_of(&tenants[3]).unwrap()).await;
    sqlx::query("ALTER TABLE customers ADD COLUMN note TEXT")
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    let v2 = TenantMigrator::new(vec![
        step(1, base),
        step(2, "ALTER TABLE customers ADD COLUMN note TEXT"),
    ])
    .unwrap()
    .canary(1)
    .concurrency(2);
    let seen = std::sync::Mutex::new(Vec::new());
    let report = db
        .migrate(&v2, &tenants, |p| seen.lock().unwrap().push(p.clone()))
        .await
        .unwrap();
    assert!(report.canary_failure.is_none());
    assert_eq!(report.migrated.len(), 4);
    assert_eq!(report.quarantined.len(), 1);
    assert_eq!(report.quarantined[0].0, tenants[3].id);
    assert_eq!(seen.lock().unwrap().len(), 5);
    let (version, error) = db.quarantined(&tenants[3]).await.unwrap().unwrap();
    assert_eq!(version, 2);
    assert!(error.contains("duplicate column"), "{error}");
    // The failed tenant's file stayed at version 1, whole.
    let mut conn = raw(&db.path_of(&tenants[3]).unwrap()).await;
    let versions: Vec<i64> = sqlx::query_scalar("SELECT version FROM tenancy_migrations")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    assert_eq!(versions, [1]);
    // Fix it by hand, re-run: only tenant 3 is migrated, its record cleared.
    sqlx::query("ALTER TABLE customers DROP COLUMN note")
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    let report = db.migrate(&v2, &tenants, |_| {}).await.unwrap();
    assert_eq!(report.migrated, [tenants[3].id]);
    assert_eq!(report.up_to_date, 4);
    assert!(db.quarantined(&tenants[3]).await.unwrap().is_none());
}

#[tokio::test]
async fn a_failing_canary_stops_the_rollout_and_a_crash_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let db = SqliteTenantDb::new(dir.path());
    let v1 = "CREATE TABLE customers (tenant_id TEXT NOT NULL, id TEXT NOT NULL, value INTEGER NOT NULL, PRIMARY KEY (tenant_id, id))";
    let first = TenantMigrator::new(vec![step(1, v1)]).unwrap();
    let ts = provisioned_with(&db, 4, "canary", &first).await;
    let tenants: Vec<Tenant> = ts.iter().map(|c| c.tenant().clone()).collect();
    let bad = TenantMigrator::new(vec![step(1, v1), step(2, "ALTER TABLE nope ADD COLUMN x")])
        .unwrap()
        .canary(1);
    let report = db.migrate(&bad, &tenants, |_| {}).await.unwrap();
    assert!(report.canary_failure.is_some());
    assert!(report.migrated.is_empty());

    // A "crash" mid-run: the rollout future dropped after some tenants.
    let good = TenantMigrator::new(vec![step(1, v1), step(2, "CREATE TABLE notes (id TEXT)")])
        .unwrap()
        .canary(0)
        .concurrency(1);
    let done = std::sync::atomic::AtomicUsize::new(0);
    let run = db.migrate(&good, &tenants, |p| {
        if matches!(p, Progress::Migrated { .. }) {
            done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    let mut run = Box::pin(run);
    // Poll until two tenants finished, then drop the future.
    loop {
        if let Some(r) = (&mut run).now_or_never() {
            r.unwrap();
            break;
        }
        tokio::task::yield_now().await;
        if done.load(std::sync::atomic::Ordering::SeqCst) >= 2 {
            break;
        }
    }
    drop(run);
    let report = db.migrate(&good, &tenants, |_| {}).await.unwrap();
    assert_eq!(report.migrated.len() + report.up_to_date, 4);
    assert!(
        report.up_to_date >= 2,
        "the finished tenants are not redone"
    );
    for t in &tenants {
        let mut conn = raw(&db.path_of(t).unwrap()).await;
        let versions: Vec<i64> =
            sqlx::query_scalar("SELECT version FROM tenancy_migrations ORDER BY version")
                .fetch_all(&mut conn)
                .await
                .unwrap();
        assert_eq!(versions, [1, 2]);
    }
}

#[tokio::test]
async fn the_audit_log_is_chained_append_only_and_per_tenant() {
    use tenancy_core::audit::{Action, AuditEvent};
    use tenancy_sqlx::AuditQuery;
    use tenancy_sqlx::sqlite::SqliteAuditLog;
    let dir = tempfile::tempdir().unwrap();
    let db = SqliteTenantDb::new(dir.path());
    let ts = provisioned(&db, 2, "audit").await;
    let (a, b) = (&ts[0], &ts[1]);
    let log = SqliteAuditLog::new([3u8; 32]);
    for i in 0..5 {
        let mut tx = db.begin_immediate(a).await.unwrap();
        insert(&mut tx, &format!("c{i}")).await;
        let seq = log
            .append(
                &mut tx,
                AuditEvent::user(a.tenant_id(), "u1", Action::CREATE, "customers")
                    .with_resource_id(format!("c{i}")),
            )
            .await
            .unwrap();
        assert_eq!(seq, i + 1);
        tx.commit().await.unwrap();
    }
    // An event rolled back with its change leaves no trace.
    let mut tx = db.begin_immediate(a).await.unwrap();
    log.append(
        &mut tx,
        AuditEvent::user(a.tenant_id(), "u1", Action::DELETE, "customers"),
    )
    .await
    .unwrap();
    tx.rollback().await.unwrap();
    // Another tenant's event is refused in this tenant's transaction.
    let mut tx = db.begin_immediate(a).await.unwrap();
    let err = log
        .append(
            &mut tx,
            AuditEvent::user(b.tenant_id(), "u1", Action::READ, "customers"),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, DbError::Mismatch(_)), "{err}");
    // Append-only: UPDATE and DELETE refused by the file itself.
    assert!(
        sqlx::query("UPDATE tenancy_audit_log SET action = 'x'")
            .execute(&mut *tx)
            .await
            .is_err()
    );
    assert!(
        sqlx::query("DELETE FROM tenancy_audit_log")
            .execute(&mut *tx)
            .await
            .is_err()
    );
    let report = log.verify_chain(&mut tx).await.unwrap();
    assert!(report.is_intact(), "{report:?}");
    assert_eq!(report.rows, 5);
    let page = log
        .query(&mut tx, &AuditQuery::new().limit(2))
        .await
        .unwrap();
    assert_eq!(page.events.iter().map(|e| e.0).collect::<Vec<_>>(), [5, 4]);
    let rest = log
        .query(&mut tx, &AuditQuery::new().before(page.next.unwrap()))
        .await
        .unwrap();
    assert_eq!(rest.events.len(), 3);
    tx.commit().await.unwrap();
    let mut tx = db.begin(b).await.unwrap();
    assert_eq!(
        log.verify_chain(&mut tx).await.unwrap().rows,
        0,
        "b's log is its own"
    );
    tx.commit().await.unwrap();

    // Someone with the file drops the trigger and edits a row: the chain breaks.
    let mut raw_conn = raw(&db.path_of(a.tenant()).unwrap()).await;
    sqlx::raw_sql(
        "DROP TRIGGER tenancy_audit_log_no_update; \
         UPDATE tenancy_audit_log SET event = replace(event, 'c2', 'c9') WHERE seq = 3",
    )
    .execute(&mut raw_conn)
    .await
    .unwrap();
    raw_conn.close().await.unwrap();
    let mut tx = db.begin(a).await.unwrap();
    let report = log.verify_chain(&mut tx).await.unwrap();
    assert!(!report.is_intact());
    tx.commit().await.unwrap();
}

#[tokio::test]
async fn the_health_probe_checks_the_tenants_own_file_on_disk() {
    use tenancy_core::health::{Status, TenantHealth};
    use tenancy_sqlx::sqlite::SqliteProbe;

    let dir = tempfile::tempdir().unwrap();
    let db = SqliteTenantDb::new(dir.path());
    let tenants = provisioned(&db, 3, "probe").await;
    let health = TenantHealth::new(Duration::from_secs(5)).probe(SqliteProbe::new(db.clone()));
    for ctx in &tenants {
        // The pool is open: a later change on disk must still be seen.
        db.begin(ctx).await.unwrap().rollback().await.unwrap();
        let r = health.check(ctx.tenant()).await;
        assert_eq!(r.status, Status::Healthy, "{r:?}");
    }
    // A file removed while its pool is open.
    let removed = tenants[0].tenant();
    std::fs::remove_file(db.path_of(removed).unwrap()).unwrap();
    let r = health.check(removed).await;
    assert_eq!(r.status, Status::Unhealthy, "{r:?}");
    assert!(r.probes[0].detail.contains("no tenant file"), "{r:?}");
    // A file swapped for another tenant's.
    let (victim, other) = (tenants[1].tenant(), tenants[2].tenant());
    std::fs::copy(db.path_of(other).unwrap(), db.path_of(victim).unwrap()).unwrap();
    let r = health.check(victim).await;
    assert_eq!(r.status, Status::Unhealthy, "{r:?}");
    assert!(r.probes[0].detail.contains("stamped for tenant"), "{r:?}");
    // The other tenant is unaffected (control).
    assert_eq!(health.check(other).await.status, Status::Healthy);
}
