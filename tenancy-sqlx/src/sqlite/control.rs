//! The control database of a SQLite deployment: tenants, their domains and
//! memberships in one file beside the tenant files ([`SqliteControl`]).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Executor, SqlitePool};
use tenancy_core::crypto::CryptoError;
use tenancy_core::crypto::keys::{KeyState, KeyStore, StoredKey};
use tenancy_core::invite::{Invitation, InvitationStore};
use tenancy_core::store::{TenantStore, TenantUpdate, TenantWriter, UniqueViolation, WriteError};
use tenancy_core::{
    DomainName, Membership, MembershipStore, MembershipWriter, StoreError, Tenant, TenantId,
    TenantSlug, UserId,
};

use crate::DbError;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS tenancy_tenants (
    id         TEXT PRIMARY KEY NOT NULL,
    slug       TEXT NOT NULL UNIQUE,
    record     TEXT NOT NULL,
    updated_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP
);
CREATE TABLE IF NOT EXISTS tenancy_tenant_domains (
    domain    TEXT PRIMARY KEY NOT NULL,
    tenant_id TEXT NOT NULL REFERENCES tenancy_tenants (id) ON DELETE CASCADE
);
CREATE INDEX IF NOT EXISTS tenancy_tenant_domains_tenant ON tenancy_tenant_domains (tenant_id);
CREATE TABLE IF NOT EXISTS tenancy_memberships (
    user_id   TEXT NOT NULL,
    tenant_id TEXT NOT NULL REFERENCES tenancy_tenants (id) ON DELETE CASCADE,
    record    TEXT NOT NULL,
    PRIMARY KEY (user_id, tenant_id)
);
CREATE INDEX IF NOT EXISTS tenancy_memberships_tenant ON tenancy_memberships (tenant_id);
CREATE TABLE IF NOT EXISTS tenancy_monthly_usage (
    tenant_id TEXT    NOT NULL REFERENCES tenancy_tenants (id) ON DELETE CASCADE,
    resource  TEXT    NOT NULL,
    month     TEXT    NOT NULL,
    used      INTEGER NOT NULL DEFAULT 0 CHECK (used >= 0),
    PRIMARY KEY (tenant_id, resource, month)
);
CREATE TABLE IF NOT EXISTS tenancy_invitations (
    id          TEXT PRIMARY KEY NOT NULL,
    tenant_id   TEXT NOT NULL REFERENCES tenancy_tenants (id) ON DELETE CASCADE,
    email       TEXT NOT NULL,
    role        TEXT NOT NULL,
    token_hash  BLOB NOT NULL UNIQUE,
    invited_by  TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    expires_at  TEXT NOT NULL,
    accepted_at TEXT,
    accepted_by TEXT
);
CREATE TABLE IF NOT EXISTS tenancy_tenant_keys (
    tenant_id  TEXT    NOT NULL,
    version    INTEGER NOT NULL CHECK (version >= 0),
    wrapped    BLOB    NOT NULL,
    state      TEXT    NOT NULL CHECK (state IN ('primary', 'retired', 'destroyed')),
    created_at TEXT    NOT NULL,
    reserved   INTEGER NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    PRIMARY KEY (tenant_id, version)
);
-- Session epochs (tenancy_core::session): counters that only increase.
CREATE TABLE IF NOT EXISTS tenancy_session_epochs (
    key   TEXT PRIMARY KEY NOT NULL,
    epoch INTEGER NOT NULL CHECK (epoch >= 0)
);
-- Every change to a tenant, its domains or its keys, in commit order, for
-- other processes on this control database (SqliteChangeWatcher). Written
-- by triggers, so no writer can forget it; bounded to the last 10 000.
CREATE TABLE IF NOT EXISTS tenancy_changes (
    seq       INTEGER PRIMARY KEY AUTOINCREMENT,
    kind      TEXT NOT NULL CHECK (kind IN ('slug', 'domain', 'key')),
    tenant_id TEXT NOT NULL,
    name      TEXT
);
CREATE TRIGGER IF NOT EXISTS tenancy_changes_bound AFTER INSERT ON tenancy_changes
BEGIN DELETE FROM tenancy_changes WHERE seq <= NEW.seq - 10000; END;
CREATE TRIGGER IF NOT EXISTS tenancy_tenants_changed_ins AFTER INSERT ON tenancy_tenants
BEGIN INSERT INTO tenancy_changes (kind, tenant_id, name) VALUES ('slug', NEW.id, NEW.slug); END;
CREATE TRIGGER IF NOT EXISTS tenancy_tenants_changed_upd AFTER UPDATE ON tenancy_tenants
BEGIN
    INSERT INTO tenancy_changes (kind, tenant_id, name) VALUES ('slug', NEW.id, OLD.slug);
    INSERT INTO tenancy_changes (kind, tenant_id, name)
        SELECT 'slug', NEW.id, NEW.slug WHERE NEW.slug <> OLD.slug;
