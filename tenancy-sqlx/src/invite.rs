//! A PostgreSQL [`InvitationStore`].

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tenancy_core::invite::{Invitation, InvitationStore};
use tenancy_core::{StoreError, TenantId, UserId};
use uuid::Uuid;

use crate::TenantDb;

/// Invitations in `tenancy.invitations` (tenant rows under row-level
/// security; only token hashes are stored). Accepting is one conditional
/// `UPDATE`, so two concurrent acceptances cannot both succeed.
///
/// ```no_run
/// # async fn example(db: tenancy_sqlx::TenantDb, system_pool: sqlx::PgPool) {
/// use std::sync::Arc;
/// use tenancy_core::invite::Invitations;
/// use tenancy_sqlx::{PgInvitationStore, PgMembershipStore};
///
/// let invitations = Invitations::new(
///     Arc::new(PgInvitationStore::new(db)),
///     Arc::new(PgMembershipStore::new(system_pool)), // a role that may write memberships
/// );
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct PgInvitationStore {
    db: TenantDb,
}

impl PgInvitationStore {
    /// A store over `db`.
    pub fn new(db: TenantDb) -> Self {
        Self { db }
    }
}

type Row = (
    Uuid,
    String,
    String,
    Vec<u8>,
    String,
    DateTime<Utc>,
    DateTime<Utc>,
    Option<DateTime<Utc>>,
    Option<String>,
);

#[async_trait]
impl InvitationStore for PgInvitationStore {
    async fn insert(&self, i: &Invitation) -> Result<(), StoreError> {
        let mut tx = self
            .db
            .begin_for_id(i.tenant)
            .await
            .map_err(StoreError::new)?;
        sqlx::query(
            "INSERT INTO tenancy.invitations (id, tenant_id, email, role, token_hash, invited_by, \
             created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(i.id)
        .bind(i.tenant.as_uuid())
        .bind(&i.email)
        .bind(i.role.as_str())
        .bind(i.token_hash.as_slice())
        .bind(i.invited_by.as_str())
        .bind(i.created_at)
        .bind(i.expires_at)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::new)?;
        tx.commit().await.map_err(StoreError::new)
    }

    async fn by_hash(
        &self,
        tenant: TenantId,
        hash: &[u8; 32],
    ) -> Result<Option<Invitation>, StoreError> {
        let mut tx = self
            .db
            .begin_for_id(tenant)
            .await
            .map_err(StoreError::new)?;
        let row: Option<Row> = sqlx::query_as(
            "SELECT id, email, role, token_hash, invited_by, created_at, expires_at, accepted_at, accepted_by \
             FROM tenancy.invitations WHERE tenant_id = $1 AND token_hash = $2",
        )
        .bind(tenant.as_uuid())
        .bind(hash.as_slice())
        .fetch_optional(&mut *tx)
        .await
        .map_err(StoreError::new)?;
        tx.commit().await.map_err(StoreError::new)?;
        row.map(
            |(id, email, role, h, by, created, expires, acc_at, acc_by)| {
                Ok(Invitation::new(
                    id,
                    tenant,
                    email,
                    role.parse().map_err(StoreError::new)?,
                    h.try_into()
                        .map_err(|_| StoreError::msg("invitation token hash is not 32 bytes"))?,
                    UserId::new(by),
                    created,
                    expires,
                    acc_at.zip(acc_by.map(UserId::new)),
                ))
            },
        )
        .transpose()
    }

    async fn mark_accepted(
        &self,
        tenant: TenantId,
        hash: &[u8; 32],
        user: &UserId,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let mut tx = self
            .db
            .begin_for_id(tenant)
            .await
            .map_err(StoreError::new)?;
        let done = sqlx::query(
            "UPDATE tenancy.invitations SET accepted_at = $3, accepted_by = $4 \
             WHERE tenant_id = $1 AND token_hash = $2 AND accepted_at IS NULL AND expires_at > $3",
        )
        .bind(tenant.as_uuid())
        .bind(hash.as_slice())
        .bind(now)
        .bind(user.as_str())
        .execute(&mut *tx)
        .await
        .map_err(StoreError::new)?;
        tx.commit().await.map_err(StoreError::new)?;
        Ok(done.rows_affected() == 1)
    }

