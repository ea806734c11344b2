//! Database-per-tenant on SQLite: one file per tenant, in WAL mode — the
//! embedded default for small deployments (feature `sqlite`).
//!
//! [`SqliteTenantDb::begin`] is the same door as [`TenantDb::begin`](crate::TenantDb::begin):
//! it takes a [`TenantContext`] and returns a transaction that can only
//! reach that tenant's data. The tenant's [`Placement::Database`] names its
//! file, `<dir>/<name>.sqlite3`; every other placement is refused (SQLite has
//! no row-level security, so shared tables would have one wall only).
//!
//! Walls, each able to stop a leak alone:
//!
//! - **The file.** A transaction runs on a connection opened on the tenant's
//!   own file; another tenant's rows are not in it.
//! - **The stamp.** Provisioning writes the tenant id into the file
//!   (`tenancy_tenant`). Every new pooled connection checks it, and a pool
//!   serves only the tenant it was opened for: a placement pointing at
//!   another tenant's file (a copy-paste, a swapped file) is refused, not
//!   served.
//! - **Triggers.** Tenant tables keep their `tenant_id` column (so a tenant
//!   can move between backends unchanged) and [`guard_table_sql`] adds
//!   triggers refusing rows whose `tenant_id` is not the file's tenant —
//!   the write wall that row-level security is on PostgreSQL. On SQLite
//!   `tenant_id` holds the hyphenated text form of the id.
//!
//! Files are never created by `begin`: a tenant whose file is missing is
//! refused with [`DbError::Placement`] until [`SqliteTenantDb::provision`]
//! has run. Pools are cached like the PostgreSQL
//! [`DatabaseRouter`](crate::DatabaseRouter)'s: a maximum number of open
//! pools, idle eviction that closes them, and a connection budget.
//!
//! Each tenant file also holds the tenant's audit log ([`SqliteAuditLog`]:
//! append-only, hash-chained). The control database of a deployment
//! ([`SqliteControl`]) holds the tenant registry, memberships and wrapped
//! data keys ([`SqliteKeyStore`]).
//!
//! Tenant migrations ([`TenantMigrator`]) keep their state inside each file
//! (`tenancy_migrations`), one transaction per tenant; a failed tenant is
//! recorded in its own file (`tenancy_migration_quarantine`).
//!
//! ```no_run
//! use tenancy_core::TenantContext;
//! use tenancy_sqlx::sqlite::SqliteTenantDb;
//! use tenancy_sqlx::tenant_migrate::{TenantMigration, TenantMigrator};
//!
//! # async fn f(ctx: TenantContext) -> Result<(), tenancy_sqlx::DbError> {
//! let db = SqliteTenantDb::new("./data/tenants").max_pools(64);
//! let migrator = TenantMigrator::new(vec![TenantMigration::new(
//!     1,
//!     "customers",
//!     "CREATE TABLE customers (tenant_id TEXT NOT NULL, id TEXT PRIMARY KEY, name TEXT NOT NULL)",
//! )])?;
//! db.provision(ctx.tenant(), &migrator).await?; // creates the file, once
//!
//! let mut tx = db.begin(&ctx).await?;
//! let names: Vec<String> = sqlx::query_scalar("SELECT name FROM customers ORDER BY name")
//!     .fetch_all(&mut *tx)
//!     .await?;
//! tx.commit().await?;
//! # Ok(()) }
//! ```

mod audit_log;
mod control;
mod health;
pub mod outbox;
mod subject;
mod watch;

pub use audit_log::SqliteAuditLog;
#[cfg(feature = "calendar")]
pub use control::SqliteMonthlyUsage;
pub use control::{
    SqliteControl, SqliteInvitationStore, SqliteKeyStore, SqliteMembershipStore,
    SqliteSessionEpochs, SqliteTenantStore,
};
pub use health::SqliteProbe;
pub use outbox::{SqliteOutbox, SqliteTenantOutboxes};
pub use subject::SqliteSubjectKeyStore;
pub use watch::SqliteChangeWatcher;

use audit_log::AUDIT_TABLE;
use outbox::{OUTBOX_GUARDS, OUTBOX_TABLE};

