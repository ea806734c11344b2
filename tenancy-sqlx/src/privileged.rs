//! Crossing tenants: an explicit, audited capability on a separate pool.
//!
//! Normal code has no way to run a query without a tenant: the application
//! role is bound by row-level security and [`crate::TenantDb`] always sets a
//! tenant. Work that genuinely spans tenants (billing runs, support tooling,
//! migrations between placements) goes through a [`PrivilegedDb`] — a pool
//! for a *different* role with `BYPASSRLS` — and needs a
//! [`CrossTenantAccess`] value, which can only be created by
//! [`PrivilegedDb::cross_tenant`] with a reason and an actor. Creating it and
//! every transaction opened with it emit a `tenancy::audit` tracing event.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, Transaction};

use tenancy_core::TenantId;
use tenancy_core::audit::{AuditEvent, AuditSink};

use crate::DbError;

/// A pool for a privileged role, reachable only through [`CrossTenantAccess`].
#[derive(Clone)]
pub struct PrivilegedDb {
    pool: PgPool,
    audit: Option<Arc<dyn AuditSink>>,
}

impl std::fmt::Debug for PrivilegedDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrivilegedDb").finish_non_exhaustive()
    }
}

/// Permission to work across tenants, carrying why and for whom.
///
/// ```no_run
/// # async fn example(ops_pool: sqlx::PgPool) -> Result<(), tenancy_sqlx::DbError> {
/// use tenancy_sqlx::PrivilegedDb;
///
/// let ops = PrivilegedDb::new(ops_pool);
/// let access = ops.cross_tenant("monthly invoice run", "billing-worker")?;
/// let mut tx = access.begin().await?;
/// let tenants: i64 = sqlx::query_scalar("SELECT count(DISTINCT tenant_id) FROM policies")
///     .fetch_one(&mut *tx)
///     .await?;
/// tx.commit().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct CrossTenantAccess {
    pool: PgPool,
    reason: Arc<str>,
    actor: Arc<str>,
    granted_at: DateTime<Utc>,
    audit: Option<Arc<dyn AuditSink>>,
}

impl std::fmt::Debug for CrossTenantAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CrossTenantAccess")
            .field("reason", &self.reason)
            .field("actor", &self.actor)
            .field("granted_at", &self.granted_at)
            .finish_non_exhaustive()
    }
}

impl PrivilegedDb {
    /// Wraps a pool connected as a role that may bypass row-level security.
    /// Never pass the application's pool here.
    pub fn new(pool: PgPool) -> Self {
        Self { pool, audit: None }
    }

    /// Also records in each touched tenant's audit log (see
    /// [`CrossTenantAccess::touching`]).
    pub fn with_audit(mut self, sink: Arc<dyn AuditSink>) -> Self {
        self.audit = Some(sink);
        self
    }

    /// The one way to obtain cross-tenant access. `reason` and `actor` must
    /// be non-empty; the grant is recorded as a `tenancy::audit` event.
    pub fn cross_tenant(&self, reason: &str, actor: &str) -> Result<CrossTenantAccess, DbError> {
        if reason.trim().is_empty() || actor.trim().is_empty() {
            return Err(DbError::MissingReason);
        }
        let access = CrossTenantAccess {
            pool: self.pool.clone(),
            reason: reason.into(),
            actor: actor.into(),
            granted_at: Utc::now(),
            audit: self.audit.clone(),
        };
        tracing::warn!(
            target: "tenancy::audit",
            event = "cross_tenant.granted",
            reason = %access.reason,
            actor = %access.actor,
            "cross-tenant access granted"
        );
        Ok(access)
    }
}

impl CrossTenantAccess {
    /// Why access was granted.
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// Who it was granted to.
    pub fn actor(&self) -> &str {
        &self.actor
    }

    /// When it was granted.
    pub fn granted_at(&self) -> DateTime<Utc> {
        self.granted_at
    }

    /// Records, in `tenant`'s own audit log, that this capability is about
    /// to touch its data (`cross_tenant.access`, with reason and actor), so
    /// the tenant's history shows every crossing. Fails — and the caller
    /// should not proceed — when the event cannot be recorded.
    pub async fn touching(&self, tenant: TenantId) -> Result<(), DbError> {
        tracing::warn!(
            target: "tenancy::audit",
            event = "cross_tenant.access",
            tenant.id = %tenant,
            reason = %self.reason,
            actor = %self.actor,
        );
        let Some(sink) = &self.audit else {
            return Ok(());
        };
        let event = AuditEvent::system(tenant, &self.actor, "cross_tenant.access", "tenant")
            .with_resource_id(tenant)
            .with_details(serde_json::json!({
                "reason": &*self.reason,
                "granted_at": self.granted_at,
            }));
        sink.record(event)
            .await
            .map_err(|e| DbError::AuditLog(e.to_string()))
    }

    /// Opens a transaction on the privileged pool (recorded as a
    /// `tenancy::audit` event).
    pub async fn begin(&self) -> Result<Transaction<'static, Postgres>, DbError> {
        tracing::info!(
            target: "tenancy::audit",
            event = "cross_tenant.transaction",
            reason = %self.reason,
            actor = %self.actor,
        );
        Ok(self.pool.begin().await?)
    }
}