END;
CREATE TRIGGER IF NOT EXISTS tenancy_tenants_changed_del AFTER DELETE ON tenancy_tenants
BEGIN INSERT INTO tenancy_changes (kind, tenant_id, name) VALUES ('slug', OLD.id, OLD.slug); END;
CREATE TRIGGER IF NOT EXISTS tenancy_domains_changed_ins AFTER INSERT ON tenancy_tenant_domains
BEGIN INSERT INTO tenancy_changes (kind, tenant_id, name) VALUES ('domain', NEW.tenant_id, NEW.domain); END;
CREATE TRIGGER IF NOT EXISTS tenancy_domains_changed_del AFTER DELETE ON tenancy_tenant_domains
BEGIN INSERT INTO tenancy_changes (kind, tenant_id, name) VALUES ('domain', OLD.tenant_id, OLD.domain); END;
CREATE TRIGGER IF NOT EXISTS tenancy_keys_changed_ins AFTER INSERT ON tenancy_tenant_keys
BEGIN INSERT INTO tenancy_changes (kind, tenant_id) VALUES ('key', NEW.tenant_id); END;
-- Nonce reservations (column `reserved`) are not key changes.
DROP TRIGGER IF EXISTS tenancy_keys_changed_upd;
CREATE TRIGGER IF NOT EXISTS tenancy_keys_changed_state
    AFTER UPDATE OF wrapped, state ON tenancy_tenant_keys
BEGIN INSERT INTO tenancy_changes (kind, tenant_id) VALUES ('key', NEW.tenant_id); END;
CREATE TRIGGER IF NOT EXISTS tenancy_keys_changed_del AFTER DELETE ON tenancy_tenant_keys
BEGIN INSERT INTO tenancy_changes (kind, tenant_id) VALUES ('key', OLD.tenant_id); END;
";

/// The control database of a SQLite deployment (one file, WAL): the tenant
/// registry ([`SqliteTenantStore`]) and memberships
/// ([`SqliteMembershipStore`]). Tenant data never goes here: each tenant has
/// its own file ([`SqliteTenantDb`](super::SqliteTenantDb)).
///
/// Records are stored as JSON (the serde form of [`Tenant`] and
/// [`Membership`]) beside the columns they are looked up by, so new fields
/// of the core types need no migration.
///
/// ```no_run
/// use tenancy_core::store::{CachedStore, TenantStore};
/// use tenancy_sqlx::sqlite::SqliteControl;
///
/// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
/// let control = SqliteControl::open("./data/control.sqlite3").await?;
/// let tenants = CachedStore::new(control.tenants());
/// let acme = tenants.by_slug(&"acme".parse()?).await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct SqliteControl {
    pool: SqlitePool,
}

impl SqliteControl {
    /// Opens (creating if needed) the control database at `path` and
    /// creates its tables.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self, DbError> {
        let path = path.as_ref();
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| DbError::Export(format!("cannot create {}: {e}", parent.display())))?;
        }
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(
                SqliteConnectOptions::new()
                    .filename(path)
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Normal)
                    .foreign_keys(true)
                    .busy_timeout(Duration::from_secs(5)),
            )
            .await?;
        (&pool).execute(SCHEMA).await?;
        (&pool).execute(super::outbox::OUTBOX_TABLE).await?;
        add_reserved_column(&pool).await?;
        Ok(Self { pool })
    }

    /// The pool (for the application's own control tables, e.g. users).
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// The tenant registry.
    pub fn tenants(&self) -> SqliteTenantStore {
        SqliteTenantStore {
            pool: self.pool.clone(),
        }
    }

    /// The wrapped data keys (for `tenancy_core::crypto::keys::Keyring`).
    pub fn keys(&self) -> SqliteKeyStore {
        SqliteKeyStore {
            pool: self.pool.clone(),
        }
    }

    /// Invitations (token hashes only; see `tenancy_core::invite`).
    pub fn invitations(&self) -> SqliteInvitationStore {
        SqliteInvitationStore {
            pool: self.pool.clone(),
        }
    }

    /// Usage per calendar month (feature `calendar`).
    #[cfg(feature = "calendar")]
    pub fn monthly_usage(&self) -> SqliteMonthlyUsage {
        SqliteMonthlyUsage {
            pool: self.pool.clone(),
            outbox: None,
        }
    }

    /// The outbox's relay side (see [`super::outbox`]).
    pub fn outbox(&self) -> super::SqliteOutbox {
        super::SqliteOutbox {
            pool: self.pool.clone(),
        }
    }

    /// Session epochs (revocable sessions).
    pub fn session_epochs(&self) -> SqliteSessionEpochs {
        SqliteSessionEpochs {
            pool: self.pool.clone(),
        }
    }

    /// The memberships.
    pub fn memberships(&self) -> SqliteMembershipStore {
        SqliteMembershipStore {
            pool: self.pool.clone(),
        }
    }
}

/// Tenants in the control database: [`TenantStore`] and [`TenantWriter`].
#[derive(Debug, Clone)]
pub struct SqliteTenantStore {
    pool: SqlitePool,
}

fn invalid(what: &'static str, reason: impl std::fmt::Display) -> DbError {
    DbError::InvalidData {
        what,
        reason: reason.to_string(),
    }
}

fn decode_tenant(record: &str) -> Result<Arc<Tenant>, DbError> {
    serde_json::from_str(record)
        .map(Arc::new)
        .map_err(|e| invalid("tenancy_tenants.record", e))
}

