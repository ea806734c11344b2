//! Where the data lives. The embedded default is SQLite — a control
//! database (tenants, memberships, users, keys, invitations) and one file
//! per tenant — under a data directory. With PostgreSQL
//! ([`Data::open_postgres`]) every tenant shares the application's tables,
//! isolated by `tenant_id` and row-level security, and the isolation audit
//! runs in strict mode before anything is served. Either way, application
//! code reaches tenant data only through [`Data::begin`], which takes a
//! [`TenantContext`].

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tenancy_core::audit::AuditEvent;
use tenancy_core::audit::archive::{ArchiveDir, ArchiveReport, Retention};
use tenancy_core::audit::chain::{Anchor, ChainReport, ChainedEvent};
use tenancy_core::crypto::keys::{KeyProvider, Keyring, LocalKeyProvider};
use tenancy_core::crypto::subject::SubjectKeys;
use tenancy_core::invite::InvitationStore;
use tenancy_core::lifecycle::{Lifecycle, LifecycleError, Transition};
use tenancy_core::store::{CachedStore, TenantStore, TenantUpdate, TenantWriter, WriteError};
use tenancy_core::{
    DomainName, Membership, MembershipStore, MembershipWriter, Placement, StoreError, Tenant,
    TenantContext, TenantId, TenantSlug, UserId,
};
use tenancy_sqlx::sqlite::{
    SqliteAuditLog, SqliteChangeWatcher, SqliteControl, SqliteMembershipStore,
    SqliteSubjectKeyStore, SqliteTenantDb, SqliteTenantStore, SqliteTenantTx, guard_table_sql,
};
use tenancy_sqlx::tenant_migrate::{RolloutReport, TenantMigration, TenantMigrator};
use tenancy_sqlx::{
    ArchiveRun, AuditPage, AuditQuery, DbError, InvalidationListener, KeyInvalidationListener,
    PgAuditLog, PgInvitationStore, PgKeyStore, PgMembershipStore, PgTenantStore, TenantDb,
};

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
        TenantMigration::new(
            4,
            "who settled a payment",
            include_str!("../migrations/sqlite/0004_payment_settlement.sql"),
        ),
        TenantMigration::new(
            5,
            "customers forgotten on request",
            include_str!("../migrations/sqlite/0005_customer_erasure.sql"),
        ),
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

    /// Verifies the tenant's chain, and that it still passes through the
    /// heads in `anchors` (recorded earlier, kept outside the database).
    pub async fn verify_chain(
        &self,
        tx: &mut Tx,
        anchors: &[Anchor],
    ) -> Result<ChainReport, DbError> {
        match (self, tx) {
            (AuditLog::Sqlite(log), Tx::Sqlite(t)) => log.verify_chain_anchored(t, anchors).await,
            (AuditLog::Postgres(log), Tx::Postgres(t)) => {
                log.verify_chain_anchored(t.tenant_id(), anchors).await
            }
            (_, tx) => Err(mismatch(tx)),
        }
    }

    /// Verifies the tenant's whole retained chain: the archive segments in
    /// `dir`, then the live log from its checkpoint, against `anchors`.
    pub async fn verify_archive(
        &self,
        tx: &mut Tx,
        dir: &ArchiveDir,
        anchors: &[Anchor],
    ) -> Result<ArchiveReport, DbError> {
        match (self, tx) {
            (AuditLog::Sqlite(log), Tx::Sqlite(t)) => log.verify_archive(t, dir, anchors).await,
            (AuditLog::Postgres(log), Tx::Postgres(t)) => {
                log.verify_archive(t.tenant_id(), dir, anchors).await
            }
            (_, tx) => Err(mismatch(tx)),
        }
    }

    /// The tenant's chain key (to verify rows read elsewhere: a backup).
    pub fn chain_key(&self, tenant: TenantId) -> tenancy_core::audit::chain::ChainKey {
        match self {
            AuditLog::Sqlite(log) => log.chain_key(tenant),
            AuditLog::Postgres(log) => log.chain_key(tenant),
        }
    }

    /// One page of the live log in `tx`: rows after `after`, oldest first.
    pub async fn live_events(
        &self,
        tx: &mut Tx,
        after: u64,
        limit: u32,
    ) -> Result<Vec<ChainedEvent>, DbError> {
        match (self, tx) {
            (AuditLog::Sqlite(log), Tx::Sqlite(t)) => log.live_events(t, after, limit).await,
            (AuditLog::Postgres(log), Tx::Postgres(t)) => log.live_events(t, after, limit).await,
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

/// How to reach PostgreSQL: the application role serves requests (it must
/// be neither superuser nor `BYPASSRLS` nor the owner of the tables — the
/// start-up audit refuses to serve otherwise); the owner role applies the
/// schema and writes the control plane (tenants, memberships).
#[derive(Clone)]
pub struct PgUrls {
    /// `DATABASE_URL`: the request-serving application role (directly, or
    /// through a pooler such as pgbouncer in transaction mode).
    pub app: String,
    /// `DATABASE_OWNER_URL`: the role that owns the schema.
    pub owner: String,
    /// `DATABASE_LISTEN_URL`: the application role on a direct connection,
    /// for the change notifications (`LISTEN` needs a session of its own; a
    /// transaction-mode pooler cannot keep one). Defaults to `app`.
    pub listen: Option<String>,
}

impl std::fmt::Debug for PgUrls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // URLs carry passwords.
        f.debug_struct("PgUrls").finish_non_exhaustive()
    }
}