use std::collections::HashMap;
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sqlx::query::Query;
use sqlx::sqlite::{
    SqliteArguments, SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePoolOptions,
    SqliteQueryResult, SqliteSynchronous,
};
use sqlx::{ConnectOptions, Connection, Executor, Sqlite, SqlitePool, Transaction};
use tenancy_core::rls::quote_ident;
use tenancy_core::{Placement, Tenant, TenantContext, TenantId, TenantScoped};
use tracing::Instrument;

use crate::DbError;
use crate::route::{OpenPool, PoolCache};
use crate::tenant_migrate::{Progress, RolloutReport, TenantMigrator, TenantSchemas};

/// The table, inside every tenant file, that names the file's tenant.
pub const STAMP_TABLE: &str = "tenancy_tenant";

/// The file extension of tenant files.
pub const EXTENSION: &str = "sqlite3";

/// SQL creating the triggers that refuse, in a tenant file, any row of
/// `table` whose `tenant_id` is not the file's tenant (on insert and on an
/// update of `tenant_id`). Run it in a tenant migration after creating the
/// table; it is idempotent.
///
/// ```
/// let sql = tenancy_sqlx::sqlite::guard_table_sql("customers");
/// assert!(sql.contains("BEFORE INSERT ON \"customers\""));
/// ```
pub fn guard_table_sql(table: &str) -> String {
    let t = quote_ident(table);
    let check = format!(
        "WHEN NEW.tenant_id IS NOT (SELECT id FROM {STAMP_TABLE}) BEGIN SELECT RAISE(ABORT, \
         'tenancy: row refused: tenant_id is not this file''s tenant (use the hyphenated id of \
         the transaction''s tenant)'); END"
    );
    let name = |op: &str| quote_ident(&format!("tenancy_guard_{table}_{op}"));
    format!(
        "CREATE TRIGGER IF NOT EXISTS {} BEFORE INSERT ON {t} FOR EACH ROW {check};\n\
         CREATE TRIGGER IF NOT EXISTS {} BEFORE UPDATE OF tenant_id ON {t} FOR EACH ROW {check};",
        name("insert"),
        name("update"),
    )
}

/// One SQLite file per tenant: opens tenant-scoped transactions, provisions
/// and migrates tenant files. See the [module docs](self).
#[derive(Clone)]
pub struct SqliteTenantDb {
    dir: PathBuf,
    busy_timeout: Duration,
    pools: PoolCache<Sqlite>,
}

impl std::fmt::Debug for SqliteTenantDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteTenantDb")
            .field("dir", &self.dir)
            .field("max_pools", &self.pools.max_pools)
            .field("connections_per_pool", &self.pools.per_pool())
            .field("open_pools", &self.pools.open())
            .finish_non_exhaustive()
    }
}