fn map_unique(e: sqlx::Error) -> DbError {
    if let sqlx::Error::Database(db) = &e
        && db.is_unique_violation()
    {
        return DbError::Conflict(db.message().to_owned());
    }
    DbError::Sqlx(e)
}

impl SqliteTenantStore {
    async fn fetch(&self, sql: &str, key: &str) -> Result<Option<Arc<Tenant>>, DbError> {
        let record: Option<String> = sqlx::query_scalar(sql)
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        record.as_deref().map(decode_tenant).transpose()
    }

    /// Adds a tenant, stored at version 1; an existing id, slug or domain is
    /// [`DbError::Conflict`].
    pub async fn create(&self, tenant: &Tenant) -> Result<(), DbError> {
        let mut tenant = tenant.clone();
        tenant.version = 1;
        let record = serde_json::to_string(&tenant).map_err(|e| invalid("tenant", e))?;
        let id = tenant.id.to_string();
        let mut tx = self.pool.begin().await?;
        sqlx::query("INSERT INTO tenancy_tenants (id, slug, record) VALUES ($1, $2, $3)")
            .bind(&id)
            .bind(tenant.slug.as_str())
            .bind(&record)
            .execute(&mut *tx)
            .await
            .map_err(map_unique)?;
        for d in &tenant.domains {
            sqlx::query("INSERT INTO tenancy_tenant_domains (domain, tenant_id) VALUES ($1, $2)")
                .bind(d.as_str())
                .bind(&id)
                .execute(&mut *tx)
                .await
                .map_err(map_unique)?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Applies `update` to tenant `id`: the change is applied to the record
    /// as stored ([`TenantUpdate::apply_to`]) and written only if the stored
    /// version has not moved (compare-and-set in the `UPDATE` itself, with
    /// the domains in the same transaction). A writer that lost the race
    /// reads again and re-applies its fields, so concurrent updates of
    /// different fields both persist; an update that insists on a version
    /// someone else has moved past is [`WriteError::Conflict`].
    pub async fn apply(
        &self,
        id: TenantId,
        update: &TenantUpdate,
    ) -> Result<Arc<Tenant>, WriteError> {
        let store = |e: DbError| WriteError::Store(StoreError::new(e));
        let key = id.to_string();
        // Each lost race means another writer committed: progress is
        // guaranteed, the bound only stops a pathological storm.
        for _ in 0..64 {
            let current = self
                .fetch("SELECT record FROM tenancy_tenants WHERE id = $1", &key)
                .await
                .map_err(store)?
                .ok_or(WriteError::NotFound(id))?;
            let next = update.apply_to(&current, chrono::Utc::now())?;
            let record = serde_json::to_string(&next).map_err(|e| store(invalid("tenant", e)))?;
            let mut tx = self.pool.begin().await.map_err(|e| store(e.into()))?;
            let done = sqlx::query(
                "UPDATE tenancy_tenants SET slug = $2, record = $3, updated_at = CURRENT_TIMESTAMP \
                 WHERE id = $1 AND COALESCE(json_extract(record, '$.version'), 0) = $4",
            )
            .bind(&key)
            .bind(next.slug.as_str())
            .bind(&record)
            .bind(i64::try_from(current.version).map_err(|e| store(invalid("version", e)))?)
            .execute(&mut *tx)
            .await
            .map_err(|e| sqlite_unique_or(e, || UniqueViolation::Slug(next.slug.clone())))?;
            if done.rows_affected() == 0 {
                tx.rollback().await.map_err(|e| store(e.into()))?;
                continue;
            }
            if update.touches_domains() {
                for d in current.domains.iter().filter(|d| !next.domains.contains(d)) {
                    sqlx::query(
                        "DELETE FROM tenancy_tenant_domains WHERE tenant_id = $1 AND domain = $2",
                    )
                    .bind(&key)
                    .bind(d.as_str())
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| store(e.into()))?;
                }
                for d in next.domains.iter().filter(|d| !current.domains.contains(d)) {
                    sqlx::query(
                        "INSERT INTO tenancy_tenant_domains (domain, tenant_id) VALUES ($1, $2)",
                    )
                    .bind(d.as_str())
                    .bind(&key)
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| sqlite_unique_or(e, || UniqueViolation::Domain(d.clone())))?;
                }
            }
            // The update's outbox messages commit with it, or not at all.
            for m in update.emitted() {
                super::outbox::enqueue(&mut tx, m).await.map_err(store)?;
            }
            tx.commit().await.map_err(|e| store(e.into()))?;
            return Ok(Arc::new(next));
        }
        Err(store(DbError::Conflict(format!(
            "tenant {id} kept changing under 64 attempts to update it"
        ))))
    }

    /// Every tenant, by slug.
    pub async fn list(&self) -> Result<Vec<Arc<Tenant>>, DbError> {
        let records: Vec<String> =
            sqlx::query_scalar("SELECT record FROM tenancy_tenants ORDER BY slug")
                .fetch_all(&self.pool)
                .await?;
        records.iter().map(|r| decode_tenant(r)).collect()
    }
}