/// The data layer.
#[derive(Clone)]
pub struct Data {
    dir: PathBuf,
    backend: Backend,
    store: Arc<CachedStore<Arc<dyn TenantStore>>>,
    keyring: Arc<Keyring>,
    subjects: Arc<SubjectKeys>,
    audit: AuditLog,
    _listeners: Option<Arc<(InvalidationListener, KeyInvalidationListener)>>,
    /// SQLite: changes made by other processes (the command line), read
    /// from the control database's change log.
    _watcher: Option<Arc<SqliteChangeWatcher>>,
}

#[derive(Clone)]
enum Backend {
    Sqlite {
        control: SqliteControl,
        tenants: SqliteTenantDb,
        migrator: TenantMigrator,
    },
    Postgres {
        db: Box<TenantDb>,
        app: PgPool,
        owner: PgPool,
        app_role: String,
    },
}

/// One placement's connection pools ([`Data::pool_stats`]).
#[derive(Debug, Clone, Copy)]
pub struct PoolStats {
    /// `shared` (PostgreSQL rows) or `database` (a file per tenant).
    pub placement: &'static str,
    /// Pools open.
    pub pools: u64,
    /// Connections and idle connections, where the pool reports them.
    pub connections: Option<(u32, usize)>,
}

/// The tenant registry, uncached: what operations tooling reads and writes.
#[derive(Clone, Debug)]
pub enum Tenants {
    /// The SQLite control database.
    Sqlite(SqliteTenantStore),
    /// `tenancy.tenants`, through the owner role.
    Postgres(PgTenantStore),
}

impl Tenants {
    /// Every tenant, by slug.
    pub async fn list(&self) -> Result<Vec<Arc<Tenant>>, DbError> {
        match self {
            Tenants::Sqlite(s) => s.list().await,
            Tenants::Postgres(s) => s.list().await,
        }
    }

    /// Adds a tenant.
    pub async fn create(&self, tenant: &Tenant) -> Result<(), DbError> {
        match self {
            Tenants::Sqlite(s) => s.create(tenant).await,
            Tenants::Postgres(s) => s.create(tenant).await,
        }
    }
}

#[async_trait]
impl TenantWriter for Tenants {
    async fn create(&self, tenant: &Tenant) -> Result<(), StoreError> {
        Tenants::create(self, tenant).await.map_err(StoreError::new)
    }

    async fn update(&self, id: TenantId, update: &TenantUpdate) -> Result<Arc<Tenant>, WriteError> {
        match self {
            Tenants::Sqlite(s) => s.apply(id, update).await,
            Tenants::Postgres(s) => s.apply(id, update).await,
        }
    }
}

#[async_trait]
impl TenantStore for Tenants {
    async fn by_id(&self, id: TenantId) -> Result<Option<Arc<Tenant>>, StoreError> {
        match self {
            Tenants::Sqlite(s) => s.by_id(id).await,
            Tenants::Postgres(s) => s.by_id(id).await,
        }
    }

    async fn by_slug(&self, slug: &TenantSlug) -> Result<Option<Arc<Tenant>>, StoreError> {
        match self {
            Tenants::Sqlite(s) => s.by_slug(slug).await,
            Tenants::Postgres(s) => s.by_slug(slug).await,
        }
    }

    async fn by_domain(&self, domain: &DomainName) -> Result<Option<Arc<Tenant>>, StoreError> {
        match self {
            Tenants::Sqlite(s) => s.by_domain(domain).await,
            Tenants::Postgres(s) => s.by_domain(domain).await,
        }
    }
}

/// Memberships (user × tenant × role).
#[derive(Clone, Debug)]
pub enum Memberships {
    /// The SQLite control database.
    Sqlite(SqliteMembershipStore),
    /// `tenancy.memberships`: read as the application role, written as the
    /// owner.
    Postgres {
        /// Reads (the request path).
        read: PgMembershipStore,
        /// Writes (invitations, administration).
        write: PgMembershipStore,
    },
}

impl Memberships {
    /// Inserts or replaces a membership.
    pub async fn upsert(&self, m: &Membership) -> Result<(), DbError> {
        match self {
            Memberships::Sqlite(s) => s.upsert(m).await,
            Memberships::Postgres { write, .. } => write.upsert(m).await,
        }
    }

    /// Removes a membership; `true` if it existed.
    pub async fn remove(&self, user: &UserId, tenant: TenantId) -> Result<bool, DbError> {
        match self {
            Memberships::Sqlite(s) => s.remove(user, tenant).await,
            Memberships::Postgres { write, .. } => write.remove(user, tenant).await,
        }
    }

    /// Every membership of `tenant`.
    pub async fn members_of(&self, tenant: TenantId) -> Result<Vec<Membership>, DbError> {
        match self {
            Memberships::Sqlite(s) => s.members_of(tenant).await,
            Memberships::Postgres { write, .. } => write.members_of(tenant).await,
        }
    }
}

#[async_trait]
impl MembershipStore for Memberships {
    async fn membership(
        &self,
        user: &UserId,
        tenant: TenantId,
    ) -> Result<Option<Membership>, StoreError> {
        match self {
            Memberships::Sqlite(s) => s.membership(user, tenant).await,
            Memberships::Postgres { read, .. } => read.membership(user, tenant).await,
        }
    }

