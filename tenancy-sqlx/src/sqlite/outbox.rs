//! The transactional outbox in the SQLite control database: `tenancy_outbox`.
//!
//! [`SqliteTenantStore`](super::SqliteTenantStore) writes the messages of a
//! [`TenantUpdate::emit`](tenancy_core::store::TenantUpdate::emit) and
//! [`SqliteMonthlyUsage::with_outbox`](super::SqliteMonthlyUsage::with_outbox)
//! one per usage record, each in the transaction of its change;
//! [`SqliteOutbox`] is the [`OutboxStore`] a
//! [`Deliverer`](tenancy_core::outbox::Deliverer) claims from (claims are
//! serialised by SQLite's write lock, so several processes on one control
//! database share the work).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use sqlx::{SqliteConnection, SqlitePool};
use tenancy_core::outbox::{Claimed, OutboxMessage, OutboxStore};
use tenancy_core::{StoreError, Tenant, TenantContext, TenantId};
use uuid::Uuid;

use crate::DbError;

pub(super) const OUTBOX_TABLE: &str = "
CREATE TABLE IF NOT EXISTS tenancy_outbox (
    id           TEXT PRIMARY KEY NOT NULL,
    tenant_id    TEXT NOT NULL,
    channel      TEXT NOT NULL,
    topic        TEXT NOT NULL,
    payload      TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    available_at TEXT NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    leased_until TEXT,
    delivered_at TEXT,
    dead_at      TEXT,
    last_error   TEXT
);
CREATE INDEX IF NOT EXISTS tenancy_outbox_due ON tenancy_outbox (channel, available_at)
    WHERE delivered_at IS NULL AND dead_at IS NULL;
";

/// Walls on the outbox inside tenant files, where the tenant's own SQL runs
/// (SQLite has no roles): rows start fresh, are never deleted, and their
/// message never changes. A tenant's SQL can still mark its own rows
/// delivered, or drop these triggers: inside a tenant file the outbox is
/// tamper-resistant, not tamper-proof (the audit log's hash chain shows a
/// removed event).
pub(super) const OUTBOX_GUARDS: &str = "
CREATE TRIGGER IF NOT EXISTS tenancy_outbox_fresh BEFORE INSERT ON tenancy_outbox
WHEN NEW.attempts <> 0 OR NEW.leased_until IS NOT NULL OR NEW.delivered_at IS NOT NULL
  OR NEW.dead_at IS NOT NULL
BEGIN SELECT RAISE(ABORT, 'tenancy_outbox rows start undelivered, with no attempts and no lease'); END;
CREATE TRIGGER IF NOT EXISTS tenancy_outbox_no_delete BEFORE DELETE ON tenancy_outbox
BEGIN SELECT RAISE(ABORT, 'tenancy_outbox rows are marked delivered or dead, never deleted'); END;
CREATE TRIGGER IF NOT EXISTS tenancy_outbox_fixed
BEFORE UPDATE OF id, tenant_id, channel, topic, payload, created_at ON tenancy_outbox
BEGIN SELECT RAISE(ABORT, 'a tenancy_outbox message never changes'); END;
";