/// A unique violation as the [`UniqueViolation`] `which` names; any other
/// error as a store failure.
fn sqlite_unique_or(e: sqlx::Error, which: impl FnOnce() -> UniqueViolation) -> WriteError {
    if let sqlx::Error::Database(db) = &e
        && db.is_unique_violation()
    {
        return WriteError::Unique(which());
    }
    WriteError::Store(StoreError::new(DbError::Sqlx(e)))
}

#[async_trait]
impl TenantStore for SqliteTenantStore {
    async fn by_id(&self, id: TenantId) -> Result<Option<Arc<Tenant>>, StoreError> {
        self.fetch(
            "SELECT record FROM tenancy_tenants WHERE id = $1",
            &id.to_string(),
        )
        .await
        .map_err(StoreError::new)
    }

    async fn by_slug(&self, slug: &TenantSlug) -> Result<Option<Arc<Tenant>>, StoreError> {
        self.fetch(
            "SELECT record FROM tenancy_tenants WHERE slug = $1",
            slug.as_str(),
        )
        .await
        .map_err(StoreError::new)
    }

    async fn by_domain(&self, domain: &DomainName) -> Result<Option<Arc<Tenant>>, StoreError> {
        self.fetch(
            "SELECT t.record FROM tenancy_tenants t \
             JOIN tenancy_tenant_domains d ON d.tenant_id = t.id WHERE d.domain = $1",
            domain.as_str(),
        )
        .await
        .map_err(StoreError::new)
    }
}

#[async_trait]
impl TenantWriter for SqliteTenantStore {
    async fn create(&self, tenant: &Tenant) -> Result<(), StoreError> {
        SqliteTenantStore::create(self, tenant)
            .await
            .map_err(StoreError::new)
    }

    async fn update(&self, id: TenantId, update: &TenantUpdate) -> Result<Arc<Tenant>, WriteError> {
        self.apply(id, update).await
    }
}

/// Memberships in the control database: [`MembershipStore`] and [`MembershipWriter`].
#[derive(Debug, Clone)]
pub struct SqliteMembershipStore {
    pool: SqlitePool,
}

fn decode_membership(record: &str) -> Result<Membership, DbError> {
    serde_json::from_str(record).map_err(|e| invalid("tenancy_memberships.record", e))
}

impl SqliteMembershipStore {
    /// Adds or replaces a membership.
    pub async fn upsert(&self, m: &Membership) -> Result<(), DbError> {
        let record = serde_json::to_string(m).map_err(|e| invalid("membership", e))?;
        sqlx::query(
            "INSERT INTO tenancy_memberships (user_id, tenant_id, record) VALUES ($1, $2, $3) \
             ON CONFLICT (user_id, tenant_id) DO UPDATE SET record = CASE \
               WHEN json_extract(excluded.record, '$.last_active_at') IS NULL \
                AND json_extract(tenancy_memberships.record, '$.last_active_at') IS NOT NULL \
               THEN json_set(excluded.record, '$.last_active_at', \
                    json_extract(tenancy_memberships.record, '$.last_active_at')) \
               ELSE excluded.record END",
        )
        .bind(m.user_id.as_str())
        .bind(m.tenant_id.to_string())
        .bind(record)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Removes a membership; `true` when there was one.
    pub async fn remove(&self, user: &UserId, tenant: TenantId) -> Result<bool, DbError> {
        let done =
            sqlx::query("DELETE FROM tenancy_memberships WHERE user_id = $1 AND tenant_id = $2")
                .bind(user.as_str())
                .bind(tenant.to_string())
                .execute(&self.pool)
                .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Every membership of `tenant`.
    pub async fn members_of(&self, tenant: TenantId) -> Result<Vec<Membership>, DbError> {
        let records: Vec<String> = sqlx::query_scalar(
            "SELECT record FROM tenancy_memberships WHERE tenant_id = $1 ORDER BY user_id",
        )
        .bind(tenant.to_string())
        .fetch_all(&self.pool)
        .await?;
        records.iter().map(|r| decode_membership(r)).collect()
    }
}

#[async_trait]
impl MembershipStore for SqliteMembershipStore {
    async fn membership(
        &self,
        user: &UserId,
        tenant: TenantId,
    ) -> Result<Option<Membership>, StoreError> {
        let record: Option<String> = sqlx::query_scalar(
            "SELECT record FROM tenancy_memberships WHERE user_id = $1 AND tenant_id = $2",
        )
        .bind(user.as_str())
        .bind(tenant.to_string())
        .fetch_optional(&self.pool)
        .await
        .map_err(StoreError::new)?;
        record
            .as_deref()
            .map(decode_membership)
            .transpose()
            .map_err(StoreError::new)
    }

    async fn memberships_of(&self, user: &UserId) -> Result<Vec<Membership>, StoreError> {
        let records: Vec<String> = sqlx::query_scalar(
            "SELECT record FROM tenancy_memberships WHERE user_id = $1 ORDER BY tenant_id",
        )
        .bind(user.as_str())
        .fetch_all(&self.pool)
        .await
        .map_err(StoreError::new)?;
        records
            .iter()
            .map(|r| decode_membership(r))
            .collect::<Result<_, _>>()
            .map_err(StoreError::new)
    }

    async fn members_of(&self, tenant: TenantId) -> Result<Vec<Membership>, StoreError> {
        SqliteMembershipStore::members_of(self, tenant)
            .await
            .map_err(StoreError::new)
    }
}

#[async_trait]
impl MembershipWriter for SqliteMembershipStore {
    async fn put(&self, membership: &Membership) -> Result<(), StoreError> {
        self.upsert(membership).await.map_err(StoreError::new)
    }

    async fn remove(&self, user: &UserId, tenant: TenantId) -> Result<bool, StoreError> {
        SqliteMembershipStore::remove(self, user, tenant)
            .await
            .map_err(StoreError::new)
    }

    async fn touch(
        &self,
        user: &UserId,
        tenant: TenantId,
        at: chrono::DateTime<chrono::Utc>,
    ) -> Result<(), StoreError> {
        let at = at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        sqlx::query(
            "UPDATE tenancy_memberships SET record = json_set(record, '$.last_active_at', $3) \
             WHERE user_id = $1 AND tenant_id = $2",
        )
        .bind(user.as_str())
        .bind(tenant.to_string())
        .bind(at)
        .execute(&self.pool)
        .await
        .map_err(StoreError::new)?;
        Ok(())
    }
}

/// Control databases made before nonce reservations lack the `reserved`
/// column: add it (another process opening the file at the same moment may
/// add it first; that is fine).
async fn add_reserved_column(pool: &SqlitePool) -> Result<(), DbError> {
    if has_reserved_column(pool).await? {
        return Ok(());
    }
    let added = sqlx::query(
        "ALTER TABLE tenancy_tenant_keys \
         ADD COLUMN reserved INTEGER NOT NULL DEFAULT 0 CHECK (reserved >= 0)",
    )
    .execute(pool)
    .await;
    match added {
        Ok(_) => Ok(()),
        Err(_) if has_reserved_column(pool).await? => Ok(()),
        Err(e) => Err(e.into()),
    }
}

async fn has_reserved_column(pool: &SqlitePool) -> Result<bool, DbError> {
    let n: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pragma_table_info('tenancy_tenant_keys') WHERE name = 'reserved'",
    )
    .fetch_one(pool)
    .await?;
    Ok(n > 0)
}

/// Wrapped per-tenant data keys in the control database, apart from the
/// tenant files they protect: a copied tenant file alone cannot be read.
/// Plaintext keys are never stored ([`KeyStore`]).
#[derive(Debug, Clone)]
pub struct SqliteKeyStore {
    pool: SqlitePool,
}

fn key_backend(e: impl std::fmt::Display) -> CryptoError {
    tracing::error!(error = %e, "key store failed");
    CryptoError::KeyStore(e.to_string())
}

fn key_state(s: KeyState) -> &'static str {
    match s {
        KeyState::Primary => "primary",
        KeyState::Retired => "retired",
        _ => "destroyed",
    }
}

