//! Per-tenant health checks: is this tenant's database reachable under its
//! placement, is there quota headroom, is its key available?
//!
//! A [`TenantHealth`] runs [`HealthProbe`]s concurrently, each with a
//! timeout, and reports every result. [`KeyProbe`] and [`FnProbe`] are here;
//! tenancy-sqlx adds a database probe that opens a tenant-scoped
//! transaction.
//!
//! ```
//! use std::time::Duration;
//! use tenancy_core::health::{FnProbe, Status, TenantHealth};
//! use tenancy_core::{Tenant, TenantId};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let health = TenantHealth::new(Duration::from_secs(2))
//!     .probe(FnProbe::new("quota", |_t: Tenant| async { Ok("42% of customers used".to_string()) }));
//! let report = health.check(&Tenant::new(TenantId::new_v4(), "acme".parse()?, "Acme")).await;
//! assert_eq!(report.status, Status::Healthy);
//! # Ok(()) }
//! ```

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::crypto::keys::Keyring;
use crate::{Tenant, TenantId};

/// The outcome of one probe or of a whole check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Status {
    /// Fine.
    Healthy,
    /// Working, but close to a limit (e.g. quota above a warning ratio).
    Degraded,
    /// Not working.
    Unhealthy,
}

/// What a probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProbeResult {
    /// The probe.
    pub name: String,
    /// Its status.
    pub status: Status,
    /// A short human-readable detail (never secrets).
    pub detail: String,
    /// How long it took.
    pub elapsed: Duration,
}

/// A health report of one tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HealthReport {
    /// The tenant.
    pub tenant: TenantId,
    /// The worst status of all probes.
    pub status: Status,
    /// Every probe's result, in the order added.
    pub probes: Vec<ProbeResult>,
}

/// One health check, returning a status and a short detail.
#[async_trait]
pub trait HealthProbe: Send + Sync {
    /// The probe's name (`database`, `keys`, `quota`).
    fn name(&self) -> &str;
    /// Checks `tenant`.
    async fn check(&self, tenant: &Tenant) -> ProbeOutcome;
}

/// What a probe returns: a status and a detail.
pub type ProbeOutcome = (Status, String);

/// Runs probes for a tenant. See the [module docs](self).
#[derive(Clone)]
pub struct TenantHealth {
    probes: Vec<Arc<dyn HealthProbe>>,
    timeout: Duration,
}

impl std::fmt::Debug for TenantHealth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantHealth")
            .field(
                "probes",
                &self.probes.iter().map(|p| p.name()).collect::<Vec<_>>(),
            )
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl TenantHealth {
    /// No probes yet; each probe gets `timeout` (a timed-out probe is unhealthy).
    pub fn new(timeout: Duration) -> Self {
        Self {
            probes: Vec::new(),
            timeout,
        }
    }

    /// Adds a probe.
    pub fn probe(mut self, probe: impl HealthProbe + 'static) -> Self {
        self.probes.push(Arc::new(probe));
        self
    }

    /// Runs every probe concurrently and reports.
    pub async fn check(&self, tenant: &Tenant) -> HealthReport {
        let runs = self.probes.iter().map(|p| async move {
            let started = Instant::now();
            let (status, detail) = match tokio::time::timeout(self.timeout, p.check(tenant)).await {
                Ok(outcome) => outcome,
                Err(_) => (
                    Status::Unhealthy,
                    format!("no answer within {} ms", self.timeout.as_millis()),
                ),
            };
            ProbeResult {
                name: p.name().to_owned(),
                status,
                detail,
                elapsed: started.elapsed(),
            }
        });
        let probes = futures_util::future::join_all(runs).await;
        let status = probes
            .iter()
            .map(|p| p.status)
            .max()
            .unwrap_or(Status::Healthy);
        HealthReport {
            tenant: tenant.id,
            status,
            probes,
        }
    }
}

