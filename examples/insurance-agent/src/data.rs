//! Where the data lives: the embedded default is SQLite — a control
//! database (tenants, memberships, users) and one file per tenant — under a
//! data directory. Application code reaches tenant data only through
//! [`Data::begin`], which takes a [`TenantContext`].

use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use tenancy_core::audit::AuditEvent;
use tenancy_core::audit::chain::ChainReport;
use tenancy_core::crypto::keys::{Keyring, LocalKeyProvider};
use tenancy_core::store::{CachedStore, TenantStore};
use tenancy_core::{Placement, Tenant, TenantContext, TenantId};
use tenancy_sqlx::DbError;
use tenancy_sqlx::sqlite::{
    SqliteAuditLog, SqliteControl, SqliteMembershipStore, SqliteTenantDb, SqliteTenantStore,
    SqliteTenantTx, guard_table_sql,
};
use tenancy_sqlx::tenant_migrate::{TenantMigration, TenantMigrator};
use tenancy_sqlx::{AuditPage, AuditQuery};

/// The tables of a tenant file that carry `tenant_id`.
pub const TENANT_TABLES: [&str; 5] = ["agents", "customers", "policies", "payments", "commissions"];

/// The tenant schema's migrations (each tenant file).
pub fn migrator() -> TenantMigrator {
    let mut v1 = include_str!("../migrations/sqlite/0001_agents_customers.sql").to_owned();
    for t in &TENANT_TABLES[..2] {
        v1.push('\n');
        v1.push_str(&guard_table_sql(t));
    }
    let v2 = include_str!("../migrations/sqlite/0002_sensitive_fields.sql");
    let mut v3 = include_str!("../migrations/sqlite/0003_policies_payments.sql").to_owned();
    for t in &TENANT_TABLES[2..] {
        v3.push('\n');
        v3.push_str(&guard_table_sql(t));
    }
    match TenantMigrator::new(vec![
        TenantMigration::new(1, "agents and customers", &v1),
        TenantMigration::new(2, "customers' sensitive fields", v2),
        TenantMigration::new(3, "policies, payments and commissions", &v3),
    ]) {
        Ok(m) => m,
        // The list above is static and ordered; a failure is a programming error.
        Err(e) => unreachable!("tenant migrations are invalid: {e}"),
    }
}

/// A tenant transaction on whichever backend serves the tenant: the one
/// door to tenant data. Run queries on it with [`on!`](crate::on).
pub enum Tx {
    /// A transaction on the tenant's own SQLite file.
    Sqlite(SqliteTenantTx),
    /// A PostgreSQL transaction with `app.tenant_id` set (row-level security).
    Postgres(tenancy_sqlx::TenantTx),
}

impl Tx {
    /// Itself (lets [`on!`](crate::on) take a `Tx` or a `&mut Tx` alike).
    pub fn tx(&mut self) -> &mut Tx {
        self
    }

    /// The tenant the transaction is bound to.
    pub fn tenant_id(&self) -> TenantId {
        match self {
            Tx::Sqlite(t) => t.tenant_id(),
            Tx::Postgres(t) => t.tenant_id(),
        }
    }

    /// Commits.
    pub async fn commit(self) -> Result<(), DbError> {
        match self {
            Tx::Sqlite(t) => t.commit().await,
            Tx::Postgres(t) => t.commit().await,
        }
    }
}

/// Runs an sqlx query on a [`Tx`], whatever its backend:
/// `on!(tx, sqlx::query_as("…").bind(x), fetch_all)`. The query text must
/// be valid on both backends (`$1` parameters, `TRUE`/`FALSE`, standard
/// casts); binds and row types must encode and decode on both (see
/// [`crate::id::Id`]).
///
/// `execute` returns the number of rows affected (the backends' own result
/// types differ).
#[macro_export]
macro_rules! on {
    ($tx:ident, $query:expr, execute) => {
        match $tx.tx() {
            $crate::data::Tx::Sqlite(t) => {
                $query.execute(&mut **t).await.map(|r| r.rows_affected())
            }
            $crate::data::Tx::Postgres(t) => {
                $query.execute(&mut **t).await.map(|r| r.rows_affected())
            }
        }
    };
    ($tx:ident, $query:expr, $method:ident) => {
        match $tx.tx() {
            $crate::data::Tx::Sqlite(t) => $query.$method(&mut **t).await,
            $crate::data::Tx::Postgres(t) => $query.$method(&mut **t).await,
        }
    };
}

/// The tenant audit log of the backend in use.
#[derive(Clone, Debug)]
pub enum AuditLog {
    /// Inside each tenant file.
    Sqlite(SqliteAuditLog),
    /// In `tenancy.audit_log` under row-level security.
    Postgres(Box<tenancy_sqlx::PgAuditLog>),
}