#[async_trait]
impl KeyStore for SqliteKeyStore {
    async fn keys(&self, tenant: TenantId) -> Result<Vec<StoredKey>, CryptoError> {
        let rows: Vec<(i64, Vec<u8>, String, DateTime<Utc>, i64)> = sqlx::query_as(
            "SELECT version, wrapped, state, created_at, reserved FROM tenancy_tenant_keys \
             WHERE tenant_id = $1 ORDER BY version",
        )
        .bind(tenant.to_string())
        .fetch_all(&self.pool)
        .await
        .map_err(key_backend)?;
        rows.into_iter()
            .map(|(version, wrapped, state, created_at, reserved)| {
                let state = match state.as_str() {
                    "primary" => KeyState::Primary,
                    "retired" => KeyState::Retired,
                    "destroyed" => KeyState::Destroyed,
                    other => return Err(key_backend(format!("unknown key state {other:?}"))),
                };
                Ok(StoredKey::new(
                    tenant,
                    u32::try_from(version).map_err(key_backend)?,
                    wrapped,
                    state,
                    created_at,
                )
                .with_reserved(u64::try_from(reserved).map_err(key_backend)?))
            })
            .collect()
    }

    async fn insert(&self, key: StoredKey) -> Result<(), CryptoError> {
        let done = sqlx::query(
            "INSERT INTO tenancy_tenant_keys (tenant_id, version, wrapped, state, created_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        )
        .bind(key.tenant.to_string())
        .bind(i64::from(key.version))
        .bind(&key.wrapped)
        .bind(key_state(key.state))
        .bind(key.created_at)
        .execute(&self.pool)
        .await
        .map_err(key_backend)?;
        if done.rows_affected() == 1 {
            Ok(())
        } else {
            Err(CryptoError::KeyStore(format!(
                "key version {} already exists",
                key.version
            )))
        }
    }

    async fn update(&self, key: StoredKey) -> Result<(), CryptoError> {
        let done = sqlx::query(
            "UPDATE tenancy_tenant_keys SET wrapped = $3, state = $4 \
             WHERE tenant_id = $1 AND version = $2",
        )
        .bind(key.tenant.to_string())
        .bind(i64::from(key.version))
        .bind(&key.wrapped)
        .bind(key_state(key.state))
        .execute(&self.pool)
        .await
        .map_err(key_backend)?;
        if done.rows_affected() == 1 {
            Ok(())
        } else {
            Err(CryptoError::KeyStore(format!(
                "no key version {} to update",
                key.version
            )))
        }
    }

    /// Compare-and-set on the reserved count: a reservation that raced
    /// another process's reads again, so grants never overlap.
    async fn reserve(
        &self,
        tenant: TenantId,
        version: u32,
        block: u64,
        limit: u64,
    ) -> Result<u64, CryptoError> {
        for _ in 0..64 {
            let row: Option<(String, i64)> = sqlx::query_as(
                "SELECT state, reserved FROM tenancy_tenant_keys \
                 WHERE tenant_id = $1 AND version = $2",
            )
            .bind(tenant.to_string())
            .bind(i64::from(version))
            .fetch_optional(&self.pool)
            .await
            .map_err(key_backend)?;
            let (state, reserved) = row.ok_or(CryptoError::UnknownKeyVersion(version))?;
            let before = u64::try_from(reserved).map_err(key_backend)?;
            if state != "primary" {
                return Ok(0);
            }
            let granted = block.min(limit.saturating_sub(before));
            if granted == 0 {
                return Ok(0);
            }
            let done = sqlx::query(
                "UPDATE tenancy_tenant_keys SET reserved = $4 \
                 WHERE tenant_id = $1 AND version = $2 AND reserved = $3 AND state = 'primary'",
            )
            .bind(tenant.to_string())
            .bind(i64::from(version))
            .bind(reserved)
            .bind(i64::try_from(before + granted).map_err(key_backend)?)
            .execute(&self.pool)
            .await
            .map_err(key_backend)?;
            if done.rows_affected() == 1 {
                return Ok(granted);
            }
        }
        Err(CryptoError::KeyStore(format!(
            "nonce reservation for key version {version} kept racing; try again"
        )))
    }

    /// One transaction whose first statement writes (so it holds the write
    /// lock throughout): retire `retire` only while it is primary, then insert.
    async fn rotate(&self, retire: u32, next: StoredKey) -> Result<bool, CryptoError> {
        let mut tx = self.pool.begin().await.map_err(key_backend)?;
        let retired = sqlx::query(
            "UPDATE tenancy_tenant_keys SET state = 'retired' \
             WHERE tenant_id = $1 AND version = $2 AND state = 'primary'",
        )
        .bind(next.tenant.to_string())
        .bind(i64::from(retire))
        .execute(&mut *tx)
        .await
        .map_err(key_backend)?;
        if retired.rows_affected() != 1 {
            tx.rollback().await.map_err(key_backend)?;
            return Ok(false);
        }
        let inserted = sqlx::query(
            "INSERT INTO tenancy_tenant_keys (tenant_id, version, wrapped, state, created_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        )
        .bind(next.tenant.to_string())
        .bind(i64::from(next.version))
        .bind(&next.wrapped)
        .bind(key_state(next.state))
        .bind(next.created_at)
        .execute(&mut *tx)
        .await
        .map_err(key_backend)?;
        if inserted.rows_affected() != 1 {
            tx.rollback().await.map_err(key_backend)?;
            return Ok(false);
        }
        tx.commit().await.map_err(key_backend)?;
        Ok(true)
    }
}

/// Invitations in the control database: only the SHA-256 of each token is
/// stored; acceptance is one conditional `UPDATE`, so two acceptances of the
/// same token cannot both succeed ([`InvitationStore`]).
#[derive(Debug, Clone)]
pub struct SqliteInvitationStore {
    pool: SqlitePool,
}

type InvitationRow = (
    String,
    String,
    String,
    String,
    Vec<u8>,
    String,
    DateTime<Utc>,
    DateTime<Utc>,
    Option<DateTime<Utc>>,
    Option<String>,
);

fn invitation_of(r: InvitationRow) -> Result<Invitation, StoreError> {
    let bad = |what: &'static str, e: String| StoreError::new(invalid(what, e));
    let (id, tenant, email, role, hash, by, created, expires, accepted_at, accepted_by) = r;
    Ok(Invitation::new(
        id.parse()
            .map_err(|e: uuid::Error| bad("tenancy_invitations.id", e.to_string()))?,
        tenant.parse().map_err(|e: tenancy_core::TenantIdError| {
            bad("tenancy_invitations.tenant_id", e.to_string())
        })?,
        email,
        role.parse().map_err(|e: tenancy_core::PermissionError| {
            bad("tenancy_invitations.role", e.to_string())
        })?,
        <[u8; 32]>::try_from(hash.as_slice())
            .map_err(|_| bad("tenancy_invitations.token_hash", "not 32 bytes".into()))?,
        UserId::new(by),
        created,
        expires,
        accepted_at.zip(accepted_by.map(UserId::new)),
    ))
}

#[async_trait]
impl InvitationStore for SqliteInvitationStore {
    async fn insert(&self, i: &Invitation) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO tenancy_invitations (id, tenant_id, email, role, token_hash, invited_by, \
             created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(i.id.to_string())
        .bind(i.tenant.to_string())
        .bind(&i.email)
        .bind(i.role.as_str())
        .bind(i.token_hash.as_slice())
        .bind(i.invited_by.as_str())
        .bind(i.created_at)
        .bind(i.expires_at)
        .execute(&self.pool)
        .await
        .map_err(StoreError::new)?;
        Ok(())
    }

    async fn by_hash(
        &self,
        tenant: TenantId,
        hash: &[u8; 32],
    ) -> Result<Option<Invitation>, StoreError> {
        let row: Option<InvitationRow> = sqlx::query_as(
            "SELECT id, tenant_id, email, role, token_hash, invited_by, created_at, expires_at, \
             accepted_at, accepted_by FROM tenancy_invitations WHERE tenant_id = $1 AND token_hash = $2",
        )
        .bind(tenant.to_string())
        .bind(hash.as_slice())
        .fetch_optional(&self.pool)
        .await
        .map_err(StoreError::new)?;
        row.map(invitation_of).transpose()
    }

    async fn mark_accepted(
        &self,
        tenant: TenantId,
        hash: &[u8; 32],
        user: &UserId,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE tenancy_invitations SET accepted_at = $3, accepted_by = $4 \
             WHERE tenant_id = $1 AND token_hash = $2 AND accepted_at IS NULL AND expires_at > $3",
        )
        .bind(tenant.to_string())
        .bind(hash.as_slice())
        .bind(now)
        .bind(user.as_str())
        .execute(&self.pool)
        .await
        .map_err(StoreError::new)?;
        Ok(done.rows_affected() == 1)
    }

    async fn release(
        &self,
        tenant: TenantId,
        hash: &[u8; 32],
        user: &UserId,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE tenancy_invitations SET accepted_at = NULL, accepted_by = NULL \
             WHERE tenant_id = $1 AND token_hash = $2 AND accepted_by = $3",
        )
        .bind(tenant.to_string())
        .bind(hash.as_slice())
        .bind(user.as_str())
        .execute(&self.pool)
        .await
        .map_err(StoreError::new)?;
        Ok(done.rows_affected() == 1)
    }

