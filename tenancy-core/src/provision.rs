//! Provisioning pipelines: ordered, idempotent steps that bring a tenant
//! into service, each recorded with its status and error, resumable from
//! the step that failed.
//!
//! A typical pipeline is `validate → create record → allocate storage →
//! apply plan → create keys → seed → activate`. Steps are
//! [`ProvisionStep`]s: [`FnStep`] wraps a closure, and [`CreateRecordStep`],
//! [`CreateKeysStep`] and [`ActivateStep`] cover the library's own parts.
//! The allocation of storage depends on the tenant's isolation model and is
//! supplied by the data adapter or the application.
//!
//! [`Pipeline::run`] reads the tenant's [`ProvisioningLog`], skips steps
//! already done and runs the rest in order; the first failure is recorded
//! and stops the run. Running again resumes at the failed step. A step can
//! run twice (a crash after it succeeded but before the log was written), so
//! every step must be idempotent.
//!
//! ```
//! use std::sync::Arc;
//! use tenancy_core::provision::{FnStep, InMemoryProvisioningLog, Pipeline, StepStatus};
//! use tenancy_core::{Tenant, TenantId};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let log = Arc::new(InMemoryProvisioningLog::default());
//! let pipeline = Pipeline::new(log.clone())
//!     .step(FnStep::new("validate", |t: Tenant| async move {
//!         if t.display_name.is_empty() { Err("a display name is required".to_string()) } else { Ok(()) }
//!     }))
//!     .step(FnStep::new("seed", |_t: Tenant| async { Ok(()) }));
//! let tenant = Tenant::new(TenantId::new_v4(), "acme".parse()?, "Acme");
//! let report = pipeline.run(&tenant).await?;
//! assert!(report.is_complete());
//! assert!(report.steps.iter().all(|s| s.status == StepStatus::Done));
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, PoisonError, RwLock};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tracing::Instrument as _;

use crate::crypto::keys::Keyring;
use crate::lifecycle::{Lifecycle, Transition};
use crate::store::TenantWriter;
use crate::{StoreError, Tenant, TenantId, TenantStatus};

/// One step of a pipeline. Must be idempotent.
#[async_trait]
pub trait ProvisionStep: Send + Sync {
    /// A stable name (recorded in the log; renaming a step re-runs it).
    fn name(&self) -> &str;
    /// Does the work; an error message is recorded and stops the pipeline.
    async fn run(&self, tenant: &Tenant) -> Result<(), String>;
}

/// A step's state in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StepStatus {
    /// Not run yet (or not since it was added).
    Pending,
    /// Finished.
    Done,
    /// Failed; the next run starts here.
    Failed,
}

impl StepStatus {
    /// `pending`, `done` or `failed`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Done => "done",
            Self::Failed => "failed",
        }
    }

    /// From the stored name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(Self::Pending),
            "done" => Some(Self::Done),
            "failed" => Some(Self::Failed),
            _ => None,
        }
    }
}

/// A step as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StepRecord {
    /// The step's name.
    pub step: String,
    /// Its position in the pipeline.
    pub position: u32,
    /// Its state.
    pub status: StepStatus,
    /// How many times it was attempted.
    pub attempts: u32,
    /// The last error, for a failed step.
    pub error: Option<String>,
    /// When it was last attempted.
    pub updated_at: DateTime<Utc>,
}

impl StepRecord {
    /// A record (for logs outside this crate).
    pub fn new(
        step: String,
        position: u32,
        status: StepStatus,
        attempts: u32,
        error: Option<String>,
        updated_at: DateTime<Utc>,
    ) -> Self {
        Self {
            step,
            position,
            status,
            attempts,
            error,
            updated_at,
        }
    }
}

/// Where step records are kept, per tenant.
#[async_trait]
pub trait ProvisioningLog: Send + Sync {
    /// Every step record of `tenant`, by position.
    async fn steps(&self, tenant: TenantId) -> Result<Vec<StepRecord>, StoreError>;
    /// Inserts or replaces the record of one step.
    async fn save(&self, tenant: TenantId, record: &StepRecord) -> Result<(), StoreError>;
}