fn mismatch(tx: &Tx) -> DbError {
    DbError::Placement {
        tenant: tx.tenant_id(),
        reason: "the audit log and the transaction are on different backends".into(),
    }
}

impl AuditLog {
    /// Appends `event` in `tx` (it commits or rolls back with the change).
    pub async fn append(&self, tx: &mut Tx, event: AuditEvent) -> Result<u64, DbError> {
        match (self, tx) {
            (AuditLog::Sqlite(log), Tx::Sqlite(t)) => log.append(t, event).await,
            (AuditLog::Postgres(log), Tx::Postgres(t)) => log.append(t, event).await,
            (_, tx) => Err(mismatch(tx)),
        }
    }

    /// Verifies the tenant's chain.
    pub async fn verify_chain(&self, tx: &mut Tx) -> Result<ChainReport, DbError> {
        match (self, tx) {
            (AuditLog::Sqlite(log), Tx::Sqlite(t)) => log.verify_chain(t).await,
            (AuditLog::Postgres(log), Tx::Postgres(t)) => log.verify_chain(t.tenant_id()).await,
            (_, tx) => Err(mismatch(tx)),
        }
    }

    /// One page of events matching `q`, newest first.
    pub async fn query(&self, tx: &mut Tx, q: &AuditQuery) -> Result<AuditPage, DbError> {
        match (self, tx) {
            (AuditLog::Sqlite(log), Tx::Sqlite(t)) => log.query(t, q).await,
            (AuditLog::Postgres(log), Tx::Postgres(t)) => log.query(t.tenant_id(), q).await,
            (_, tx) => Err(mismatch(tx)),
        }
    }

    /// Every event since `since`, oldest first.
    pub async fn since(
        &self,
        tx: &mut Tx,
        since: DateTime<Utc>,
    ) -> Result<Vec<(u64, AuditEvent)>, DbError> {
        match (self, tx) {
            (AuditLog::Sqlite(log), Tx::Sqlite(t)) => log.since(t, since).await,
            (AuditLog::Postgres(log), Tx::Postgres(t)) => {
                let tenant = t.tenant_id();
                let mut out = Vec::new();
                let mut q = AuditQuery::new()
                    .between(since, Utc::now() + chrono::Duration::seconds(1))
                    .limit(1000);
                loop {
                    let page = log.query(tenant, &q).await?;
                    out.extend(page.events);
                    match page.next {
                        Some(n) => q = q.before(n),
                        None => break,
                    }
                }
                out.reverse();
                Ok(out)
            }
            (_, tx) => Err(mismatch(tx)),
        }
    }
}

/// The data layer.
#[derive(Clone)]
pub struct Data {
    dir: PathBuf,
    control: SqliteControl,
    tenants: SqliteTenantDb,
    store: Arc<CachedStore<SqliteTenantStore>>,
    migrator: TenantMigrator,
    keyring: Arc<Keyring>,
    audit: AuditLog,
}

/// A 32-byte secret kept in `dir/name`, created (random, owner-only) on
/// first use.
pub fn secret_file(dir: &Path, name: &str) -> Result<[u8; 32], DbError> {
    let path = dir.join(name);
    let fail = |e: String| DbError::Export(format!("{}: {e}", path.display()));
    match std::fs::read(&path) {
        Ok(bytes) => <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| {
            fail("must hold exactly 32 bytes; delete it only if no data depends on it".into())
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir).map_err(|e| fail(e.to_string()))?;
            let mut key = [0u8; 32];
            key[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
            key[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
            write_private(&path, &key).map_err(|e| fail(e.to_string()))?;
            Ok(key)
        }
        Err(e) => Err(fail(e.to_string())),
    }
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?
        .write_all(bytes)
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, bytes)
}

impl std::fmt::Debug for Data {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Data")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl Data {
    /// Opens (creating) the data directory: the control database and the
    /// directory of tenant files.
    pub async fn open(dir: &Path) -> Result<Self, DbError> {
        let control = SqliteControl::open(dir.join("control.sqlite3")).await?;
        sqlx::raw_sql(include_str!("../migrations/sqlite/control_users.sql"))
            .execute(control.pool())
            .await?;
        // Development-grade key management: a master key file wrapping
        // per-tenant KEKs (kept wrapped in keks.json), which wrap the
        // per-tenant data keys kept in the control database. Use a KMS
        // provider in production.
        let master = zeroize::Zeroizing::new(secret_file(dir, "master.key")?);
        let provider = LocalKeyProvider::persistent(master, dir.join("keks.json"))
            .map_err(|e| DbError::Export(e.to_string()))?;
        let keyring = Keyring::new(Arc::new(provider), Arc::new(control.keys()));
        let audit = AuditLog::Sqlite(SqliteAuditLog::new(secret_file(dir, "audit.key")?));
        Ok(Self {
            dir: dir.to_owned(),
            store: Arc::new(CachedStore::new(control.tenants())),
            tenants: SqliteTenantDb::new(dir.join("tenants")).max_pools(64),
            control,
            migrator: migrator(),
            keyring: Arc::new(keyring),
            audit,
        })
    }