    async fn revoke(&self, tenant: TenantId, id: uuid::Uuid) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "DELETE FROM tenancy_invitations WHERE tenant_id = $1 AND id = $2 AND accepted_at IS NULL",
        )
        .bind(tenant.to_string())
        .bind(id.to_string())
        .execute(&self.pool)
        .await
        .map_err(StoreError::new)?;
        Ok(done.rows_affected() == 1)
    }

    /// Counts the control database's memberships (the `members` argument is
    /// not consulted) and invitations inside `BEGIN IMMEDIATE`, which holds
    /// the file's write lock: concurrent calls, from any process, queue.
    async fn insert_within(
        &self,
        i: &Invitation,
        limit: u64,
        _members: &dyn tenancy_core::MembershipStore,
        now: DateTime<Utc>,
    ) -> Result<Result<(), u64>, StoreError> {
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(StoreError::new)?;
        let used = sqlite_seats(&mut tx, i.tenant, now).await?;
        if used >= limit {
            return Ok(Err(used));
        }
        sqlx::query(
            "INSERT INTO tenancy_invitations (id, tenant_id, email, role, token_hash, invited_by, \
             created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(i.id.to_string())
        .bind(i.tenant.to_string())
        .bind(&i.email)
        .bind(i.role.as_str())
        .bind(i.token_hash.as_slice())
        .bind(i.invited_by.as_str())
        .bind(i.created_at)
        .bind(i.expires_at)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::new)?;
        tx.commit().await.map_err(StoreError::new)?;
        Ok(Ok(()))
    }

    async fn seats_used(
        &self,
        tenant: TenantId,
        _members: &dyn tenancy_core::MembershipStore,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let mut conn = self.pool.acquire().await.map_err(StoreError::new)?;
        sqlite_seats(&mut conn, tenant, now).await
    }
}