/// `keys`: the tenant's primary data key can be loaded (store and provider
/// reachable, key not destroyed).
#[derive(Debug, Clone)]
pub struct KeyProbe {
    keys: Arc<Keyring>,
}

impl KeyProbe {
    /// A probe over `keys`.
    pub fn new(keys: Arc<Keyring>) -> Self {
        Self { keys }
    }
}

#[async_trait]
impl HealthProbe for KeyProbe {
    fn name(&self) -> &str {
        "keys"
    }
    async fn check(&self, tenant: &Tenant) -> ProbeOutcome {
        match self.keys.primary(tenant.id).await {
            Ok(k) => (
                Status::Healthy,
                format!("data key v{} available", k.version()),
            ),
            Err(e) => (Status::Unhealthy, e.to_string()),
        }
    }
}

/// A probe from a name and an async closure returning `Ok(detail)` or
/// `Err(detail)` (unhealthy).
pub struct FnProbe<F> {
    name: String,
    f: F,
}

impl<F> std::fmt::Debug for FnProbe<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FnProbe").field("name", &self.name).finish()
    }
}

impl<F, Fut> FnProbe<F>
where
    F: Fn(Tenant) -> Fut + Send + Sync,
    Fut: Future<Output = Result<String, String>> + Send,
{
    /// A probe named `name`.
    pub fn new(name: impl Into<String>, f: F) -> Self {
        Self {
            name: name.into(),
            f,
        }
    }
}

#[async_trait]
impl<F, Fut> HealthProbe for FnProbe<F>
where
    F: Fn(Tenant) -> Fut + Send + Sync,
    Fut: Future<Output = Result<String, String>> + Send,
{
    fn name(&self) -> &str {
        &self.name
    }
    async fn check(&self, tenant: &Tenant) -> ProbeOutcome {
        match (self.f)(tenant.clone()).await {
            Ok(d) => (Status::Healthy, d),
            Err(d) => (Status::Unhealthy, d),
        }
    }
}

/// `quota`: headroom of each resource, from a closure returning
/// `(resource, used, limit)`; degraded at or above `warn_ratio` of a limit,
/// unhealthy at the limit.
pub struct QuotaHeadroomProbe<F> {
    usage: F,
    warn_ratio: f64,
}

impl<F> std::fmt::Debug for QuotaHeadroomProbe<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuotaHeadroomProbe")
            .field("warn_ratio", &self.warn_ratio)
            .finish_non_exhaustive()
    }
}

impl<F, Fut> QuotaHeadroomProbe<F>
where
    F: Fn(TenantId) -> Fut + Send + Sync,
    Fut: Future<Output = Result<Vec<(String, u64, u64)>, String>> + Send,
{
    /// A probe reading usage with `usage`, warning at `warn_ratio` (e.g. 0.9).
    pub fn new(usage: F, warn_ratio: f64) -> Self {
        Self { usage, warn_ratio }
    }
}

#[async_trait]
impl<F, Fut> HealthProbe for QuotaHeadroomProbe<F>
where
    F: Fn(TenantId) -> Fut + Send + Sync,
    Fut: Future<Output = Result<Vec<(String, u64, u64)>, String>> + Send,
{
    fn name(&self) -> &str {
        "quota"
    }
    async fn check(&self, tenant: &Tenant) -> ProbeOutcome {
        let rows = match (self.usage)(tenant.id).await {
            Ok(rows) => rows,
            Err(e) => return (Status::Unhealthy, e),
        };
        let mut status = Status::Healthy;
        let mut parts = Vec::new();
        for (resource, used, limit) in rows {
            #[allow(clippy::cast_precision_loss)]
            let ratio = if limit == 0 {
                1.0
            } else {
                used as f64 / limit as f64
            };
            let s = if used >= limit {
                Status::Unhealthy
            } else if ratio >= self.warn_ratio {
                Status::Degraded
            } else {
                Status::Healthy
            };
            status = status.max(s);
            parts.push(format!("{resource} {used}/{limit}"));
        }
        (status, parts.join(", "))
    }
}
