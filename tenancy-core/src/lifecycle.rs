//! Tenant lifecycle: trial → active ↔ suspended → offboarding (grace period)
//! → deleted, with typed errors for invalid transitions, hooks, and an audit
//! event for every change.
//!
//! | from \ to | active | suspended | offboarding | deleted |
//! |---|---|---|---|---|
//! | trial | activate | suspend, trial expiry | offboard | — |
//! | active | — | suspend | offboard | — |
//! | suspended | resume | — | offboard | — |
//! | offboarding | restore (within grace) | — | — | purge (after grace) |
//! | deleted | — | — | — | — |
//!
//! ```
//! use std::sync::Arc;
//! use chrono::{Duration, Utc};
//! use tenancy_core::lifecycle::{Lifecycle, LifecycleError, Transition};
//! use tenancy_core::store::InMemoryTenantStore;
//! use tenancy_core::{Tenant, TenantId, TenantStatus};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = Arc::new(InMemoryTenantStore::new());
//! let lifecycle = Lifecycle::new(store.clone());
//! let trial = Tenant::new(TenantId::new_v4(), "acme".parse()?, "Acme")
//!     .with_status(TenantStatus::Trial { ends_at: Utc::now() + Duration::days(14) });
//! let t = lifecycle.create(trial, "signup").await?;
//! let t = lifecycle.apply(&t, Transition::Activate, "billing").await?;
//! assert_eq!(t.status, TenantStatus::Active);
//! // Deleting straight away is not a transition: offboard first.
//! assert!(matches!(
//!     lifecycle.apply(&t, Transition::Purge, "ops").await,
//!     Err(LifecycleError::InvalidTransition { .. })
//! ));
//! # Ok(()) }
//! ```

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};

use crate::audit::{AuditEvent, AuditSink};
use crate::store::{StatusChange, TenantChange, TenantUpdate, TenantWriter, WriteError};
use crate::{StoreError, Tenant, TenantStatus};

/// A requested change of status.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Transition {
    /// Trial → active (e.g. the tenant paid).
    Activate,
    /// Trial or active → suspended, with a reason shown to its users.
    Suspend {
        /// Why.
        reason: String,
    },
    /// Suspended → active.
    Resume,
    /// Trial, active or suspended → offboarding, keeping data for `grace`.
    Offboard {
        /// The grace period before the data may be purged.
        grace: Duration,
    },
    /// Offboarding → active, within the grace period.
    Restore,
    /// Offboarding → deleted, once the grace period is over.
    Purge,
}

impl Transition {
    /// A short name (`activate`, `suspend`, …) used in errors and audit events.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Activate => "activate",
            Self::Suspend { .. } => "suspend",
            Self::Resume => "resume",
            Self::Offboard { .. } => "offboard",
            Self::Restore => "restore",
            Self::Purge => "purge",
        }
    }
}

/// The name of a status (`trial`, `active`, `suspended`, `offboarding`, `deleted`).
pub fn status_name(status: &TenantStatus) -> &'static str {
    match status {
        TenantStatus::Trial { .. } => "trial",
        TenantStatus::Active => "active",
        TenantStatus::Suspended { .. } => "suspended",
        TenantStatus::Offboarding { .. } => "offboarding",
        _ => "deleted",
    }
}

