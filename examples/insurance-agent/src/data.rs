//! Where the data lives: the embedded default is SQLite — a control
//! database (tenants, memberships, users) and one file per tenant — under a
//! data directory. Application code reaches tenant data only through
//! [`Data::begin`], which takes a [`TenantContext`].

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tenancy_core::crypto::keys::{Keyring, LocalKeyProvider};
use tenancy_core::store::{CachedStore, TenantStore};
use tenancy_core::{Placement, Tenant, TenantContext, TenantId};
use tenancy_sqlx::DbError;
use tenancy_sqlx::sqlite::{
    SqliteAuditLog, SqliteControl, SqliteMembershipStore, SqliteTenantDb, SqliteTenantStore,
    SqliteTenantTx, guard_table_sql,
};
use tenancy_sqlx::tenant_migrate::{TenantMigration, TenantMigrator};

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

/// The data layer.
#[derive(Clone)]
pub struct Data {
    dir: PathBuf,
    control: SqliteControl,
    tenants: SqliteTenantDb,
    store: Arc<CachedStore<SqliteTenantStore>>,
    migrator: TenantMigrator,
    keyring: Arc<Keyring>,
    audit: SqliteAuditLog,
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
        let audit = SqliteAuditLog::new(secret_file(dir, "audit.key")?);
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

    /// The audit log (inside each tenant file).
    pub fn audit(&self) -> &SqliteAuditLog {
        &self.audit
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The one door to tenant data.
    pub async fn begin(&self, ctx: &TenantContext) -> Result<SqliteTenantTx, DbError> {
        self.tenants.begin(ctx).await
    }

    /// [`Data::begin`] holding the tenant file's write lock from the start.
    pub async fn begin_write(&self, ctx: &TenantContext) -> Result<SqliteTenantTx, DbError> {
        self.tenants.begin_immediate(ctx).await
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