    async fn memberships_of(&self, user: &UserId) -> Result<Vec<Membership>, StoreError> {
        match self {
            Memberships::Sqlite(s) => s.memberships_of(user).await,
            Memberships::Postgres { read, .. } => read.memberships_of(user).await,
        }
    }

    async fn members_of(&self, tenant: TenantId) -> Result<Vec<Membership>, StoreError> {
        Memberships::members_of(self, tenant)
            .await
            .map_err(StoreError::new)
    }
}

#[async_trait]
impl MembershipWriter for Memberships {
    async fn put(&self, membership: &Membership) -> Result<(), StoreError> {
        self.upsert(membership).await.map_err(StoreError::new)
    }

    async fn remove(&self, user: &UserId, tenant: TenantId) -> Result<bool, StoreError> {
        Memberships::remove(self, user, tenant)
            .await
            .map_err(StoreError::new)
    }

    async fn touch(
        &self,
        user: &UserId,
        tenant: TenantId,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        match self {
            Memberships::Sqlite(s) => s.touch(user, tenant, at).await,
            Memberships::Postgres { write, .. } => write.touch(user, tenant, at).await,
        }
    }
}

/// A user account: `(id, password hash)`.
pub type Credentials = (String, String);

/// Runs a query on the pool holding the `users` table.
macro_rules! on_users {
    ($backend:expr, $query:expr, execute) => {
        match $backend {
            Backend::Sqlite { control, .. } => $query.execute(control.pool()).await.map(|_| ()),
            Backend::Postgres { app, .. } => $query.execute(app).await.map(|_| ()),
        }
    };
    ($backend:expr, $query:expr, $method:ident) => {
        match $backend {
            Backend::Sqlite { control, .. } => $query.$method(control.pool()).await,
            Backend::Postgres { app, .. } => $query.$method(app).await,
        }
    };
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
            .field("backend", &self.backend_name())
            .finish_non_exhaustive()
    }
}

/// The key-encryption keys' provider: AWS KMS when `INSURANCE_KMS` is set
/// (feature `kms`, see `KmsSettings`), else development-grade key
/// management kept in `dir` whatever the database: a master key file
/// wrapping per-tenant KEKs (kept wrapped in `keks.json`), which wrap the
/// per-tenant data keys kept in the database.
pub fn key_provider(dir: &Path) -> Result<Arc<dyn KeyProvider>, DbError> {
    #[cfg(feature = "kms")]
    if let Some(kms) = KmsSettings::from_env()? {
        return kms.provider();
    }
    let master = zeroize::Zeroizing::new(secret_file(dir, "master.key")?);
    let provider = LocalKeyProvider::persistent(master, dir.join("keks.json"))
        .map_err(|e| DbError::Export(e.to_string()))?;
    Ok(Arc::new(provider))
}

/// Data-subject keys: wrapped by the tenants' data keys in `keyring`, kept
/// in `subject-keys.sqlite3` in the data directory — beside the KEKs, apart
/// from the databases (on both backends), so a backup of the data holds
/// only ciphertext and a forgotten customer's values never open again from
/// any copy.
pub async fn subject_keys(dir: &Path, keyring: Arc<Keyring>) -> Result<Arc<SubjectKeys>, DbError> {
    let store = SqliteSubjectKeyStore::open(dir.join("subject-keys.sqlite3")).await?;
    Ok(Arc::new(SubjectKeys::new(keyring, Arc::new(store))))
}

/// Where tenant KEKs live in AWS KMS (feature `kms`).
#[cfg(feature = "kms")]
#[derive(Clone)]
pub struct KmsSettings {
    /// `per-tenant:<alias prefix>` (one KMS key per tenant, created on first
    /// use) or `shared:<key id>`.
    pub spec: String,
    /// The AWS region.
    pub region: String,
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: String,
    /// Session token, for temporary credentials.
    pub session_token: Option<String>,
    /// A KMS-compatible endpoint instead of AWS's.
    pub endpoint: Option<String>,
}

#[cfg(feature = "kms")]
impl std::fmt::Debug for KmsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KmsSettings")
            .field("spec", &self.spec)
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

#[cfg(feature = "kms")]
impl KmsSettings {
    /// `INSURANCE_KMS` and the standard `AWS_REGION`, `AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_ENDPOINT_URL`;
    /// `None` when `INSURANCE_KMS` is not set.
    pub fn from_env() -> Result<Option<Self>, DbError> {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let Some(spec) = env("INSURANCE_KMS") else {
            return Ok(None);
        };
        let need = |k: &str| {
            env(k).ok_or_else(|| DbError::Export(format!("INSURANCE_KMS is set but {k} is not")))
        };
        Ok(Some(Self {
            spec,
            region: need("AWS_REGION")?,
            access_key_id: need("AWS_ACCESS_KEY_ID")?,
            secret_access_key: need("AWS_SECRET_ACCESS_KEY")?,
            session_token: env("AWS_SESSION_TOKEN"),
            endpoint: env("AWS_ENDPOINT_URL"),
        }))
    }

