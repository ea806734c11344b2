//! A PostgreSQL [`SettingsStore`] for per-tenant settings.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tenancy_core::TenantId;
use tenancy_core::crypto::Encrypted;
use tenancy_core::settings::{SettingEntry, SettingsError, SettingsStore, StoredValue};

use crate::TenantDb;

/// Setting entries in `tenancy.tenant_settings` (tenant rows under row-level
/// security; every call runs in a transaction scoped to the tenant). Secret
/// values arrive here already sealed and are stored as `bytea`.
///
/// ```no_run
/// # async fn example(db: tenancy_sqlx::TenantDb, keys: std::sync::Arc<tenancy_core::crypto::keys::Keyring>) {
/// use std::sync::Arc;
/// use tenancy_core::settings::TenantSettings;
/// use tenancy_sqlx::PgSettingsStore;
///
/// let settings = TenantSettings::new(Arc::new(PgSettingsStore::new(db)), keys);
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct PgSettingsStore {
    db: TenantDb,
}

impl PgSettingsStore {
    /// A store over `db` (the application role needs the grants from
    /// [`crate::migrate::grant_system_read`]).
    pub fn new(db: TenantDb) -> Self {
        Self { db }
    }
}

fn backend(e: impl std::fmt::Display) -> SettingsError {
    tracing::error!(error = %e, "settings store failed");
    SettingsError::Store(e.to_string())
}

type Row = (
    String,
    Option<serde_json::Value>,
    Option<Vec<u8>>,
    DateTime<Utc>,
);

fn entry((key, value, secret, updated_at): Row) -> Result<SettingEntry, SettingsError> {
    let value = match (value, secret) {
        (Some(v), None) => StoredValue::Plain(v),
        (None, Some(s)) => StoredValue::Secret(Encrypted::from_bytes(s)?),
        _ => return Err(backend(format!("setting {key:?} has no single value"))),
    };
    Ok(SettingEntry::new(key, value, updated_at))
}

#[async_trait]
impl SettingsStore for PgSettingsStore {
    async fn get(
        &self,
        tenant: TenantId,
        key: &str,
    ) -> Result<Option<SettingEntry>, SettingsError> {
        let mut tx = self.db.begin_for_id(tenant).await.map_err(backend)?;
        let row: Option<Row> = sqlx::query_as(
            "SELECT key, value, secret, updated_at FROM tenancy.tenant_settings \
             WHERE tenant_id = $1 AND key = $2",
        )
        .bind(tenant.as_uuid())
        .bind(key)
        .fetch_optional(&mut *tx)
        .await
        .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        row.map(entry).transpose()
    }

    async fn list(&self, tenant: TenantId) -> Result<Vec<SettingEntry>, SettingsError> {
        let mut tx = self.db.begin_for_id(tenant).await.map_err(backend)?;
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT key, value, secret, updated_at FROM tenancy.tenant_settings \
             WHERE tenant_id = $1 ORDER BY key",
        )
        .bind(tenant.as_uuid())
        .fetch_all(&mut *tx)
        .await
        .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        rows.into_iter().map(entry).collect()
    }

    async fn put(&self, tenant: TenantId, e: SettingEntry) -> Result<(), SettingsError> {
        let (value, secret) = match &e.value {
            StoredValue::Plain(v) => (Some(v), None),
            StoredValue::Secret(s) => (None, Some(s.as_bytes())),
            _ => return Err(backend("unsupported setting value kind")),
        };
        let mut tx = self.db.begin_for_id(tenant).await.map_err(backend)?;
        sqlx::query(
            "INSERT INTO tenancy.tenant_settings (tenant_id, key, value, secret, updated_at) \
             VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (tenant_id, key) DO UPDATE \
             SET value = EXCLUDED.value, secret = EXCLUDED.secret, updated_at = EXCLUDED.updated_at",
        )
        .bind(tenant.as_uuid())
        .bind(&e.key)
        .bind(value)
        .bind(secret)
        .bind(e.updated_at)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        tx.commit().await.map_err(backend)
    }

    async fn delete(&self, tenant: TenantId, key: &str) -> Result<bool, SettingsError> {
        let mut tx = self.db.begin_for_id(tenant).await.map_err(backend)?;
        let done =
            sqlx::query("DELETE FROM tenancy.tenant_settings WHERE tenant_id = $1 AND key = $2")
                .bind(tenant.as_uuid())
                .bind(key)
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        Ok(done.rows_affected() == 1)
    }
}