impl SqliteTenantDb {
    /// Tenant files live in `dir` (created by [`SqliteTenantDb::provision`]
    /// when missing). Defaults: 100 open pools, a budget of 200 connections
    /// (2 per file), idle eviction after 10 minutes, a 5 s busy timeout.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            busy_timeout: Duration::from_secs(5),
            pools: PoolCache::new(),
        }
    }

    /// The most tenant files kept open at once (least recently used closed first).
    pub fn max_pools(mut self, n: u64) -> Self {
        self.pools = self.pools.with_max_pools(n);
        self
    }

    /// The most connections all open pools may hold together.
    pub fn connection_budget(mut self, n: u32) -> Self {
        self.pools = self.pools.with_budget(n);
        self
    }

    /// How long an unused tenant pool stays open.
    pub fn idle_timeout(mut self, d: Duration) -> Self {
        self.pools = self.pools.with_idle(d);
        self
    }

    /// How long a statement waits for another writer of the same file.
    pub fn busy_timeout(mut self, d: Duration) -> Self {
        self.busy_timeout = d;
        self.pools = self.pools.rebuilt();
        self
    }

    /// Connections each tenant pool may open: `budget / max_pools`, at least 1.
    pub fn per_pool(&self) -> u32 {
        self.pools.per_pool()
    }

    /// Tenant pools currently open (approximate until
    /// [`SqliteTenantDb::run_pending_tasks`]).
    pub fn open_pools(&self) -> u64 {
        self.pools.open()
    }

    /// Runs the cache's pending evictions now (closing evicted pools).
    pub async fn run_pending_tasks(&self) {
        self.pools.run_pending_tasks().await;
    }

    /// Closes `tenant`'s pool, if open, waiting for its connections to
    /// close (before the file is moved or removed). The next `begin` opens
    /// it again.
    pub async fn close(&self, tenant: &Tenant) {
        if let Ok(Some(name)) = tenant.placement.checked_name() {
            self.pools.close(name).await;
        }
    }

    /// The directory of tenant files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file of `tenant`, from its placement.
    pub fn path_of(&self, tenant: &Tenant) -> Result<PathBuf, DbError> {
        let refuse = |reason: String| DbError::Placement {
            tenant: tenant.id,
            reason,
        };
        match (&tenant.placement, tenant.placement.checked_name()) {
            (Placement::Database { .. }, Ok(Some(name))) => {
                Ok(self.dir.join(format!("{name}.{EXTENSION}")))
            }
            (_, Err(e)) => Err(refuse(e.to_string())),
            (other, _) => Err(refuse(format!(
                "placement model {:?} cannot be served by SqliteTenantDb, which keeps one file \
                 per tenant: place the tenant with Placement::database(..)",
                other.model()
            ))),
        }
    }

    /// Connection options for a tenant file: WAL, `synchronous = NORMAL`
    /// (durable at checkpoints, safe with WAL), foreign keys on, the busy
    /// timeout, and never creating a missing file.
    fn options(&self, path: &Path) -> SqliteConnectOptions {
        SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(false)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(self.busy_timeout)
    }

    /// The pool for `tenant`'s file, opened on first use.
    async fn pool(&self, tenant: &Tenant) -> Result<SqlitePool, DbError> {
        let id = tenant.id;
        // Hot path: an open pool, looked up by the placement name (no path
        // or options built).
        if let (Placement::Database { .. }, Ok(Some(name))) =
            (&tenant.placement, tenant.placement.checked_name())
            && let Some(open) = self.pools.get(name).await
        {
            return owned_by(open, id, name);
        }
        let path = self.path_of(tenant)?;
        let key = match tenant.placement.checked_name() {
            Ok(Some(name)) => name.to_owned(),
            _ => path.to_string_lossy().into_owned(),
        };
        let options = self.options(&path);
        let opened = self
            .pools
            .get_or_open(&key, Some(id), |per_pool| async move {
                // Checked once here with a plain connection (a pool would
                // retry a refused connection until its acquire timeout), then
                // again by every pooled connection (a file swapped later).
                self.open_checked(id, &path).await?.close().await?;
                SqlitePoolOptions::new()
                    .max_connections(per_pool)
                    .after_connect(move |conn, _meta| {
                        Box::pin(async move {
                            stamp_matches(conn, id)
                                .await?
                                .map_err(|e| sqlx::Error::Configuration(e.into()))
                        })
                    })
                    .connect_with(options)
                    .await
                    .map_err(|e| match e {
                        sqlx::Error::Configuration(reason) => DbError::Placement {
                            tenant: id,
                            reason: reason.to_string(),
                        },
                        other => DbError::Sqlx(other),
                    })
            })
            .await
            .map_err(|e| match Arc::try_unwrap(e) {
                Ok(e) => e,
                Err(shared) => DbError::Placement {
                    tenant: id,
                    reason: shared.to_string(),
                },
            })?;
        owned_by(opened, id, &key)
    }

    /// Opens a transaction on `ctx`'s tenant file (`BEGIN`, deferred: it
    /// takes the write lock at its first write). Use
    /// [`SqliteTenantDb::begin_immediate`] for transactions that read and
    /// then write, so they queue for the lock rather than fail with `busy`.
    pub async fn begin(&self, ctx: &TenantContext) -> Result<SqliteTenantTx, DbError> {
        self.begin_with(ctx, None).await
    }

    /// Opens a transaction holding the file's write lock from the start
    /// (`BEGIN IMMEDIATE`; waits up to the busy timeout for another writer).
    pub async fn begin_immediate(&self, ctx: &TenantContext) -> Result<SqliteTenantTx, DbError> {
        self.begin_with(ctx, Some("BEGIN IMMEDIATE")).await
    }

    async fn begin_with(
        &self,
        ctx: &TenantContext,
        statement: Option<&'static str>,
    ) -> Result<SqliteTenantTx, DbError> {
        let span =
            tracing::debug_span!("tenant_tx", tenant.id = %ctx.tenant_id(), backend = "sqlite");
        async {
            let pool = self.pool(ctx.tenant()).await?;
            // Plain `begin` for the default: sqlx checks a custom statement's
            // effect with one more trip to the connection's worker thread.
            let tx = match statement {
                None => pool.begin().await?,
                Some(s) => pool.begin_with(s).await?,
            };
            Ok(SqliteTenantTx {
                tx,
                ctx: ctx.clone(),
            })
        }
        .instrument(span)
        .await
    }

    /// Creates `tenant`'s file if missing (WAL, stamped with the tenant id)
    /// and brings it to `migrator`'s latest version; returns that version.
    /// Idempotent. A file stamped for another tenant is refused.
    pub async fn provision(
        &self,
        tenant: &Tenant,
        migrator: &TenantMigrator,
    ) -> Result<i64, DbError> {
        let path = self.path_of(tenant)?;
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| DbError::Placement {
                tenant: tenant.id,
                reason: format!("cannot create {}: {e}", parent.display()),
            })?;
        }
        let mut conn = self
            .options(&path)
            .create_if_missing(true)
            .connect()
            .await?;
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
        (&mut *tx)
            .execute(
                format!(
                    "CREATE TABLE IF NOT EXISTS {STAMP_TABLE} (id TEXT PRIMARY KEY NOT NULL, \
                     created_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP); {SYSTEM_TABLES}; {AUDIT_TABLE}; {OUTBOX_TABLE}; {OUTBOX_GUARDS}"
                )
                .as_str(),
            )
            .await?;
        let stamp: Option<String> = sqlx::query_scalar(&format!("SELECT id FROM {STAMP_TABLE}"))
            .fetch_optional(&mut *tx)
            .await?;
        match stamp {
            None => {
                sqlx::query(&format!("INSERT INTO {STAMP_TABLE} (id) VALUES (?)"))
                    .bind(tenant.id.to_string())
                    .execute(&mut *tx)
                    .await?;
            }
            Some(s) if s == tenant.id.to_string() => {}
            Some(other) => {
                return Err(DbError::Placement {
                    tenant: tenant.id,
                    reason: format!("{} belongs to tenant {other}", path.display()),
                });
            }
        }
        tx.commit().await?;
        conn.close().await?;
        let target = SqliteTarget {
            tenant: tenant.id,
            path,
        };
        Files { db: self.clone() }
            .migrate_one(migrator, &target)
            .await
            .map(|(_, to)| to)
    }

    /// Brings every tenant's file to `migrator`'s latest version: the no-op
    /// check, canary, concurrency and quarantine of
    /// [`TenantMigrator::run`], with the state inside each file. Tenants not
    /// placed in a file of their own are reported as quarantined.
    pub async fn migrate(
        &self,
        migrator: &TenantMigrator,
        tenants: &[Tenant],
        progress: impl Fn(&Progress) + Send + Sync,
    ) -> Result<RolloutReport, DbError> {
        let mut targets = Vec::with_capacity(tenants.len());
        let mut refused = Vec::new();
        for t in tenants {
            match self.path_of(t) {
                Ok(path) => targets.push(SqliteTarget { tenant: t.id, path }),
                Err(e) => refused.push((t.id, e.to_string())),
            }
        }
        let mut report = migrator
            .rollout(&Files { db: self.clone() }, &targets, progress)
            .await?;
        report.quarantined.extend(refused);
        Ok(report)
    }

    /// The quarantine record inside `tenant`'s file: the version that failed
    /// and why, if its last migration failed.
    pub async fn quarantined(&self, tenant: &Tenant) -> Result<Option<(i64, String)>, DbError> {
        let path = self.path_of(tenant)?;
        let mut conn = self.open_checked(tenant.id, &path).await?;
        let row = sqlx::query_as("SELECT version, error FROM tenancy_migration_quarantine")
            .fetch_optional(&mut conn)
            .await?;
        conn.close().await?;
        Ok(row)
    }

    /// A one-off connection to a tenant file whose stamp was checked.
    pub(crate) async fn open_checked(
        &self,
        tenant: TenantId,
        path: &Path,
    ) -> Result<SqliteConnection, DbError> {
        if !path.exists() {
            return Err(DbError::Placement {
                tenant,
                reason: format!(
                    "no tenant file at {}: provision the tenant first (SqliteTenantDb::provision)",
                    path.display()
                ),
            });
        }
        let mut conn = self.options(path).connect().await?;
        if let Err(reason) = stamp_matches(&mut conn, tenant).await? {
            return Err(DbError::Placement { tenant, reason });
        }
        Ok(conn)
    }
}