    /// The provider. Every KMS call gives up after 2 s (a KMS that does not
    /// answer is an error, never a hang).
    pub fn provider(&self) -> Result<Arc<dyn KeyProvider>, DbError> {
        use aws_sdk_kms::config::{Credentials, Region, timeout::TimeoutConfig};
        use tenancy_core::crypto::kms::{KmsKeyProvider, KmsKeys};
        let keys = match self.spec.split_once(':') {
            Some(("per-tenant", prefix)) if !prefix.is_empty() => KmsKeys::per_tenant(prefix),
            Some(("shared", key)) if !key.is_empty() => KmsKeys::shared(key),
            _ => {
                return Err(DbError::Export(format!(
                    "INSURANCE_KMS={:?} is not per-tenant:<alias prefix> or shared:<key id>",
                    self.spec
                )));
            }
        };
        let mut config = aws_sdk_kms::Config::builder()
            .region(Region::new(self.region.clone()))
            .credentials_provider(Credentials::new(
                self.access_key_id.clone(),
                self.secret_access_key.clone(),
                self.session_token.clone(),
                None,
                "insurance-agent",
            ))
            .timeout_config(
                TimeoutConfig::builder()
                    .operation_timeout(std::time::Duration::from_secs(2))
                    .build(),
            );
        if let Some(url) = &self.endpoint {
            config = config.endpoint_url(url.clone());
        }
        Ok(Arc::new(KmsKeyProvider::new(
            aws_sdk_kms::Client::from_conf(config.build()),
            keys,
        )))
    }
}

impl Data {
    /// Opens (creating) the data directory on the embedded default: the
    /// control database and the directory of tenant files.
    pub async fn open(dir: &Path) -> Result<Self, DbError> {
        let control = SqliteControl::open(dir.join("control.sqlite3")).await?;
        sqlx::raw_sql(include_str!("../migrations/sqlite/control_users.sql"))
            .execute(control.pool())
            .await?;
        let keyring = Arc::new(Keyring::new(key_provider(dir)?, Arc::new(control.keys())));
        let subjects = subject_keys(dir, keyring.clone()).await?;
        // High-risk events also go to the alert webhook, through the tenant
        // file's outbox in the transaction that records them.
        let audit = AuditLog::Sqlite(
            SqliteAuditLog::new(secret_file(dir, "audit.key")?).with_alerts(crate::billing::ALERTS),
        );
        let store: Arc<dyn TenantStore> = Arc::new(control.tenants());
        let store = Arc::new(CachedStore::new(store));
        let watcher = SqliteChangeWatcher::start(
            &control,
            store.clone(),
            Some(keyring.clone()),
            std::time::Duration::from_millis(250),
        )
        .await?;
        Ok(Self {
            dir: dir.to_owned(),
            store,
            backend: Backend::Sqlite {
                tenants: SqliteTenantDb::new(dir.join("tenants")).max_pools(64),
                control,
                migrator: migrator(),
            },
            keyring,
            subjects,
            audit,
            _listeners: None,
            _watcher: Some(Arc::new(watcher)),
        })
    }

    /// Opens the PostgreSQL deployment: the owner applies the system and
    /// application schema (idempotent, serialised between instances), then
    /// the isolation audit runs in strict mode as the application role and
    /// refuses to continue on any finding (a table without a forced policy,
    /// an application role that bypasses row-level security, …). Secrets
    /// (master key, audit chain key) stay in `dir`.
    pub async fn open_postgres(dir: &Path, urls: &PgUrls) -> Result<Self, DbError> {
        Self::open_postgres_with_keys(dir, urls, key_provider(dir)?).await
    }

    /// [`Data::open_postgres`] with this key provider.
    pub async fn open_postgres_with_keys(
        dir: &Path,
        urls: &PgUrls,
        provider: Arc<dyn KeyProvider>,
    ) -> Result<Self, DbError> {
        let app_role = role_of(&urls.app)?;
        let owner = sqlx::postgres::PgPoolOptions::new()
            .max_connections(4)
            .connect(&urls.owner)
            .await?;
        crate::postgres::apply_schema(&owner, &app_role).await?;
        let app = TenantDb::pool_options()
            .max_connections(16)
            .connect(&urls.app)
            .await?;
        tenancy_sqlx::audit::Audit::new()
            .schema("public")
            .enforce(&mut *app.acquire().await?)
            .await?;
        // The seal key proves our transactions were opened by the library;
        // only the owner can read it.
        let seal = tenancy_sqlx::migrate::seal_key(&mut *owner.acquire().await?).await?;
        let db = TenantDb::new(app.clone(), seal.clone());
        // The key store gets a pool of its own: a request holding a tenant
        // transaction may need a key (first use, a new block of nonces), and
        // with one shared pool, transactions waiting for connections held by
        // each other would deadlock the pool under load.
        let key_pool = TenantDb::pool_options()
            .max_connections(4)
            .connect(&urls.app)
            .await?;
        let keyring = Keyring::new(
            provider,
            Arc::new(PgKeyStore::new(TenantDb::new(key_pool, seal))),
        );
        // High-risk events also go to the alert webhook, through the outbox
        // in the transaction that records them.
        let audit = AuditLog::Postgres(Box::new(
            PgAuditLog::new(db.clone(), secret_file(dir, "audit.key")?)
                .with_alerts(crate::billing::ALERTS),
        ));
        let store: Arc<dyn TenantStore> = Arc::new(PgTenantStore::new(app.clone()));
        let store = Arc::new(CachedStore::new(store));
        // Another process (the command line) changing a tenant drops it from
        // this process's cache at once; so does shredding its keys.
        let keyring = Arc::new(keyring);
        let subjects = subject_keys(dir, keyring.clone()).await?;
        let listen = match &urls.listen {
            Some(url) => {
                sqlx::postgres::PgPoolOptions::new()
                    .max_connections(2)
                    .connect(url)
                    .await?
            }
            None => app.clone(),
        };
        let listeners = (
            InvalidationListener::start(&listen, store.clone()).await?,
            KeyInvalidationListener::start(&listen, keyring.clone()).await?,
        );
        Ok(Self {
            dir: dir.to_owned(),
            store,
            backend: Backend::Postgres {
                db: Box::new(db),
                app,
                owner,
                app_role,
            },
            keyring,
            subjects,
            audit,
            _listeners: Some(Arc::new(listeners)),
            _watcher: None,
        })
    }