/// Why a lifecycle change failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LifecycleError {
    /// The transition is not allowed from the tenant's current status.
    #[error(
        "cannot {transition} a tenant that is {from}: see the lifecycle table in tenancy_core::lifecycle"
    )]
    InvalidTransition {
        /// The current status.
        from: &'static str,
        /// The transition asked for.
        transition: &'static str,
    },
    /// Purge asked for before the grace period ends.
    #[error("the grace period runs until {purge_after}; purge after that")]
    GracePeriod {
        /// When purging becomes possible.
        purge_after: DateTime<Utc>,
    },
    /// A suspension needs a non-empty reason; a grace period must not be negative.
    #[error("invalid transition argument: {0}")]
    Invalid(&'static str),
    /// The store failed; the status is unchanged.
    #[error("tenant store failed: {0}")]
    Store(#[from] StoreError),
    /// The store refused the change: the tenant's status changed since the
    /// caller read it ([`WriteError::StatusChanged`], HTTP 409), or it is gone.
    #[error(transparent)]
    Write(#[from] WriteError),
    /// The status changed, but a hook failed (hooks must be idempotent; retry it).
    #[error("status changed to {status}, but hook {hook} failed: {reason}")]
    Hook {
        /// The new status.
        status: &'static str,
        /// Which hook.
        hook: &'static str,
        /// What it said.
        reason: String,
    },
}

/// The status `transition` leads to from `current`, at `now`.
pub fn next_status(
    current: &TenantStatus,
    transition: &Transition,
    now: DateTime<Utc>,
) -> Result<TenantStatus, LifecycleError> {
    use TenantStatus as S;
    use Transition as T;
    let next = match (current, transition) {
        (S::Trial { .. }, T::Activate) | (S::Suspended { .. }, T::Resume) => S::Active,
        (S::Offboarding { purge_after }, T::Restore) if now < *purge_after => S::Active,
        (S::Trial { .. } | S::Active, T::Suspend { reason }) => {
            if reason.trim().is_empty() {
                return Err(LifecycleError::Invalid("a suspension needs a reason"));
            }
            S::Suspended {
                reason: reason.clone(),
            }
        }
        (S::Trial { .. } | S::Active | S::Suspended { .. }, T::Offboard { grace }) => {
            if *grace < Duration::zero() {
                return Err(LifecycleError::Invalid(
                    "the grace period must not be negative",
                ));
            }
            S::Offboarding {
                purge_after: now + *grace,
            }
        }
        (S::Offboarding { purge_after }, T::Purge) if now < *purge_after => {
            return Err(LifecycleError::GracePeriod {
                purge_after: *purge_after,
            });
        }
        (S::Offboarding { .. }, T::Purge) => S::Deleted,
        (from, t) => {
            return Err(LifecycleError::InvalidTransition {
                from: status_name(from),
                transition: t.name(),
            });
        }
    };
    Ok(next)
}

/// Called after a tenant's status changed (and was saved). Every method
/// defaults to doing nothing; implement the ones you need. Hooks may run
/// again after a failure, so make them idempotent.
#[async_trait]
pub trait LifecycleHooks: Send + Sync {
    /// A tenant record was created.
    async fn on_created(&self, _tenant: &Tenant) -> Result<(), String> {
        Ok(())
    }
    /// The tenant became active (activated, resumed or restored).
    async fn on_activated(&self, _tenant: &Tenant) -> Result<(), String> {
        Ok(())
    }
    /// The tenant was suspended.
    async fn on_suspended(&self, _tenant: &Tenant) -> Result<(), String> {
        Ok(())
    }
    /// The tenant entered offboarding.
    async fn on_offboarding(&self, _tenant: &Tenant) -> Result<(), String> {
        Ok(())
    }
    /// The tenant was deleted.
    async fn on_deleted(&self, _tenant: &Tenant) -> Result<(), String> {
        Ok(())
    }
}

/// Applies lifecycle transitions: checks them, saves the new status, runs
/// the hooks and records an audit event (`tenant.<transition>`).
#[derive(Clone)]
pub struct Lifecycle {
    store: Arc<dyn TenantWriter>,
    hooks: Vec<Arc<dyn LifecycleHooks>>,
    audit: Option<Arc<dyn AuditSink>>,
    outbox: Option<Arc<str>>,
}

impl std::fmt::Debug for Lifecycle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lifecycle")
            .field("hooks", &self.hooks.len())
            .finish_non_exhaustive()
    }
}

impl Lifecycle {
    /// Lifecycle over a writable tenant store.
    pub fn new(store: Arc<dyn TenantWriter>) -> Self {
        Self {
            store,
            hooks: Vec::new(),
            audit: None,
            outbox: None,
        }
    }

    /// Also writes every transition to the [outbox](crate::outbox) on
    /// `channel` (topic `tenant.<transition>`, e.g. `tenant.suspend`, with
    /// `from`, `to` and `actor`), in the same store transaction as the
    /// status change, so billing learns of each one exactly when it happens.
    pub fn with_outbox(mut self, channel: &str) -> Self {
        self.outbox = Some(channel.into());
        self
    }

    /// Adds hooks (run in the order added).
    pub fn with_hooks(mut self, hooks: Arc<dyn LifecycleHooks>) -> Self {
        self.hooks.push(hooks);
        self
    }

    /// Records every change in `sink`.
    pub fn with_audit(mut self, sink: Arc<dyn AuditSink>) -> Self {
        self.audit = Some(sink);
        self
    }