/// The cache is keyed by file: a file already open for another tenant is
/// not served to this one.
fn owned_by(open: OpenPool<Sqlite>, tenant: TenantId, name: &str) -> Result<SqlitePool, DbError> {
    if open.owner == Some(tenant) {
        return Ok(open.pool);
    }
    Err(DbError::Placement {
        tenant,
        reason: format!(
            "tenant file {name} is open for tenant {}; two tenants cannot share a file",
            open.owner.map_or_else(|| "?".to_owned(), |o| o.to_string())
        ),
    })
}

/// Tables the library keeps inside each tenant file.
const SYSTEM_TABLES: &str = "CREATE TABLE IF NOT EXISTS tenancy_migrations (\
     version INTEGER PRIMARY KEY, name TEXT NOT NULL, checksum TEXT NOT NULL, \
     applied_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP); \
     CREATE TABLE IF NOT EXISTS tenancy_migration_quarantine (\
     id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL, error TEXT NOT NULL, \
     at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP)";

/// `Ok(Ok(()))` when the file's stamp names `tenant`; `Ok(Err(reason))` when
/// it is missing or names another tenant.
async fn stamp_matches(
    conn: &mut SqliteConnection,
    tenant: TenantId,
) -> Result<Result<(), String>, sqlx::Error> {
    let stamp: Result<Option<String>, sqlx::Error> =
        sqlx::query_scalar(&format!("SELECT id FROM {STAMP_TABLE}"))
            .fetch_optional(&mut *conn)
            .await;
    let expected = tenant.to_string();
    Ok(match stamp {
        Ok(Some(s)) if s == expected => Ok(()),
        Ok(Some(other)) => Err(format!(
            "the file is stamped for tenant {other}, not {expected}; check the tenant's placement"
        )),
        // No stamp table or row: not a provisioned tenant file.
        Ok(None) | Err(sqlx::Error::Database(_)) => Err(format!(
            "the file has no tenant stamp ({STAMP_TABLE}); provision it with SqliteTenantDb::provision"
        )),
        Err(e) => return Err(e),
    })
}