    /// [`Data::open_postgres`] when `postgres` is given, else [`Data::open`].
    pub async fn open_with(dir: &Path, postgres: Option<&PgUrls>) -> Result<Self, DbError> {
        match postgres {
            Some(urls) => Self::open_postgres(dir, urls).await,
            None => Self::open(dir).await,
        }
    }

    /// Session epochs (revocable sessions), shared by every process on this
    /// data: the control database on SQLite, `tenancy.session_epochs` on
    /// PostgreSQL.
    pub fn session_epochs(&self) -> Arc<dyn tenancy_core::session::SessionEpochs> {
        match &self.backend {
            Backend::Sqlite { control, .. } => Arc::new(control.session_epochs()),
            Backend::Postgres { app, .. } => {
                Arc::new(tenancy_sqlx::PgSessionEpochs::new(app.clone()))
            }
        }
    }

    /// The application role's pool on PostgreSQL (`None` on SQLite): for
    /// state every instance shares, such as sign-in attempt counters.
    pub fn postgres_app_pool(&self) -> Option<sqlx::PgPool> {
        match &self.backend {
            Backend::Postgres { app, .. } => Some(app.clone()),
            Backend::Sqlite { .. } => None,
        }
    }

    /// Connection pools, per placement: on SQLite the tenant files' pools
    /// (`database`), on PostgreSQL the shared pool (`shared`) with its
    /// connections and idle connections.
    pub fn pool_stats(&self) -> Vec<PoolStats> {
        match &self.backend {
            Backend::Sqlite { tenants, .. } => vec![PoolStats {
                placement: "database",
                pools: tenants.open_pools(),
                connections: None,
            }],
            Backend::Postgres { app, .. } => vec![PoolStats {
                placement: "shared",
                pools: 1,
                connections: Some((app.size(), app.num_idle())),
            }],
        }
    }

    /// `health` with the probe of each tenant's own data path: its SQLite
    /// file, or its transaction through its placement on PostgreSQL.
    pub fn database_probe(
        &self,
        health: tenancy_core::health::TenantHealth,
    ) -> tenancy_core::health::TenantHealth {
        match &self.backend {
            Backend::Sqlite { tenants, .. } => {
                health.probe(tenancy_sqlx::sqlite::SqliteProbe::new(tenants.clone()))
            }
            Backend::Postgres { db, .. } => {
                health.probe(tenancy_sqlx::DatabaseProbe::new((**db).clone()))
            }
        }
    }

    /// The per-tenant keys, shared.
    pub fn keyring_shared(&self) -> Arc<Keyring> {
        self.keyring.clone()
    }

