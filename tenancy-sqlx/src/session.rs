//! Session epochs in PostgreSQL ([`PgSessionEpochs`]) and in a SQLite
//! control database ([`SqliteSessionEpochs`](crate::sqlite::SqliteSessionEpochs)).

use async_trait::async_trait;
use sqlx::PgPool;
use tenancy_core::session::{
    SessionEpochs, counter_keys, membership_counter_key, tenant_counter_key, user_counter_key,
};
use tenancy_core::{StoreError, TenantId, UserId};

use crate::DbError;

/// Session epochs in `tenancy.session_epochs` (migration `0018`), shared by
/// every instance. The application role reads the counters and increases
/// them through `tenancy.bump_session_epoch` only (grants of
/// [`crate::migrate::grant_system_read`]): SQL it runs cannot lower a
/// counter to bring a revoked token back. It can increase any counter —
/// sign other tenants' users out — which ends sessions but reveals nothing.
///
/// ```no_run
/// use tenancy_core::session::SessionEpochs;
/// # async fn f(pool: sqlx::PgPool, tenant: tenancy_core::TenantId) -> Result<(), Box<dyn std::error::Error>> {
/// let epochs = tenancy_sqlx::PgSessionEpochs::new(pool);
/// epochs.revoke_tenant(tenant).await?; // the tenant was suspended
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct PgSessionEpochs {
    pool: PgPool,
}

impl PgSessionEpochs {
    /// Epochs in the database `pool` connects to.
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    async fn bump(&self, key: String) -> Result<(), StoreError> {
        sqlx::query("SELECT tenancy.bump_session_epoch($1)")
            .bind(key)
            .execute(&self.pool)
            .await
            .map_err(|e| StoreError::new(DbError::from(e)))?;
        Ok(())
    }
}

#[async_trait]
impl SessionEpochs for PgSessionEpochs {
    async fn epoch(&self, tenant: TenantId, user: &UserId) -> Result<u64, StoreError> {
        let keys = counter_keys(tenant, user);
        let sum: Option<i64> = sqlx::query_scalar(
            "SELECT sum(epoch)::bigint FROM tenancy.session_epochs WHERE key = ANY($1)",
        )
        .bind(&keys[..])
        .fetch_one(&self.pool)
        .await
        .map_err(|e| StoreError::new(DbError::from(e)))?;
        Ok(u64::try_from(sum.unwrap_or(0)).unwrap_or(0))
    }

    async fn revoke(&self, tenant: TenantId, user: &UserId) -> Result<(), StoreError> {
        self.bump(membership_counter_key(tenant, user)).await
    }

    async fn revoke_user(&self, user: &UserId) -> Result<(), StoreError> {
        self.bump(user_counter_key(user)).await
    }

    async fn revoke_tenant(&self, tenant: TenantId) -> Result<(), StoreError> {
        self.bump(tenant_counter_key(tenant)).await
    }
}