    async fn release(
        &self,
        tenant: TenantId,
        hash: &[u8; 32],
        user: &UserId,
    ) -> Result<bool, StoreError> {
        let mut tx = self
            .db
            .begin_for_id(tenant)
            .await
            .map_err(StoreError::new)?;
        let done = sqlx::query(
            "UPDATE tenancy.invitations SET accepted_at = NULL, accepted_by = NULL \
             WHERE tenant_id = $1 AND token_hash = $2 AND accepted_by = $3",
        )
        .bind(tenant.as_uuid())
        .bind(hash.as_slice())
        .bind(user.as_str())
        .execute(&mut *tx)
        .await
        .map_err(StoreError::new)?;
        tx.commit().await.map_err(StoreError::new)?;
        Ok(done.rows_affected() == 1)
    }

    async fn revoke(&self, tenant: TenantId, id: Uuid) -> Result<bool, StoreError> {
        let mut tx = self
            .db
            .begin_for_id(tenant)
            .await
            .map_err(StoreError::new)?;
        let done = sqlx::query(
            "DELETE FROM tenancy.invitations WHERE tenant_id = $1 AND id = $2 AND accepted_at IS NULL",
        )
        .bind(tenant.as_uuid())
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::new)?;
        tx.commit().await.map_err(StoreError::new)?;
        Ok(done.rows_affected() == 1)
    }

    /// Counts `tenancy.memberships` of the same database (the `members`
    /// argument is not consulted) and the tenant's invitations, under a
    /// transaction-scoped advisory lock per tenant, in the tenant's own
    /// transaction.
    async fn insert_within(
        &self,
        i: &Invitation,
        limit: u64,
        _members: &dyn tenancy_core::MembershipStore,
        now: DateTime<Utc>,
    ) -> Result<Result<(), u64>, StoreError> {
        let mut tx = self
            .db
            .begin_for_id(i.tenant)
            .await
            .map_err(StoreError::new)?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
            .bind(format!("tenancy.seats:{}", i.tenant))
            .execute(&mut *tx)
            .await
            .map_err(StoreError::new)?;
        let used = count_seats(&mut tx, i.tenant, now).await?;
        if used >= limit {
            return Ok(Err(used));
        }
        sqlx::query(
            "INSERT INTO tenancy.invitations (id, tenant_id, email, role, token_hash, invited_by, \
             created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(i.id)
        .bind(i.tenant.as_uuid())
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
        let mut tx = self
            .db
            .begin_for_id(tenant)
            .await
            .map_err(StoreError::new)?;
        let used = count_seats(&mut tx, tenant, now).await?;
        tx.commit().await.map_err(StoreError::new)?;
        Ok(used)
    }
}

/// Members plus pending invitations ([`InvitationStore::seats_used`]).
async fn count_seats(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    tenant: TenantId,
    now: DateTime<Utc>,
) -> Result<u64, StoreError> {
    let used: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM tenancy.memberships WHERE tenant_id = $1) \
              + (SELECT count(*) FROM tenancy.invitations i WHERE i.tenant_id = $1 \
                 AND i.expires_at > $2 AND (i.accepted_at IS NULL OR (i.accepted_at > $3 \
                 AND NOT EXISTS (SELECT 1 FROM tenancy.memberships m \
                                 WHERE m.tenant_id = i.tenant_id AND m.user_id = i.accepted_by))))",
    )
    .bind(tenant.as_uuid())
    .bind(now)
    .bind(now - tenancy_core::invite::ACCEPT_GRACE)
    .fetch_one(&mut **tx)
    .await
    .map_err(StoreError::new)?;
    Ok(u64::try_from(used).unwrap_or(0))
}