/// Session epochs in the control database ([`SqliteControl::session_epochs`]),
/// shared by every process on it.
#[derive(Debug, Clone)]
pub struct SqliteSessionEpochs {
    pool: SqlitePool,
}

impl SqliteSessionEpochs {
    async fn bump(&self, key: String) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO tenancy_session_epochs (key, epoch) VALUES (?1, 1) \
             ON CONFLICT (key) DO UPDATE SET epoch = epoch + 1",
        )
        .bind(key)
        .execute(&self.pool)
        .await
        .map_err(|e| StoreError::new(DbError::from(e)))?;
        Ok(())
    }
}

#[async_trait]
impl tenancy_core::session::SessionEpochs for SqliteSessionEpochs {
    async fn epoch(&self, tenant: TenantId, user: &UserId) -> Result<u64, StoreError> {
        let [m, u, t] = tenancy_core::session::counter_keys(tenant, user);
        let sum: Option<i64> = sqlx::query_scalar(
            "SELECT sum(epoch) FROM tenancy_session_epochs WHERE key IN (?1, ?2, ?3)",
        )
        .bind(m)
        .bind(u)
        .bind(t)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| StoreError::new(DbError::from(e)))?;
        Ok(u64::try_from(sum.unwrap_or(0)).unwrap_or(0))
    }

    async fn revoke(&self, tenant: TenantId, user: &UserId) -> Result<(), StoreError> {
        self.bump(tenancy_core::session::membership_counter_key(tenant, user))
            .await
    }

    async fn revoke_user(&self, user: &UserId) -> Result<(), StoreError> {
        self.bump(tenancy_core::session::user_counter_key(user))
            .await
    }

    async fn revoke_tenant(&self, tenant: TenantId) -> Result<(), StoreError> {
        self.bump(tenancy_core::session::tenant_counter_key(tenant))
            .await
    }
}