    /// `"sqlite"` or `"postgres"`.
    pub fn backend_name(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite { .. } => "sqlite",
            Backend::Postgres { .. } => "postgres",
        }
    }

    /// The per-tenant keys (field encryption, blind indexes).
    pub fn keyring(&self) -> &Keyring {
        &self.keyring
    }

    /// Data-subject keys (customers' sensitive fields; erased when a
    /// customer is forgotten).
    pub fn subjects(&self) -> &SubjectKeys {
        &self.subjects
    }

    /// The tenant audit log.
    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    /// Where archived audit segments go: `audit-archive/<tenant>/` in the
    /// data directory (on both backends).
    pub fn audit_archive(&self) -> ArchiveDir {
        ArchiveDir::new(self.dir.join("audit-archive"))
    }

    /// Archives `tenant`'s audit events older than its retention minimum
    /// and destroys archived ones older than its maximum: in the tenant's
    /// file on SQLite; with the owner role on PostgreSQL (the application
    /// role cannot prune the audit log).
    pub async fn archive_audit(
        &self,
        tenant: &Tenant,
        retention: &Retention,
        now: DateTime<Utc>,
    ) -> Result<ArchiveRun, DbError> {
        const BATCH: usize = 10_000;
        let dir = self.audit_archive();
        match (&self.backend, &self.audit) {
            (Backend::Sqlite { tenants, .. }, AuditLog::Sqlite(log)) => {
                let ctx = TenantContext::new(tenant.clone());
                let mut tx = tenants.begin_immediate(&ctx).await?;
                let run = log.archive(&mut tx, retention, &dir, now, BATCH).await?;
                tx.commit().await?;
                Ok(run)
            }
            (Backend::Postgres { owner, .. }, AuditLog::Postgres(log)) => {
                log.archive(owner, tenant.id, retention, &dir, now, BATCH)
                    .await
            }
            _ => Err(DbError::Placement {
                tenant: tenant.id,
                reason: "the audit log and the data are on different backends".into(),
            }),
        }
    }

    /// Destroys `tenant`'s audit log when it is purged: on PostgreSQL its
    /// rows in the shared log, as the owner (whatever the state of its
    /// chain); on SQLite nothing here (the log goes with the tenant's file).
    /// Returns how many events were destroyed.
    pub async fn purge_audit(&self, tenant: &Tenant) -> Result<u64, DbError> {
        match (&self.backend, &self.audit) {
            (Backend::Postgres { owner, .. }, AuditLog::Postgres(log)) => {
                log.purge(owner, tenant.id).await
            }
            _ => Ok(0),
        }
    }

    /// The data directory (secrets; on SQLite also the databases).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The one door to tenant data.
    pub async fn begin(&self, ctx: &TenantContext) -> Result<Tx, DbError> {
        match &self.backend {
            Backend::Sqlite { tenants, .. } => Ok(Tx::Sqlite(tenants.begin(ctx).await?)),
            Backend::Postgres { db, .. } => Ok(Tx::Postgres(db.begin(ctx).await?)),
        }
    }

    /// [`Data::begin`] reading one instant throughout (a backup): on
    /// PostgreSQL at `REPEATABLE READ`; on SQLite a read transaction, which
    /// keeps its snapshot from its first read.
    pub async fn begin_snapshot(&self, ctx: &TenantContext) -> Result<Tx, DbError> {
        match &self.backend {
            Backend::Sqlite { tenants, .. } => Ok(Tx::Sqlite(tenants.begin(ctx).await?)),
            Backend::Postgres { db, .. } => Ok(Tx::Postgres(db.begin_snapshot(ctx).await?)),
        }
    }

    /// [`Data::begin`] for a transaction that will write: on SQLite it holds
    /// the tenant file's write lock from the start.
    pub async fn begin_write(&self, ctx: &TenantContext) -> Result<Tx, DbError> {
        match &self.backend {
            Backend::Sqlite { tenants, .. } => Ok(Tx::Sqlite(tenants.begin_immediate(ctx).await?)),
            Backend::Postgres { db, .. } => Ok(Tx::Postgres(db.begin(ctx).await?)),
        }
    }

    /// The file of `tenant` (SQLite only).
    pub fn tenant_path(&self, tenant: &Tenant) -> Result<PathBuf, DbError> {
        match &self.backend {
            Backend::Sqlite { tenants, .. } => tenants.path_of(tenant),
            Backend::Postgres { .. } => Err(DbError::Placement {
                tenant: tenant.id,
                reason: "on PostgreSQL tenants share tables; there is no tenant file".into(),
            }),
        }
    }

    /// Deletes every row of `tenant`'s application data: on SQLite the
    /// tenant file itself; on PostgreSQL its rows, in one transaction
    /// confined to the tenant by row-level security. (On PostgreSQL the
    /// tenant's audit log stays: it is append-only for the application.)
    pub async fn remove_tenant_data(&self, tenant: &Tenant) -> Result<(), DbError> {
        match &self.backend {
            Backend::Sqlite { tenants, .. } => {
                let path = tenants.path_of(tenant)?;
                tenants.close(tenant).await;
                for suffix in ["", "-wal", "-shm"] {
                    let mut p = path.clone().into_os_string();
                    p.push(suffix);
                    match std::fs::remove_file(&p) {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => {
                            return Err(DbError::Export(format!(
                                "removing {}: {e}",
                                path.display()
                            )));
                        }
                    }
                }
                Ok(())
            }
            Backend::Postgres { db, .. } => {
                let mut tx = db.begin(&TenantContext::new(tenant.clone())).await?;
                for table in TENANT_TABLES.iter().rev() {
                    sqlx::query(&format!("DELETE FROM \"{table}\""))
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await
            }
        }
    }

    /// The tenant registry, cached (the request path).
    pub fn store(&self) -> Arc<CachedStore<Arc<dyn TenantStore>>> {
        self.store.clone()
    }

    /// The tenant registry, uncached (for operations and writes).
    pub fn tenant_store(&self) -> Tenants {
        match &self.backend {
            Backend::Sqlite { control, .. } => Tenants::Sqlite(control.tenants()),
            Backend::Postgres { owner, .. } => Tenants::Postgres(PgTenantStore::new(owner.clone())),
        }
    }

    /// Usage counters per calendar month: in the control database, or
    /// `tenancy.monthly_usage` under row-level security.
    pub fn monthly_usage(&self) -> Arc<dyn tenancy_core::quota::monthly::MonthlyStore> {
        // Every counted unit is also a usage record for billing, written to
        // the outbox in the transaction that counts it.
        match &self.backend {
            Backend::Sqlite { control, .. } => {
                Arc::new(control.monthly_usage().with_outbox(crate::billing::BILLING))
            }
            Backend::Postgres { db, .. } => Arc::new(
                tenancy_sqlx::PgMonthlyUsage::new((**db).clone())
                    .with_outbox(crate::billing::BILLING),
            ),
        }
    }

    /// Deletes billing messages delivered before `before` (alerts in tenant
    /// files stay with the file).
    pub async fn prune_outbox(&self, before: DateTime<Utc>) -> Result<u64, DbError> {
        match &self.backend {
            Backend::Sqlite { control, .. } => control.outbox().prune_delivered(before).await,
            Backend::Postgres { owner, .. } => {
                tenancy_sqlx::PgOutbox::new(owner.clone())
                    .prune_delivered(before)
                    .await
            }
        }
    }

    /// The outbox's relay side for `channel`: on PostgreSQL
    /// `tenancy.outbox` (read by the owner role) for every channel; on
    /// SQLite the control database for billing, and the tenant files for
    /// alerts (written there with the audit events).
    pub fn outbox(&self, channel: &str) -> Arc<dyn tenancy_core::outbox::OutboxStore> {
        match &self.backend {
            Backend::Sqlite {
                control, tenants, ..
            } if channel == crate::billing::ALERTS => Arc::new(
                tenancy_sqlx::sqlite::SqliteTenantOutboxes::new(tenants.clone(), control.tenants()),
            ),
            Backend::Sqlite { control, .. } => Arc::new(control.outbox()),
            Backend::Postgres { owner, .. } => Arc::new(tenancy_sqlx::PgOutbox::new(owner.clone())),
        }
    }

    /// Invitations.
    pub fn invitations(&self) -> Arc<dyn InvitationStore> {
        match &self.backend {
            Backend::Sqlite { control, .. } => Arc::new(control.invitations()),
            Backend::Postgres { db, .. } => Arc::new(PgInvitationStore::new((**db).clone())),
        }
    }

    /// The invitation of `tenant` with this token hash.
    pub async fn invitation(
        &self,
        tenant: TenantId,
        hash: &[u8; 32],
    ) -> Result<Option<tenancy_core::invite::Invitation>, DbError> {
        self.invitations()
            .by_hash(tenant, hash)
            .await
            .map_err(|e| DbError::InvalidData {
                what: "invitation",
                reason: e.to_string(),
            })
    }

    /// Memberships.
    pub fn memberships(&self) -> Memberships {
        match &self.backend {
            Backend::Sqlite { control, .. } => Memberships::Sqlite(control.memberships()),
            Backend::Postgres { app, owner, .. } => Memberships::Postgres {
                read: PgMembershipStore::new(app.clone()),
                write: PgMembershipStore::new(owner.clone()),
            },
        }
    }

    /// The account with this (normalised) email: `(id, password hash)`.
    pub async fn user_by_email(&self, email: &str) -> Result<Option<Credentials>, DbError> {
        Ok(on_users!(
            &self.backend,
            sqlx::query_as("SELECT id, password_hash FROM users WHERE email = $1").bind(email),
            fetch_optional
        )?)
    }

    /// Account `id` for a backup: its email, name and password hash.
    pub async fn user_record(&self, id: &str) -> Result<Option<(String, String, String)>, DbError> {
        Ok(on_users!(
            &self.backend,
            sqlx::query_as("SELECT email, name, password_hash FROM users WHERE id = $1").bind(id),
            fetch_optional
        )?)
    }

    /// Deletes every application row of `tenant`, children first, keeping
    /// its record, its file and its keys (before a restore replaces them).
    pub async fn remove_tenant_rows(&self, tenant: &Tenant) -> Result<(), DbError> {
        let mut tx = self
            .begin_write(&TenantContext::new(tenant.clone()))
            .await?;
        for table in TENANT_TABLES.iter().rev() {
            crate::on!(
                tx,
                sqlx::query(&format!("DELETE FROM \"{table}\"")),
                execute
            )?;
        }
        tx.commit().await
    }

    /// Makes sure `tenant`'s storage exists (its file on SQLite).
    pub async fn ensure_tenant_storage(&self, tenant: &Tenant) -> Result<(), DbError> {
        match &self.backend {
            Backend::Sqlite {
                tenants, migrator, ..
            } => tenants.provision(tenant, migrator).await.map(|_| ()),
            Backend::Postgres { .. } => Ok(()),
        }
    }

    /// The name and email of account `id`.
    pub async fn user_profile(&self, id: &str) -> Result<Option<(String, String)>, DbError> {
        Ok(on_users!(
            &self.backend,
            sqlx::query_as("SELECT name, email FROM users WHERE id = $1").bind(id),
            fetch_optional
        )?)
    }

    /// The TOTP enrolment of account `id`: its secret and whether it is
    /// confirmed.
    pub async fn totp_of(&self, id: &str) -> Result<Option<(Vec<u8>, bool)>, DbError> {
        let row: Option<(Vec<u8>, i64)> = on_users!(
            &self.backend,
            sqlx::query_as("SELECT secret, last_step FROM user_totp WHERE user_id = $1").bind(id),
            fetch_optional
        )?;
        Ok(row.map(|(secret, step)| (secret, step >= 0)))
    }

    /// Starts (or restarts) an unconfirmed enrolment; `false` when the
    /// account already has a confirmed one (it is not replaced).
    pub async fn enrol_totp(&self, id: &str, secret: &[u8]) -> Result<bool, DbError> {
        let done: Option<(String,)> = on_users!(
            &self.backend,
            sqlx::query_as(
                "INSERT INTO user_totp (user_id, secret, last_step) VALUES ($1, $2, -1) \
                 ON CONFLICT (user_id) DO UPDATE SET secret = excluded.secret, last_step = -1 \
                 WHERE user_totp.last_step < 0 RETURNING user_id",
            )
            .bind(id)
            .bind(secret),
            fetch_optional
        )?;
        Ok(done.is_some())
    }

    /// Records that the code of time step `step` was used (confirming a
    /// pending enrolment, or signing in with a confirmed one when
    /// `confirmed`): `false` when that step, or a later one, was used
    /// already — a replayed code.
    pub async fn use_totp_step(
        &self,
        id: &str,
        step: u64,
        confirmed: bool,
    ) -> Result<bool, DbError> {
        let step = i64::try_from(step).unwrap_or(i64::MAX);
        let sql = if confirmed {
            "UPDATE user_totp SET last_step = $2 WHERE user_id = $1 AND last_step >= 0 AND last_step < $2 RETURNING user_id"
        } else {
            "UPDATE user_totp SET last_step = $2 WHERE user_id = $1 AND last_step < 0 RETURNING user_id"
        };
        let done: Option<(String,)> = on_users!(
            &self.backend,
            sqlx::query_as(sql).bind(id).bind(step),
            fetch_optional
        )?;
        Ok(done.is_some())
    }

    /// Adds an account (`email` normalised, `password_hash` argon2id).
    pub async fn insert_user(
        &self,
        id: &str,
        email: &str,
        name: &str,
        password_hash: &str,
    ) -> Result<(), DbError> {
        let now = Utc::now();
        on_users!(
            &self.backend,
            sqlx::query(
                "INSERT INTO users (id, email, name, password_hash, created_at) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(id)
            .bind(email)
            .bind(name)
            .bind(password_hash)
            .bind(now),
            execute
        )?;
        Ok(())
    }

    /// Registers a tenant and creates its storage at the latest schema: on
    /// SQLite a file of its own (idempotent for the file; the record must be
    /// new), on PostgreSQL only the record (tenants share the tables).
    pub async fn create_tenant(&self, tenant: Tenant) -> Result<Tenant, DbError> {
        match &self.backend {
            Backend::Sqlite {
                control,
                tenants,
                migrator,
            } => {
                let id = tenant.id;
                let placement = Placement::database(&Placement::name_for(id)).map_err(|e| {
                    DbError::Placement {
                        tenant: id,
                        reason: e.to_string(),
                    }
                })?;
                let tenant = tenant.with_placement(placement);
                tenants.provision(&tenant, migrator).await?;
                control.tenants().create(&tenant).await?;
                Ok(tenant)
            }
            Backend::Postgres { .. } => {
                let tenant = tenant.with_placement(Placement::Shared);
                self.tenant_store().create(&tenant).await?;
                Ok(tenant)
            }
        }
    }

    /// Applies field-level changes to a tenant's record as stored (see
    /// [`TenantUpdate`]) and drops it from the cache.
    pub async fn update_tenant(
        &self,
        id: TenantId,
        update: &TenantUpdate,
    ) -> Result<Arc<Tenant>, WriteError> {
        let next = self.tenant_store().update(id, update).await?;
        self.store.invalidate_tenant(&next).await;
        Ok(next)
    }

    /// Moves a tenant through its lifecycle; refused (409) when its status
    /// changed since `tenant` was read.
    pub async fn transition(
        &self,
        tenant: &Tenant,
        transition: Transition,
        actor: &str,
    ) -> Result<Tenant, LifecycleError> {
        let ends_sessions = matches!(
            transition,
            Transition::Suspend { .. } | Transition::Offboard { .. } | Transition::Purge
        );
        let result = Lifecycle::new(Arc::new(self.tenant_store()))
            .with_outbox(crate::billing::BILLING)
            .apply(tenant, transition, actor)
            .await;
        self.store.invalidate(tenant.id).await;
        // Suspended, offboarded, deleted: the sessions issued before end for
        // good — a later resumption does not bring them back.
        if result.is_ok() && ends_sessions {
            self.session_epochs()
                .revoke_tenant(tenant.id)
                .await
                .map_err(LifecycleError::Store)?;
        }
        result
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

    /// Brings every tenant to the latest schema: each tenant file on SQLite;
    /// the shared tables on PostgreSQL (every tenant at once).
    pub async fn migrate_all(
        &self,
        progress: impl Fn(&tenancy_sqlx::tenant_migrate::Progress) + Send + Sync,
    ) -> Result<RolloutReport, DbError> {
        let tenants: Vec<Tenant> = self
            .tenant_store()
            .list()
            .await?
            .iter()
            .map(|t| (**t).clone())
            .collect();
        match &self.backend {
            Backend::Sqlite {
                tenants: files,
                migrator,
                ..
            } => files.migrate(migrator, &tenants, progress).await,
            Backend::Postgres {
                owner, app_role, ..
            } => {
                let applied = crate::postgres::apply_schema(owner, app_role).await?;
                let mut report = RolloutReport::default();
                if applied {
                    report.migrated = tenants.iter().map(|t| t.id).collect();
                } else {
                    report.up_to_date = tenants.len();
                }
                Ok(report)
            }
        }
    }
}

/// The user name in a PostgreSQL URL.
fn role_of(url: &str) -> Result<String, DbError> {
    use std::str::FromStr;
    let options = sqlx::postgres::PgConnectOptions::from_str(url)?;
    Ok(options.get_username().to_owned())
}