/// A tenant file to migrate.
#[derive(Debug, Clone)]
pub(crate) struct SqliteTarget {
    tenant: TenantId,
    path: PathBuf,
}

/// Tenant migrations over tenant files.
#[derive(Clone)]
struct Files {
    db: SqliteTenantDb,
}

impl TenantSchemas for Files {
    type Target = SqliteTarget;

    fn tenant(t: &SqliteTarget) -> TenantId {
        t.tenant
    }

    async fn applied(
        &self,
        targets: &[SqliteTarget],
    ) -> Result<HashMap<TenantId, HashMap<i64, String>>, DbError> {
        // One short read per file; a file that cannot be read is left out
        // (the tenant is then "pending" and its migration reports why).
        let mut out = HashMap::new();
        for t in targets {
            let Ok(mut conn) = self.db.open_checked(t.tenant, &t.path).await else {
                continue;
            };
            let rows: Result<Vec<(i64, String)>, _> =
                sqlx::query_as("SELECT version, checksum FROM tenancy_migrations")
                    .fetch_all(&mut conn)
                    .await;
            conn.close().await?;
            if let Ok(rows) = rows {
                out.insert(t.tenant, rows.into_iter().collect());
            }
        }
        Ok(out)
    }

    async fn migrate_one(
        &self,
        migrator: &TenantMigrator,
        t: &SqliteTarget,
    ) -> Result<(i64, i64), DbError> {
        let mut conn = self.db.open_checked(t.tenant, &t.path).await?;
        // The write lock from the start: one migrator per file at a time,
        // and application writers wait (busy timeout) rather than interleave.
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
        (&mut *tx).execute(SYSTEM_TABLES).await?;
        (&mut *tx).execute(AUDIT_TABLE).await?;
        (&mut *tx).execute(OUTBOX_TABLE).await?;
        (&mut *tx).execute(OUTBOX_GUARDS).await?;
        let done: Vec<(i64, String)> =
            sqlx::query_as("SELECT version, checksum FROM tenancy_migrations")
                .fetch_all(&mut *tx)
                .await?;
        let applied: HashMap<i64, String> = done.into_iter().collect();
        let from = applied.keys().copied().max().unwrap_or(0);
        let mut to = from;
        for m in migrator.todo(&applied)? {
            (&mut *tx)
                .execute(m.sql.as_str())
                .await
                .map_err(|e| DbError::TenantMigration {
                    version: m.version,
                    reason: format!("({}) failed in {}: {e}", m.name, t.path.display()),
                })?;
            sqlx::query(
                "INSERT INTO tenancy_migrations (version, name, checksum) VALUES (?, ?, ?)",
            )
            .bind(m.version)
            .bind(&m.name)
            .bind(&m.checksum)
            .execute(&mut *tx)
            .await?;
            to = to.max(m.version);
        }
        tx.commit().await?;
        conn.close().await?;
        Ok((from, to))
    }