/// Members plus pending invitations ([`InvitationStore::seats_used`]).
async fn sqlite_seats(
    conn: &mut sqlx::SqliteConnection,
    tenant: TenantId,
    now: DateTime<Utc>,
) -> Result<u64, StoreError> {
    let used: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM tenancy_memberships WHERE tenant_id = $1) \
              + (SELECT count(*) FROM tenancy_invitations i WHERE i.tenant_id = $1 \
                 AND i.expires_at > $2 AND (i.accepted_at IS NULL OR (i.accepted_at > $3 \
                 AND NOT EXISTS (SELECT 1 FROM tenancy_memberships m \
                                 WHERE m.tenant_id = i.tenant_id AND m.user_id = i.accepted_by))))",
    )
    .bind(tenant.to_string())
    .bind(now)
    .bind(now - tenancy_core::invite::ACCEPT_GRACE)
    .fetch_one(&mut *conn)
    .await
    .map_err(StoreError::new)?;
    Ok(u64::try_from(used).unwrap_or(0))
}

/// Monthly counters in the control database (feature `calendar`): an add is
/// one conditional `UPDATE`, serialised by SQLite's write lock, so
/// concurrent adds (from any process) never pass the cap together.
#[cfg(feature = "calendar")]
#[derive(Debug, Clone)]
pub struct SqliteMonthlyUsage {
    pool: SqlitePool,
    outbox: Option<Arc<str>>,
}

#[cfg(feature = "calendar")]
impl SqliteMonthlyUsage {
    /// Also writes each accepted consumption to the outbox
    /// (`tenancy_outbox`, topic `usage.recorded` on `channel`) in the
    /// transaction that counts it.
    pub fn with_outbox(mut self, channel: &str) -> Self {
        self.outbox = Some(channel.into());
        self
    }
}

#[cfg(feature = "calendar")]
#[async_trait]
impl tenancy_core::quota::monthly::MonthlyStore for SqliteMonthlyUsage {
    async fn add(
        &self,
        tenant: TenantId,
        resource: &str,
        month: &str,
        amount: u64,
        cap: u64,
    ) -> Result<Result<(u64, u64), u64>, StoreError> {
        let amount = i64::try_from(amount).map_err(StoreError::new)?;
        let cap = i64::try_from(cap).unwrap_or(i64::MAX);
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(StoreError::new)?;
        sqlx::query(
            "INSERT INTO tenancy_monthly_usage (tenant_id, resource, month, used) \
             VALUES ($1, $2, $3, 0) ON CONFLICT DO NOTHING",
        )
        .bind(tenant.to_string())
        .bind(resource)
        .bind(month)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::new)?;
        let current: i64 = sqlx::query_scalar(
            "SELECT used FROM tenancy_monthly_usage WHERE tenant_id = $1 AND resource = $2 AND month = $3",
        )
        .bind(tenant.to_string())
        .bind(resource)
        .bind(month)
        .fetch_one(&mut *tx)
        .await
        .map_err(StoreError::new)?;
        let outcome = if current <= cap.saturating_sub(amount) {
            sqlx::query(
                "UPDATE tenancy_monthly_usage SET used = used + $4 \
                 WHERE tenant_id = $1 AND resource = $2 AND month = $3",
            )
            .bind(tenant.to_string())
            .bind(resource)
            .bind(month)
            .bind(amount)
            .execute(&mut *tx)
            .await
            .map_err(StoreError::new)?;
            if let Some(channel) = self.outbox.as_deref() {
                let record = tenancy_core::outbox::OutboxMessage::new(
                    tenant,
                    channel,
                    "usage.recorded",
                    serde_json::json!({
                        "resource": resource, "month": month, "amount": amount,
                        "used": current + amount,
                    }),
                );
                super::outbox::enqueue(&mut tx, &record)
                    .await
                    .map_err(StoreError::new)?;
            }
            Ok((
                u64::try_from(current).unwrap_or(0),
                u64::try_from(current + amount).unwrap_or(0),
            ))
        } else {
            Err(u64::try_from(current).unwrap_or(0))
        };
        tx.commit().await.map_err(StoreError::new)?;
        Ok(outcome)
    }

    async fn used(&self, tenant: TenantId, resource: &str, month: &str) -> Result<u64, StoreError> {
        let used: Option<i64> = sqlx::query_scalar(
            "SELECT used FROM tenancy_monthly_usage WHERE tenant_id = $1 AND resource = $2 AND month = $3",
        )
        .bind(tenant.to_string())
        .bind(resource)
        .bind(month)
        .fetch_optional(&self.pool)
        .await
        .map_err(StoreError::new)?;
        Ok(used.and_then(|u| u64::try_from(u).ok()).unwrap_or(0))
    }
}