    /// The per-tenant keys (field encryption, blind indexes).
    pub fn keyring(&self) -> &Keyring {
        &self.keyring
    }

    /// The tenant audit log.
    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The one door to tenant data.
    pub async fn begin(&self, ctx: &TenantContext) -> Result<Tx, DbError> {
        Ok(Tx::Sqlite(self.tenants.begin(ctx).await?))
    }

    /// [`Data::begin`] for a transaction that will write: on SQLite it holds
    /// the tenant file's write lock from the start.
    pub async fn begin_write(&self, ctx: &TenantContext) -> Result<Tx, DbError> {
        Ok(Tx::Sqlite(self.tenants.begin_immediate(ctx).await?))
    }

    /// The file of `tenant`.
    pub fn tenant_path(&self, tenant: &Tenant) -> Result<PathBuf, DbError> {
        self.tenants.path_of(tenant)
    }

    /// Closes the pool of `tenant`'s file (before it is removed).
    pub async fn close_tenant(&self, tenant: &Tenant) {
        self.tenants.close(tenant).await;
    }

    /// The tenant registry, cached.
    pub fn store(&self) -> Arc<CachedStore<SqliteTenantStore>> {
        self.store.clone()
    }

    /// The tenant registry, uncached (for writes).
    pub fn tenant_store(&self) -> SqliteTenantStore {
        self.control.tenants()
    }

    /// Invitations.
    pub fn invitations(&self) -> tenancy_sqlx::sqlite::SqliteInvitationStore {
        self.control.invitations()
    }

    /// The invitation of `tenant` with this token hash.
    pub async fn invitation(
        &self,
        tenant: TenantId,
        hash: &[u8; 32],
    ) -> Result<Option<tenancy_core::invite::Invitation>, DbError> {
        use tenancy_core::invite::InvitationStore;
        self.control
            .invitations()
            .by_hash(tenant, hash)
            .await
            .map_err(|e| DbError::InvalidData {
                what: "invitation",
                reason: e.to_string(),
            })
    }

    /// Memberships.
    pub fn memberships(&self) -> SqliteMembershipStore {
        self.control.memberships()
    }

    /// The control database's pool (users).
    pub fn control(&self) -> &sqlx::SqlitePool {
        self.control.pool()
    }

    /// Registers a tenant placed in a file of its own and creates that file
    /// at the latest schema version. Idempotent for the file; the record must
    /// be new.
    pub async fn create_tenant(&self, tenant: Tenant) -> Result<Tenant, DbError> {
        let id = tenant.id;
        let placement =
            Placement::database(&Placement::name_for(id)).map_err(|e| DbError::Placement {
                tenant: id,
                reason: e.to_string(),
            })?;
        let tenant = tenant.with_placement(placement);
        self.tenants.provision(&tenant, &self.migrator).await?;
        self.control.tenants().create(&tenant).await?;
        Ok(tenant)
    }

    /// Replaces a tenant's record and drops it from the cache.
    pub async fn save_tenant(&self, tenant: &Tenant) -> Result<(), DbError> {
        self.control.tenants().update(tenant).await?;
        self.store.invalidate_tenant(tenant).await;
        Ok(())
    }

    /// A tenant by id (cached).
    pub async fn tenant(&self, id: TenantId) -> Result<Option<Arc<Tenant>>, DbError> {
        self.store
            .by_id(id)
            .await
            .map_err(|e| DbError::InvalidData {
                what: "tenant",
                reason: e.to_string(),
            })
    }

    /// Brings every tenant file to the latest schema.
    pub async fn migrate_all(
        &self,
        progress: impl Fn(&tenancy_sqlx::tenant_migrate::Progress) + Send + Sync,
    ) -> Result<tenancy_sqlx::tenant_migrate::RolloutReport, DbError> {
        let tenants: Vec<Tenant> = self
            .control
            .tenants()
            .list()
            .await?
            .iter()
            .map(|t| (**t).clone())
            .collect();
        self.tenants
            .migrate(&self.migrator, &tenants, progress)
            .await
    }
}