/// Fixed-width UTC timestamps: they compare as text.
fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// Inserts `message` on `conn` (a transaction on the control database): it
/// commits or rolls back with whatever else the transaction does.
pub async fn enqueue(conn: &mut SqliteConnection, message: &OutboxMessage) -> Result<(), DbError> {
    message
        .validate()
        .map_err(|e| DbError::Conflict(e.to_string()))?;
    sqlx::query(
        "INSERT INTO tenancy_outbox (id, tenant_id, channel, topic, payload, created_at, available_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(message.id.to_string())
    .bind(message.tenant.to_string())
    .bind(&message.channel)
    .bind(&message.topic)
    .bind(message.payload.to_string())
    .bind(ts(message.created_at))
    .bind(ts(Utc::now()))
    .execute(conn)
    .await?;
    Ok(())
}

/// The relay side of `tenancy_outbox` on a control database.
#[derive(Debug, Clone)]
pub struct SqliteOutbox {
    pub(super) pool: SqlitePool,
}

impl SqliteOutbox {
    /// Deletes messages delivered before `before`; returns how many.
    pub async fn prune_delivered(&self, before: DateTime<Utc>) -> Result<u64, DbError> {
        let done = sqlx::query(
            "DELETE FROM tenancy_outbox WHERE delivered_at IS NOT NULL AND delivered_at < $1",
        )
        .bind(ts(before))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    async fn set(
        &self,
        sql: &str,
        id: Uuid,
        a: Option<String>,
        b: Option<&str>,
    ) -> Result<(), StoreError> {
        sqlx::query(sql)
            .bind(id.to_string())
            .bind(a)
            .bind(b)
            .execute(&self.pool)
            .await
            .map_err(StoreError::new)?;
        Ok(())
    }
}

type Row = (String, String, String, String, String, String, i64);

/// When a lease taken at `now` ends.
fn lease_end(now: DateTime<Utc>, lease: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(lease)
        .ok()
        .and_then(|l| now.checked_add_signed(l))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// Leases up to `limit` due rows of `channel` until `until`, in insertion
/// order, inside the caller's (immediate) transaction.
async fn lease_due(
    conn: &mut SqliteConnection,
    channel: &str,
    limit: usize,
    now: DateTime<Utc>,
    until: DateTime<Utc>,
) -> Result<Vec<Row>, sqlx::Error> {
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT id, tenant_id, channel, topic, payload, created_at, attempts FROM tenancy_outbox \
         WHERE channel = $1 AND delivered_at IS NULL AND dead_at IS NULL AND available_at <= $2 \
           AND (leased_until IS NULL OR leased_until <= $2) \
         ORDER BY rowid LIMIT $3",
    )
    .bind(channel)
    .bind(ts(now))
    .bind(i64::try_from(limit).unwrap_or(i64::MAX))
    .fetch_all(&mut *conn)
    .await?;
    for row in &rows {
        sqlx::query("UPDATE tenancy_outbox SET leased_until = $2 WHERE id = $1")
            .bind(&row.0)
            .bind(ts(until))
            .execute(&mut *conn)
            .await?;
    }
    Ok(rows)
}

fn claimed(row: Row) -> Result<Claimed, StoreError> {
    let (id, tenant, channel, topic, payload, created_at, attempts) = row;
    let bad = |what: &str, e: &dyn std::fmt::Display| {
        StoreError::msg(format!("tenancy_outbox.{what} is corrupt: {e}"))
    };
    let tenant: TenantId = tenant.parse().map_err(|e| bad("tenant_id", &e))?;
    let payload = serde_json::from_str(&payload).map_err(|e| bad("payload", &e))?;
    let mut m = OutboxMessage::new(tenant, &channel, &topic, payload);
    m.id = id.parse().map_err(|e| bad("id", &e))?;
    m.created_at = DateTime::parse_from_rfc3339(&created_at)
        .map_err(|e| bad("created_at", &e))?
        .with_timezone(&Utc);
    Ok(Claimed::new(m, u32::try_from(attempts).unwrap_or(0)))
}

#[async_trait]
impl OutboxStore for SqliteOutbox {
    async fn claim(
        &self,
        channel: &str,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<Claimed>, StoreError> {
        let now = Utc::now();
        let until = lease_end(now, lease);
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(StoreError::new)?;
        let rows = lease_due(&mut tx, channel, limit, now, until)
            .await
            .map_err(StoreError::new)?;
        tx.commit().await.map_err(StoreError::new)?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let id = row.0.clone();
            match claimed(row) {
                Ok(c) => out.push(c),
                // Set aside, not retried for ever in front of the others.
                Err(e) => {
                    sqlx::query(
                        "UPDATE tenancy_outbox SET dead_at = $2, leased_until = NULL, last_error = $3 \
                         WHERE id = $1",
                    )
                    .bind(&id)
                    .bind(ts(Utc::now()))
                    .bind(format!("undecodable: {e}"))
                    .execute(&self.pool)
                    .await
                    .map_err(StoreError::new)?;
                }
            }
        }
        Ok(out)
    }

    async fn delivered(&self, id: Uuid) -> Result<(), StoreError> {
        self.set(
            "UPDATE tenancy_outbox SET delivered_at = $2, leased_until = NULL, \
             attempts = attempts + 1, last_error = $3 WHERE id = $1",
            id,
            Some(ts(Utc::now())),
            None,
        )
        .await
    }

    async fn retry(&self, id: Uuid, at: DateTime<Utc>, error: &str) -> Result<(), StoreError> {
        self.set(
            "UPDATE tenancy_outbox SET available_at = $2, leased_until = NULL, \
             attempts = attempts + 1, last_error = $3 WHERE id = $1",
            id,
            Some(ts(at)),
            Some(error),
        )
        .await
    }

    async fn dead(&self, id: Uuid, error: &str) -> Result<(), StoreError> {
        self.set(
            "UPDATE tenancy_outbox SET dead_at = $2, leased_until = NULL, \
             attempts = attempts + 1, last_error = $3 WHERE id = $1",
            id,
            Some(ts(Utc::now())),
            Some(error),
        )
        .await
    }

    async fn pending(&self, channel: &str) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM tenancy_outbox \
             WHERE channel = $1 AND delivered_at IS NULL AND dead_at IS NULL",
        )
        .bind(channel)
        .fetch_one(&self.pool)
        .await
        .map_err(StoreError::new)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }
}

