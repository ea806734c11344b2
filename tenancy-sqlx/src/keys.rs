//! A PostgreSQL [`KeyStore`] for the crypto key hierarchy.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tenancy_core::TenantId;
use tenancy_core::crypto::CryptoError;
use tenancy_core::crypto::keys::{KeyState, KeyStore, StoredKey};

use crate::TenantDb;

/// Wrapped data keys in `tenancy.tenant_keys` (tenant rows under row-level
/// security; every call runs in a transaction scoped to the key's tenant).
///
/// ```no_run
/// # async fn example(db: tenancy_sqlx::TenantDb) -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use tenancy_core::crypto::keys::{Keyring, LocalKeyProvider};
/// use tenancy_sqlx::PgKeyStore;
///
/// let master = LocalKeyProvider::master_from_base64(&std::env::var("TENANCY_MASTER_KEY")?)?;
/// let keys = Keyring::new(Arc::new(LocalKeyProvider::new(master)), Arc::new(PgKeyStore::new(db)));
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct PgKeyStore {
    db: TenantDb,
}

impl PgKeyStore {
    /// A store over `db` (the application role needs the grants from
    /// [`crate::migrate::grant_system_read`]).
    pub fn new(db: TenantDb) -> Self {
        Self { db }
    }
}

fn backend(e: impl std::fmt::Display) -> CryptoError {
    tracing::error!(error = %e, "key store failed");
    CryptoError::KeyStore(e.to_string())
}

fn state_text(s: KeyState) -> &'static str {
    match s {
        KeyState::Primary => "primary",
        KeyState::Retired => "retired",
        _ => "destroyed",
    }
}

#[async_trait]
impl KeyStore for PgKeyStore {
    async fn keys(&self, tenant: TenantId) -> Result<Vec<StoredKey>, CryptoError> {
        let mut tx = self.db.begin_for_id(tenant).await.map_err(backend)?;
        let rows: Vec<(i32, Vec<u8>, String, DateTime<Utc>, i64)> = sqlx::query_as(
            "SELECT version, wrapped, state, created_at, reserved FROM tenancy.tenant_keys \
             WHERE tenant_id = $1 ORDER BY version",
        )
        .bind(tenant.as_uuid())
        .fetch_all(&mut *tx)
        .await
        .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        rows.into_iter()
            .map(|(version, wrapped, state, created_at, reserved)| {
                let state = match state.as_str() {
                    "primary" => KeyState::Primary,
                    "retired" => KeyState::Retired,
                    "destroyed" => KeyState::Destroyed,
                    other => return Err(backend(format!("unknown key state {other:?}"))),
                };
                Ok(StoredKey::new(
                    tenant,
                    u32::try_from(version).map_err(backend)?,
                    wrapped,
                    state,
                    created_at,
                )
                .with_reserved(u64::try_from(reserved).map_err(backend)?))
            })
            .collect()
    }

    async fn insert(&self, key: StoredKey) -> Result<(), CryptoError> {
        let mut tx = self.db.begin_for_id(key.tenant).await.map_err(backend)?;
        let inserted = sqlx::query(
            "INSERT INTO tenancy.tenant_keys (tenant_id, version, wrapped, state, created_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        )
        .bind(key.tenant.as_uuid())
        .bind(i32::try_from(key.version).map_err(backend)?)
        .bind(&key.wrapped)
        .bind(state_text(key.state))
        .bind(key.created_at)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        if inserted.rows_affected() == 1 {
            Ok(())
        } else {
            Err(CryptoError::KeyStore(format!(
                "key version {} already exists",
                key.version
            )))
        }
    }

    async fn update(&self, key: StoredKey) -> Result<(), CryptoError> {
        let mut tx = self.db.begin_for_id(key.tenant).await.map_err(backend)?;
        let updated = sqlx::query(
            "UPDATE tenancy.tenant_keys SET wrapped = $3, state = $4 \
             WHERE tenant_id = $1 AND version = $2",
        )
        .bind(key.tenant.as_uuid())
        .bind(i32::try_from(key.version).map_err(backend)?)
        .bind(&key.wrapped)
        .bind(state_text(key.state))
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        if updated.rows_affected() == 1 {
            Ok(())
        } else {
            Err(CryptoError::UnknownKeyVersion(key.version))
        }
    }

    /// One transaction scoped to the tenant: the key row is locked
    /// (`FOR UPDATE`), so concurrent reservations queue and never overlap.
    async fn reserve(
        &self,
        tenant: TenantId,
        version: u32,
        block: u64,
        limit: u64,
    ) -> Result<u64, CryptoError> {
        let mut tx = self.db.begin_for_id(tenant).await.map_err(backend)?;
        let version_i = i32::try_from(version).map_err(backend)?;
        let row: Option<(String, i64)> = sqlx::query_as(
            "SELECT state, reserved FROM tenancy.tenant_keys \
             WHERE tenant_id = $1 AND version = $2 FOR UPDATE",
        )
        .bind(tenant.as_uuid())
        .bind(version_i)
        .fetch_optional(&mut *tx)
        .await
        .map_err(backend)?;
        let (state, reserved) = row.ok_or(CryptoError::UnknownKeyVersion(version))?;
        let reserved = u64::try_from(reserved).map_err(backend)?;
        let granted = if state == "primary" {
            block.min(limit.saturating_sub(reserved))
        } else {
            0
        };
        if granted > 0 {
            sqlx::query(
                "UPDATE tenancy.tenant_keys SET reserved = $3 \
                 WHERE tenant_id = $1 AND version = $2",
            )
            .bind(tenant.as_uuid())
            .bind(version_i)
            .bind(i64::try_from(reserved + granted).map_err(backend)?)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        }
        tx.commit().await.map_err(backend)?;
        Ok(granted)
    }

    /// One transaction scoped to the tenant: retiring `retire` only while it
    /// is primary, then inserting the new version; either both or neither.
    async fn rotate(&self, retire: u32, next: StoredKey) -> Result<bool, CryptoError> {
        let mut tx = self.db.begin_for_id(next.tenant).await.map_err(backend)?;
        let retired = sqlx::query(
            "UPDATE tenancy.tenant_keys SET state = 'retired' \
             WHERE tenant_id = $1 AND version = $2 AND state = 'primary'",
        )
        .bind(next.tenant.as_uuid())
        .bind(i32::try_from(retire).map_err(backend)?)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        if retired.rows_affected() != 1 {
            tx.rollback().await.map_err(backend)?;
            return Ok(false);
        }
        let inserted = sqlx::query(
            "INSERT INTO tenancy.tenant_keys (tenant_id, version, wrapped, state, created_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        )
        .bind(next.tenant.as_uuid())
        .bind(i32::try_from(next.version).map_err(backend)?)
        .bind(&next.wrapped)
        .bind(state_text(next.state))
        .bind(next.created_at)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        if inserted.rows_affected() != 1 {
            tx.rollback().await.map_err(backend)?;
            return Ok(false);
        }
        tx.commit().await.map_err(backend)?;
        Ok(true)
    }
}