/// A [`ProvisioningLog`] in memory.
#[derive(Debug, Default)]
pub struct InMemoryProvisioningLog {
    steps: RwLock<HashMap<TenantId, Vec<StepRecord>>>,
}

#[async_trait]
impl ProvisioningLog for InMemoryProvisioningLog {
    async fn steps(&self, tenant: TenantId) -> Result<Vec<StepRecord>, StoreError> {
        let mut v = self
            .steps
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&tenant)
            .cloned()
            .unwrap_or_default();
        v.sort_by_key(|r| r.position);
        Ok(v)
    }

    async fn save(&self, tenant: TenantId, record: &StepRecord) -> Result<(), StoreError> {
        let mut map = self.steps.write().unwrap_or_else(PoisonError::into_inner);
        let v = map.entry(tenant).or_default();
        match v.iter_mut().find(|r| r.step == record.step) {
            Some(r) => *r = record.clone(),
            None => v.push(record.clone()),
        }
        Ok(())
    }
}

/// Why a pipeline run stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProvisionError {
    /// A step failed; its error is in the log. Fix the cause and run again:
    /// the pipeline resumes at this step.
    #[error("provisioning step {step:?} failed: {error}; run the pipeline again to resume there")]
    StepFailed {
        /// The step.
        step: String,
        /// Its error.
        error: String,
    },
    /// The provisioning log failed.
    #[error("provisioning log failed: {0}")]
    Log(#[from] StoreError),
}

/// The log of a finished run.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProvisionReport {
    /// Every step, in order, as recorded.
    pub steps: Vec<StepRecord>,
    /// Steps this run executed (the others were already done).
    pub ran: Vec<String>,
}

impl ProvisionReport {
    /// Whether every step is done.
    pub fn is_complete(&self) -> bool {
        self.steps.iter().all(|s| s.status == StepStatus::Done)
    }
}

/// An ordered list of steps with a log. See the [module docs](self).
#[derive(Clone)]
pub struct Pipeline {
    steps: Vec<Arc<dyn ProvisionStep>>,
    log: Arc<dyn ProvisioningLog>,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field(
                "steps",
                &self.steps.iter().map(|s| s.name()).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl Pipeline {
    /// An empty pipeline recording into `log`.
    pub fn new(log: Arc<dyn ProvisioningLog>) -> Self {
        Self {
            steps: Vec::new(),
            log,
        }
    }

    /// Appends a step.
    pub fn step(mut self, step: impl ProvisionStep + 'static) -> Self {
        self.steps.push(Arc::new(step));
        self
    }

    /// Appends a shared step.
    pub fn step_arc(mut self, step: Arc<dyn ProvisionStep>) -> Self {
        self.steps.push(step);
        self
    }

    /// Runs every step not yet done, in order, stopping at the first failure.
    pub async fn run(&self, tenant: &Tenant) -> Result<ProvisionReport, ProvisionError> {
        let recorded = self.log.steps(tenant.id).await?;
        let mut ran = Vec::new();
        for (i, step) in self.steps.iter().enumerate() {
            let name = step.name().to_owned();
            let prior = recorded.iter().find(|r| r.step == name);
            if prior.is_some_and(|r| r.status == StepStatus::Done) {
                continue;
            }
            let attempts = prior.map_or(0, |r| r.attempts) + 1;
            let position = u32::try_from(i).unwrap_or(u32::MAX);
            let span =
                tracing::info_span!("provision", tenant.id = %tenant.id, step = %name, attempts);
            let result = step.run(tenant).instrument(span).await;
            ran.push(name.clone());
            let (status, error) = match &result {
                Ok(()) => (StepStatus::Done, None),
                Err(e) => (StepStatus::Failed, Some(e.clone())),
            };
            let record =
                StepRecord::new(name.clone(), position, status, attempts, error, Utc::now());
            self.log.save(tenant.id, &record).await?;
            if let Err(error) = result {
                tracing::warn!(tenant.id = %tenant.id, step = %name, %error, "provisioning step failed");
                return Err(ProvisionError::StepFailed { step: name, error });
            }
        }
        let mut steps = self.log.steps(tenant.id).await?;
        steps.retain(|r| self.steps.iter().any(|s| s.name() == r.step));
        Ok(ProvisionReport { steps, ran })
    }
}

/// A step from a name and an async closure.
pub struct FnStep<F> {
    name: String,
    f: F,
}

impl<F> std::fmt::Debug for FnStep<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FnStep").field("name", &self.name).finish()
    }
}