/// The outboxes inside tenant files — high-risk audit alerts written by
/// [`SqliteAuditLog::with_alerts`](super::SqliteAuditLog::with_alerts) in
/// the transaction of the event — relayed through the one door: each file
/// is opened with a context for its own tenant only.
///
/// A claim visits every tenant of the registry (those not deleted), so a
/// poll costs one transaction per tenant file: fine for the embedded
/// default's scale; on PostgreSQL one [`PgOutbox`](crate::PgOutbox) serves
/// every tenant.
#[derive(Clone)]
pub struct SqliteTenantOutboxes {
    db: super::SqliteTenantDb,
    registry: super::SqliteTenantStore,
    claimed: Arc<Mutex<HashMap<Uuid, Arc<Tenant>>>>,
}

impl std::fmt::Debug for SqliteTenantOutboxes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteTenantOutboxes")
            .finish_non_exhaustive()
    }
}

impl SqliteTenantOutboxes {
    /// The relay over the files of `db`, for the tenants in `registry`.
    pub fn new(db: super::SqliteTenantDb, registry: super::SqliteTenantStore) -> Self {
        Self {
            db,
            registry,
            claimed: Arc::default(),
        }
    }

    fn claimed(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Arc<Tenant>>> {
        self.claimed.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn tenants(&self) -> Result<Vec<Arc<Tenant>>, StoreError> {
        Ok(self
            .registry
            .list()
            .await
            .map_err(StoreError::new)?
            .into_iter()
            .filter(|t| !matches!(t.status, tenancy_core::TenantStatus::Deleted))
            .collect())
    }

    /// Marks a row that cannot be sent as dead (logged), so it never holds
    /// the others back.
    async fn set_aside(&self, tenant: &Arc<Tenant>, id: &str, why: &str) {
        tracing::error!(tenant.id = %tenant.id, outbox.id = id, why, "tenant outbox row set aside");
        let result = async {
            let mut tx = self
                .db
                .begin_immediate(&TenantContext::new(tenant.clone()))
                .await?;
            sqlx::query(
                "UPDATE tenancy_outbox SET dead_at = $2, leased_until = NULL, last_error = $3 WHERE id = $1",
            )
            .bind(id)
            .bind(ts(Utc::now()))
            .bind(why)
            .execute(&mut *tx)
            .await?;
            tx.commit().await
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(tenant.id = %tenant.id, error = %e, "could not set an outbox row aside");
        }
    }

    async fn update(
        &self,
        id: Uuid,
        sql: &str,
        a: Option<String>,
        b: Option<&str>,
    ) -> Result<(), StoreError> {
        let tenant = self
            .claimed()
            .remove(&id)
            .ok_or_else(|| StoreError::msg(format!("outbox message {id} was not claimed here")))?;
        let mut tx = self
            .db
            .begin_immediate(&TenantContext::new(tenant))
            .await
            .map_err(StoreError::new)?;
        sqlx::query(sql)
            .bind(id.to_string())
            .bind(a)
            .bind(b)
            .execute(&mut *tx)
            .await
            .map_err(StoreError::new)?;
        tx.commit().await.map_err(StoreError::new)
    }
}

#[async_trait]
impl OutboxStore for SqliteTenantOutboxes {
    async fn claim(
        &self,
        channel: &str,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<Claimed>, StoreError> {
        let now = Utc::now();
        let until = lease_end(now, lease);
        let mut out = Vec::new();
        for tenant in self.tenants().await? {
            if out.len() >= limit {
                break;
            }
            let ctx = TenantContext::new(tenant.clone());
            let mut tx = match self.db.begin_immediate(&ctx).await {
                Ok(tx) => tx,
                // One unreadable file must not hold back every tenant's alerts.
                Err(e) => {
                    tracing::warn!(tenant.id = %tenant.id, error = %e, "tenant outbox unavailable");
                    continue;
                }
            };
            let rows = match lease_due(&mut tx, channel, limit - out.len(), now, until).await {
                Ok(rows) => rows,
                Err(e) => {
                    tracing::warn!(tenant.id = %tenant.id, error = %e, "tenant outbox unreadable; skipped");
                    continue;
                }
            };
            if let Err(e) = tx.commit().await {
                tracing::warn!(tenant.id = %tenant.id, error = %e, "tenant outbox claim not committed");
                continue;
            }
            for row in rows {
                let id = row.0.clone();
                match claimed(row) {
                    // A row naming another tenant in this tenant's file is
                    // not this tenant's to send.
                    Ok(c) if c.message.tenant == tenant.id => {
                        self.claimed().insert(c.message.id, tenant.clone());
                        out.push(c);
                    }
                    Ok(_) => self.set_aside(&tenant, &id, "names another tenant").await,
                    Err(e) => {
                        self.set_aside(&tenant, &id, &format!("undecodable: {e}"))
                            .await;
                    }
                }
            }
        }
        Ok(out)
    }

    async fn delivered(&self, id: Uuid) -> Result<(), StoreError> {
        self.update(
            id,
            "UPDATE tenancy_outbox SET delivered_at = $2, leased_until = NULL, \
             attempts = attempts + 1, last_error = $3 WHERE id = $1",
            Some(ts(Utc::now())),
            None,
        )
        .await
    }

    async fn retry(&self, id: Uuid, at: DateTime<Utc>, error: &str) -> Result<(), StoreError> {
        self.update(
            id,
            "UPDATE tenancy_outbox SET available_at = $2, leased_until = NULL, \
             attempts = attempts + 1, last_error = $3 WHERE id = $1",
            Some(ts(at)),
            Some(error),
        )
        .await
    }

    async fn dead(&self, id: Uuid, error: &str) -> Result<(), StoreError> {
        self.update(
            id,
            "UPDATE tenancy_outbox SET dead_at = $2, leased_until = NULL, \
             attempts = attempts + 1, last_error = $3 WHERE id = $1",
            Some(ts(Utc::now())),
            Some(error),
        )
        .await
    }

    async fn pending(&self, channel: &str) -> Result<u64, StoreError> {
        let mut total = 0u64;
        for tenant in self.tenants().await? {
            let id = tenant.id;
            let counted = async {
                let mut tx = self.db.begin(&TenantContext::new(tenant)).await?;
                let n: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM tenancy_outbox \
                     WHERE channel = $1 AND delivered_at IS NULL AND dead_at IS NULL",
                )
                .bind(channel)
                .fetch_one(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok::<_, DbError>(n)
            }
            .await;
            match counted {
                Ok(n) => total += u64::try_from(n).unwrap_or(0),
                Err(e) => tracing::warn!(tenant.id = %id, error = %e, "tenant outbox not counted"),
            }
        }
        Ok(total)
    }
}