    /// Creates the tenant record, runs `on_created` (and `on_activated` for an
    /// active tenant) and records `tenant.created`.
    pub async fn create(&self, tenant: Tenant, actor: &str) -> Result<Tenant, LifecycleError> {
        self.store.create(&tenant).await?;
        self.record(&tenant, "tenant.created", actor, None).await;
        self.run_hooks(&tenant, Hook::Created).await?;
        if tenant.status == TenantStatus::Active {
            self.run_hooks(&tenant, Hook::Activated).await?;
        }
        Ok(tenant)
    }

    /// Applies `transition` to `tenant` now.
    pub async fn apply(
        &self,
        tenant: &Tenant,
        transition: Transition,
        actor: &str,
    ) -> Result<Tenant, LifecycleError> {
        self.apply_at(tenant, transition, actor, Utc::now()).await
    }

    /// Applies `transition` at `now` (for tests and scheduled jobs).
    pub async fn apply_at(
        &self,
        tenant: &Tenant,
        transition: Transition,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<Tenant, LifecycleError> {
        let status = next_status(&tenant.status, &transition, now)?;
        // Applied only while the stored status is still the one the
        // transition was decided from: a caller holding an older copy (a
        // request admitted before a suspension) cannot write it back.
        let mut update = TenantUpdate::new().change(TenantChange::Status(StatusChange::new(
            &tenant.status,
            &status,
        )));
        if let Some(channel) = self.outbox.as_deref() {
            update = update.emit(crate::outbox::OutboxMessage::new(
                tenant.id,
                channel,
                &format!("tenant.{}", transition.name()),
                serde_json::json!({
                    "from": status_name(&tenant.status),
                    "to": status_name(&status),
                    "actor": actor,
                }),
            ));
        }
        let next = (*self.store.update(tenant.id, &update).await?).clone();
        let from = status_name(&tenant.status);
        self.record(
            &next,
            &format!("tenant.{}", transition.name()),
            actor,
            Some(from),
        )
        .await;
        let hook = match &next.status {
            TenantStatus::Active => Hook::Activated,
            TenantStatus::Suspended { .. } => Hook::Suspended,
            TenantStatus::Offboarding { .. } => Hook::Offboarding,
            _ => Hook::Deleted,
        };
        self.run_hooks(&next, hook).await?;
        Ok(next)
    }

    /// Suspends every trial among `tenants` that ended before `now`, with the
    /// reason `trial expired`; returns the suspended tenants.
    pub async fn expire_trials(
        &self,
        tenants: impl IntoIterator<Item = Arc<Tenant>>,
        now: DateTime<Utc>,
    ) -> Result<Vec<Tenant>, LifecycleError> {
        let mut out = Vec::new();
        for t in tenants {
            if matches!(t.status, TenantStatus::Trial { ends_at } if ends_at <= now) {
                let reason = "trial expired".to_owned();
                out.push(
                    self.apply_at(&t, Transition::Suspend { reason }, "lifecycle", now)
                        .await?,
                );
            }
        }
        Ok(out)
    }

    async fn record(&self, t: &Tenant, action: &str, actor: &str, from: Option<&str>) {
        let Some(sink) = &self.audit else { return };
        let event = AuditEvent::system(t.id, actor, action, "tenant")
            .with_resource_id(t.id)
            .with_details(serde_json::json!({
                "from": from,
                "to": status_name(&t.status),
            }));
        if let Err(e) = sink.record(event).await {
            tracing::error!(tenant.id = %t.id, error = %e, action, "lifecycle audit event not recorded");
        }
    }

    async fn run_hooks(&self, t: &Tenant, hook: Hook) -> Result<(), LifecycleError> {
        for h in &self.hooks {
            let r = match hook {
                Hook::Created => h.on_created(t).await,
                Hook::Activated => h.on_activated(t).await,
                Hook::Suspended => h.on_suspended(t).await,
                Hook::Offboarding => h.on_offboarding(t).await,
                Hook::Deleted => h.on_deleted(t).await,
            };
            r.map_err(|reason| LifecycleError::Hook {
                status: status_name(&t.status),
                hook: hook.name(),
                reason,
            })?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy)]
enum Hook {
    Created,
    Activated,
    Suspended,
    Offboarding,
    Deleted,
}

impl Hook {
    fn name(self) -> &'static str {
        match self {
            Self::Created => "on_created",
            Self::Activated => "on_activated",
            Self::Suspended => "on_suspended",
            Self::Offboarding => "on_offboarding",
            Self::Deleted => "on_deleted",
        }
    }
}
