//! The transactional outbox in PostgreSQL: `tenancy.outbox`.
//!
//! Messages are inserted by the transaction that makes the change:
//! [`PgTenantStore`](crate::PgTenantStore) writes those of a
//! [`TenantUpdate::emit`](tenancy_core::store::TenantUpdate::emit),
//! [`PgMonthlyUsage::with_outbox`](crate::PgMonthlyUsage::with_outbox) one
//! per usage record, [`PgAuditLog::with_alerts`](crate::PgAuditLog::with_alerts)
//! one per high-risk audit event, and application code calls [`enqueue`] in
//! its own [`TenantTx`](crate::TenantTx). [`PgOutbox`] is the
//! [`OutboxStore`] a [`Deliverer`](tenancy_core::outbox::Deliverer) claims
//! from: `FOR UPDATE SKIP LOCKED` with a lease, so several deliverers share
//! the work and a dead one's messages are picked up when its lease ends.
//!
//! The application role may only insert the message columns of its own
//! tenant's rows (row-level security bound to the sealed tenant, a column
//! grant, no `SELECT`, `UPDATE` or `DELETE`), never the control plane's
//! topics (`plan.*`, `tenant.*`, which the tenant store writes as the
//! owner); a trigger starts every row fresh (time, attempts, lease).
//! [`PgOutbox`] needs a pool for the schema owner.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use tenancy_core::outbox::{Claimed, OutboxMessage, OutboxStore};
use tenancy_core::{StoreError, TenantId};
use uuid::Uuid;

use crate::DbError;

/// Inserts `message` on `conn` — a [`TenantTx`](crate::TenantTx) (the row
/// must belong to its tenant) or an owner transaction: it commits or rolls
/// back with whatever else the transaction does.
///
/// ```no_run
/// # async fn example(db: tenancy_sqlx::TenantDb, ctx: tenancy_core::TenantContext) -> Result<(), tenancy_sqlx::DbError> {
/// use tenancy_core::outbox::OutboxMessage;
///
/// let mut tx = db.begin(&ctx).await?;
/// // ... the change ...
/// let m = OutboxMessage::new(ctx.tenant_id(), "billing", "seats.added", serde_json::json!({"seats": 5}));
/// tenancy_sqlx::outbox::enqueue(&mut tx, &m).await?;
/// tx.commit().await?;
/// # Ok(()) }
/// ```
pub async fn enqueue(conn: &mut PgConnection, message: &OutboxMessage) -> Result<(), DbError> {
    message
        .validate()
        .map_err(|e| DbError::Conflict(e.to_string()))?;
    // Written now (the database's clock): the row's time is not the writer's to set.
    sqlx::query(
        "INSERT INTO tenancy.outbox (id, tenant_id, channel, topic, payload) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(message.id)
    .bind(message.tenant.as_uuid())
    .bind(&message.channel)
    .bind(&message.topic)
    .bind(&message.payload)
    .execute(conn)
    .await?;
    Ok(())
}

/// The relay side of `tenancy.outbox`, for a schema-owner pool.
///
/// ```no_run
/// # async fn example(owner: sqlx::PgPool) {
/// use std::sync::Arc;
/// use tenancy_core::outbox::Deliverer;
/// use tenancy_core::webhook::{HttpTransport, WebhookSecret};
/// use tenancy_sqlx::PgOutbox;
///
/// let secret = WebhookSecret::new(vec![7; 32]).unwrap();
/// let transport = HttpTransport::new("https://billing.example.com/hooks", secret).unwrap();
/// let deliverer = Deliverer::new(Arc::new(PgOutbox::new(owner)), Arc::new(transport), "billing");
/// tokio::spawn(deliverer.run(std::future::pending()));
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct PgOutbox {
    pool: PgPool,
}

impl PgOutbox {
    /// The relay over `pool` (the schema owner: it reads every tenant's rows).
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Deletes messages delivered before `before`; returns how many.
    pub async fn prune_delivered(&self, before: DateTime<Utc>) -> Result<u64, DbError> {
        let done = sqlx::query(
            "DELETE FROM tenancy.outbox WHERE delivered_at IS NOT NULL AND delivered_at < $1",
        )
        .bind(before)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }
}

type ClaimRow = (
    Uuid,
    Uuid,
    String,
    String,
    serde_json::Value,
    DateTime<Utc>,
    i32,
);

fn claimed(row: ClaimRow) -> Result<Claimed, StoreError> {
    let (id, tenant, channel, topic, payload, created_at, attempts) = row;
    let tenant = TenantId::from_uuid(tenant).map_err(StoreError::new)?;
    let mut m = OutboxMessage::new(tenant, &channel, &topic, payload);
    m.id = id;
    m.created_at = created_at;
    Ok(Claimed::new(m, u32::try_from(attempts).unwrap_or(0)))
}

#[async_trait]
impl OutboxStore for PgOutbox {
    async fn claim(
        &self,
        channel: &str,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<Claimed>, StoreError> {
        let rows: Vec<ClaimRow> = sqlx::query_as(
            "UPDATE tenancy.outbox o SET leased_until = now() + make_interval(secs => $3) \
             WHERE o.id IN (SELECT id FROM tenancy.outbox \
                 WHERE channel = $1 AND delivered_at IS NULL AND dead_at IS NULL \
                   AND available_at <= now() AND (leased_until IS NULL OR leased_until <= now()) \
                 ORDER BY created_at, id LIMIT $2 FOR UPDATE SKIP LOCKED) \
             RETURNING o.id, o.tenant_id, o.channel, o.topic, o.payload, o.created_at, o.attempts",
        )
        .bind(channel)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .bind(lease.as_secs_f64())
        .fetch_all(&self.pool)
        .await
        .map_err(StoreError::new)?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let id = row.0;
            match claimed(row) {
                Ok(c) => out.push(c),
                // A row that cannot be a message is set aside, not retried
                // for ever in front of the others.
                Err(e) => self.dead(id, &format!("undecodable: {e}")).await?,
            }
        }
        out.sort_by(|a, b| {
            (a.message.created_at, a.message.id).cmp(&(b.message.created_at, b.message.id))
        });
        Ok(out)
    }

    async fn delivered(&self, id: Uuid) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE tenancy.outbox SET delivered_at = now(), leased_until = NULL, \
             attempts = attempts + 1, last_error = NULL WHERE id = $1",
        )
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(StoreError::new)?;
        Ok(())
    }

    async fn retry(&self, id: Uuid, at: DateTime<Utc>, error: &str) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE tenancy.outbox SET available_at = $2, leased_until = NULL, \
             attempts = attempts + 1, last_error = $3 WHERE id = $1",
        )
        .bind(id)
        .bind(at)
        .bind(error)
        .execute(&self.pool)
        .await
        .map_err(StoreError::new)?;
        Ok(())
    }

    async fn dead(&self, id: Uuid, error: &str) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE tenancy.outbox SET dead_at = now(), leased_until = NULL, \
             attempts = attempts + 1, last_error = $2 WHERE id = $1",
        )
        .bind(id)
        .bind(error)
        .execute(&self.pool)
        .await
        .map_err(StoreError::new)?;
        Ok(())
    }

    async fn pending(&self, channel: &str) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM tenancy.outbox \
             WHERE channel = $1 AND delivered_at IS NULL AND dead_at IS NULL",
        )
        .bind(channel)
        .fetch_one(&self.pool)
        .await
        .map_err(StoreError::new)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }
}
