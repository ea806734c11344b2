//! A PostgreSQL [`MonthlyStore`]: `tenancy.monthly_usage`.

use async_trait::async_trait;
use tenancy_core::quota::monthly::MonthlyStore;
use tenancy_core::{StoreError, TenantId};

use crate::TenantDb;

/// Monthly counters in `tenancy.monthly_usage` (tenant rows under
/// row-level security), changed in the tenant's own transaction. An add is
/// one conditional `UPDATE`: its row lock serialises concurrent adds, so
/// they never pass the cap together.
///
/// ```no_run
/// # async fn example(db: tenancy_sqlx::TenantDb) {
/// use std::sync::Arc;
/// use tenancy_core::quota::monthly::MonthlyQuota;
/// use tenancy_sqlx::PgMonthlyUsage;
///
/// let monthly = MonthlyQuota::new(Arc::new(PgMonthlyUsage::new(db)));
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct PgMonthlyUsage {
    db: TenantDb,
    outbox: Option<std::sync::Arc<str>>,
}

impl PgMonthlyUsage {
    /// Counters reached through `db`.
    pub fn new(db: TenantDb) -> Self {
        Self { db, outbox: None }
    }

    /// Also writes each accepted consumption to the outbox
    /// (`tenancy.outbox`, topic `usage.recorded` on `channel`, with
    /// resource, month, amount and the month's total) in the transaction
    /// that counts it: billing receives every usage record exactly when
    /// it was counted.
    pub fn with_outbox(mut self, channel: &str) -> Self {
        self.outbox = Some(channel.into());
        self
    }
}

#[async_trait]
impl MonthlyStore for PgMonthlyUsage {
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
            .db
            .begin_for_id(tenant)
            .await
            .map_err(StoreError::new)?;
        sqlx::query(
            "INSERT INTO tenancy.monthly_usage (tenant_id, resource, month, used) \
             VALUES ($1, $2, $3, 0) ON CONFLICT DO NOTHING",
        )
        .bind(tenant.as_uuid())
        .bind(resource)
        .bind(month)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::new)?;
        let added: Option<(i64, i64)> = sqlx::query_as(
            "UPDATE tenancy.monthly_usage SET used = used + $4 \
             WHERE tenant_id = $1 AND resource = $2 AND month = $3 AND used <= $5 - $4 \
             RETURNING used - $4, used",
        )
        .bind(tenant.as_uuid())
        .bind(resource)
        .bind(month)
        .bind(amount)
        .bind(cap)
        .fetch_optional(&mut *tx)
        .await
        .map_err(StoreError::new)?;
        if let (Some(channel), Some((_, after))) = (self.outbox.as_deref(), added) {
            let record = tenancy_core::outbox::OutboxMessage::new(
                tenant,
                channel,
                "usage.recorded",
                serde_json::json!({
                    "resource": resource, "month": month, "amount": amount, "used": after,
                }),
            );
            crate::outbox::enqueue(&mut tx, &record)
                .await
                .map_err(StoreError::new)?;
        }
        let outcome = match added {
            Some((before, after)) => Ok((
                u64::try_from(before).unwrap_or(0),
                u64::try_from(after).unwrap_or(0),
            )),
            None => {
                let current: i64 = sqlx::query_scalar(
                    "SELECT used FROM tenancy.monthly_usage \
                     WHERE tenant_id = $1 AND resource = $2 AND month = $3",
                )
                .bind(tenant.as_uuid())
                .bind(resource)
                .bind(month)
                .fetch_one(&mut *tx)
                .await
                .map_err(StoreError::new)?;
                Err(u64::try_from(current).unwrap_or(0))
            }
        };
        tx.commit().await.map_err(StoreError::new)?;
        Ok(outcome)
    }

    async fn used(&self, tenant: TenantId, resource: &str, month: &str) -> Result<u64, StoreError> {
        let mut tx = self
            .db
            .begin_for_id(tenant)
            .await
            .map_err(StoreError::new)?;
        let used: Option<i64> = sqlx::query_scalar(
            "SELECT used FROM tenancy.monthly_usage \
             WHERE tenant_id = $1 AND resource = $2 AND month = $3",
        )
        .bind(tenant.as_uuid())
        .bind(resource)
        .bind(month)
        .fetch_optional(&mut *tx)
        .await
        .map_err(StoreError::new)?;
        tx.commit().await.map_err(StoreError::new)?;
        Ok(used.and_then(|u| u64::try_from(u).ok()).unwrap_or(0))
    }
}
