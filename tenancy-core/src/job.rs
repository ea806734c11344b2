//! Background jobs that carry their tenant.
//!
//! A [`JobEnvelope`] is what you put on a queue: the tenant id, who enqueued
//! the job and when, and your payload, all serde-serialisable. Running it
//! reloads the tenant from the store (so a suspension after enqueueing is
//! honoured), passes the status gate, and runs the job inside the tenant's
//! scope and tracing span. A worker therefore never runs a job under a stale
//! or missing tenant — the failure seen in thread-local based libraries.

use std::future::Future;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::gate::{self, Admission};
use crate::store::TenantStore;
use crate::{TenantContext, TenantError, TenantId, UserId, scope};

/// A job payload tagged with its tenant.
///
/// ```
/// use tenancy_core::job::JobEnvelope;
/// use tenancy_core::store::InMemoryTenantStore;
/// use tenancy_core::lifecycle::{Lifecycle, Transition};
/// use tenancy_core::{current, Tenant, TenantContext, TenantId};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let acme = Tenant::new(TenantId::new_v4(), "acme".parse()?, "Acme");
/// let store = std::sync::Arc::new(InMemoryTenantStore::with_tenants([acme.clone()])?);
///
/// let envelope = JobEnvelope::new(&TenantContext::new(acme.clone()), "send-renewal-reminders");
/// let wire = serde_json::to_string(&envelope)?; // onto the queue ...
/// let envelope: JobEnvelope<String> = serde_json::from_str(&wire)?; // ... and off it
///
/// let ran_for = envelope
///     .run(&store, |ctx, _task| async move { (ctx.tenant_id(), current().is_ok()) })
///     .await?;
/// assert_eq!(ran_for, (acme.id, true));
///
/// // Suspended after enqueueing: the job is refused.
/// Lifecycle::new(store.clone())
///     .apply(&acme, Transition::Suspend { reason: "fraud".into() }, "ops")
///     .await?;
/// let envelope = JobEnvelope::new(&TenantContext::new(acme), ());
/// assert!(envelope.run(&store, |_, _| async {}).await.is_err());
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct JobEnvelope<P> {
    /// The tenant the job runs for.
    pub tenant_id: TenantId,
    /// The user whose action enqueued the job, if any.
    pub enqueued_by: Option<UserId>,
    /// When the job was enqueued.
    pub enqueued_at: DateTime<Utc>,
    /// The job's own data.
    pub payload: P,
}

impl<P> JobEnvelope<P> {
    /// Wraps `payload` for the context's tenant (and actor, if any).
    pub fn new(ctx: &TenantContext, payload: P) -> Self {
        Self {
            tenant_id: ctx.tenant_id(),
            enqueued_by: ctx.actor().map(|a| a.user_id.clone()),
            enqueued_at: Utc::now(),
            payload,
        }
    }

    /// Reloads the tenant, gates it for ordinary work and runs `job` inside
    /// its scope.
    ///
    /// Refused with the gate's error for unknown, deleted, suspended and
    /// offboarding tenants and ended trials; `job` is not called then.
    pub async fn run<S, F, Fut>(self, store: &S, job: F) -> Result<Fut::Output, TenantError>
    where
        S: TenantStore + ?Sized,
        F: FnOnce(TenantContext, P) -> Fut,
        Fut: Future,
    {
        self.run_for(store, Admission::Serving, job).await
    }

    /// Like [`JobEnvelope::run`] with an explicit admission (use
    /// [`Admission::Maintenance`] for lifecycle jobs such as an offboarding
    /// export; suspended and deleted tenants are refused either way).
    pub async fn run_for<S, F, Fut>(
        self,
        store: &S,
        admission: Admission,
        job: F,
    ) -> Result<Fut::Output, TenantError>
    where
        S: TenantStore + ?Sized,
        F: FnOnce(TenantContext, P) -> Fut,
        Fut: Future,
    {
        let tenant = store
            .by_id(self.tenant_id)
            .await?
            .ok_or(TenantError::NotFound)?;
        gate::check_for(&tenant, Utc::now(), admission)?;
        let ctx = TenantContext::new(tenant);
        Ok(scope(ctx.clone(), job(ctx, self.payload)).await)
    }
}