    async fn quarantine(&self, t: &SqliteTarget, version: i64, error: &str) -> Result<(), DbError> {
        // A file that cannot even be opened is reported, not recorded.
        let Ok(mut conn) = self.db.open_checked(t.tenant, &t.path).await else {
            return Ok(());
        };
        (&mut conn).execute(SYSTEM_TABLES).await?;
        sqlx::query(
            "INSERT INTO tenancy_migration_quarantine (id, version, error) VALUES (1, ?, ?) \
             ON CONFLICT (id) DO UPDATE SET version = excluded.version, error = excluded.error, \
             at = CURRENT_TIMESTAMP",
        )
        .bind(version)
        .bind(error)
        .execute(&mut conn)
        .await?;
        conn.close().await?;
        Ok(())
    }

    async fn clear_quarantine(&self, t: &SqliteTarget) -> Result<(), DbError> {
        let mut conn = self.db.open_checked(t.tenant, &t.path).await?;
        sqlx::query("DELETE FROM tenancy_migration_quarantine")
            .execute(&mut conn)
            .await?;
        conn.close().await?;
        Ok(())
    }
}

/// A transaction on one tenant's file.
///
/// Use it as a connection (`&mut *tx`) with ordinary sqlx queries. Commit
/// with [`SqliteTenantTx::commit`]; dropping it rolls back.
pub struct SqliteTenantTx {
    tx: Transaction<'static, Sqlite>,
    ctx: TenantContext,
}

impl std::fmt::Debug for SqliteTenantTx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteTenantTx")
            .field("tenant", &self.ctx.tenant_id())
            .finish_non_exhaustive()
    }
}

impl SqliteTenantTx {
    /// The context the transaction was opened for.
    pub fn context(&self) -> &TenantContext {
        &self.ctx
    }

    /// The tenant the transaction is bound to.
    pub fn tenant_id(&self) -> TenantId {
        self.ctx.tenant_id()
    }

    /// Commits.
    pub async fn commit(self) -> Result<(), DbError> {
        Ok(self.tx.commit().await?)
    }

    /// Rolls back.
    pub async fn rollback(self) -> Result<(), DbError> {
        Ok(self.tx.rollback().await?)
    }

    /// Write guard: `Ok` when `entity` belongs to this transaction's tenant
    /// (the triggers of [`guard_table_sql`] are the second wall).
    pub fn guard<E: TenantScoped + ?Sized>(&self, entity: &E) -> Result<(), DbError> {
        Ok(entity.ensure_tenant(&self.ctx)?)
    }

    /// Runs a write for `entity` after checking it belongs to this tenant.
    pub async fn write<'q, E: TenantScoped + ?Sized>(
        &mut self,
        entity: &E,
        query: Query<'q, Sqlite, SqliteArguments<'q>>,
    ) -> Result<SqliteQueryResult, DbError> {
        self.guard(entity)?;
        Ok(query.execute(&mut *self.tx).await?)
    }
}

impl Deref for SqliteTenantTx {
    type Target = SqliteConnection;

    fn deref(&self) -> &SqliteConnection {
        &self.tx
    }
}

impl DerefMut for SqliteTenantTx {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        &mut self.tx
    }
}