impl<F, Fut> FnStep<F>
where
    F: Fn(Tenant) -> Fut + Send + Sync,
    Fut: Future<Output = Result<(), String>> + Send,
{
    /// A step named `name` running `f` with a copy of the tenant.
    pub fn new(name: impl Into<String>, f: F) -> Self {
        Self {
            name: name.into(),
            f,
        }
    }
}

#[async_trait]
impl<F, Fut> ProvisionStep for FnStep<F>
where
    F: Fn(Tenant) -> Fut + Send + Sync,
    Fut: Future<Output = Result<(), String>> + Send,
{
    fn name(&self) -> &str {
        &self.name
    }
    async fn run(&self, tenant: &Tenant) -> Result<(), String> {
        (self.f)(tenant.clone()).await
    }
}

/// `create_record`: creates the tenant record unless it already exists
/// (same id), through the lifecycle so `on_created` runs and is audited.
#[derive(Clone)]
pub struct CreateRecordStep {
    lifecycle: Lifecycle,
    store: Arc<dyn TenantWriter>,
}

impl CreateRecordStep {
    /// The step, creating through `lifecycle` and checking `store` first.
    pub fn new(lifecycle: Lifecycle, store: Arc<dyn TenantWriter>) -> Self {
        Self { lifecycle, store }
    }
}

impl std::fmt::Debug for CreateRecordStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreateRecordStep").finish_non_exhaustive()
    }
}

#[async_trait]
impl ProvisionStep for CreateRecordStep {
    fn name(&self) -> &str {
        "create_record"
    }
    async fn run(&self, tenant: &Tenant) -> Result<(), String> {
        if self
            .store
            .by_id(tenant.id)
            .await
            .map_err(|e| e.to_string())?
            .is_some()
        {
            return Ok(());
        }
        self.lifecycle
            .create(tenant.clone(), "provisioning")
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

/// `create_keys`: creates the tenant's first data key and blind-index root.
#[derive(Debug, Clone)]
pub struct CreateKeysStep {
    keys: Arc<Keyring>,
}

impl CreateKeysStep {
    /// The step over `keys`.
    pub fn new(keys: Arc<Keyring>) -> Self {
        Self { keys }
    }
}

#[async_trait]
impl ProvisionStep for CreateKeysStep {
    fn name(&self) -> &str {
        "create_keys"
    }
    async fn run(&self, tenant: &Tenant) -> Result<(), String> {
        self.keys
            .primary(tenant.id)
            .await
            .map_err(|e| e.to_string())?;
        self.keys
            .blind_index(tenant.id, "provisioning-check", 16)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

/// `activate`: moves the stored tenant from trial to active (a no-op when
/// it is already active; trials stay trials unless `convert_trials`).
#[derive(Clone)]
pub struct ActivateStep {
    lifecycle: Lifecycle,
    store: Arc<dyn TenantWriter>,
    convert_trials: bool,
}

impl ActivateStep {
    /// The step; with `convert_trials`, a trial tenant becomes active too.
    pub fn new(lifecycle: Lifecycle, store: Arc<dyn TenantWriter>, convert_trials: bool) -> Self {
        Self {
            lifecycle,
            store,
            convert_trials,
        }
    }
}

impl std::fmt::Debug for ActivateStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActivateStep")
            .field("convert_trials", &self.convert_trials)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl ProvisionStep for ActivateStep {
    fn name(&self) -> &str {
        "activate"
    }
    async fn run(&self, tenant: &Tenant) -> Result<(), String> {
        let stored = self
            .store
            .by_id(tenant.id)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "the tenant record does not exist".to_owned())?;
        match stored.status {
            TenantStatus::Active => Ok(()),
            TenantStatus::Trial { .. } if !self.convert_trials => Ok(()),
            _ => self
                .lifecycle
                .apply(&stored, Transition::Activate, "provisioning")
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
        }
    }
}
