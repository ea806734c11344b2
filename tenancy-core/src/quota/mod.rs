//! The quota engine: stock, rate and concurrency limits per tenant.
//!
//! | kind | examples | operation | refusal |
//! |---|---|---|---|
//! | stock | users, policies, storage bytes | [`MemoryQuota::reserve`] → [`Reservation`] (commit, or dropped = released); [`MemoryQuota::release`] on deletion | never over the limit |
//! | rate | API calls per minute and per hour | [`MemoryQuota::check_rate`] (GCRA, several windows, all or nothing) | with `retry_after` |
//! | concurrency | concurrent requests | [`MemoryQuota::acquire`] → [`Permit`] (released on drop) | at the limit |
//!
//! Limits come from the tenant's [`Entitlements`](crate::plan::Entitlements)
//! carried in its [`TenantContext`](crate::TenantContext); a resource the
//! plan does not mention is refused (limit 0), never unlimited. Refusals are
//! a typed [`QuotaExceeded`]. Threshold events fire when usage crosses the
//! configured percentages (80 % and 95 % by default), once per crossing per
//! period. Consumption is aggregated per period ([`UsageRecord`]) for billing.
//!
//! [`MemoryQuota`] is the in-process backend (atomics; no global lock on the
//! hot path). `tenancy-sqlx` provides PostgreSQL stock counters that change
//! in the same transaction as the business write.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::plan::{ResourceKey, ResourceKind};
use crate::{StoreError, TenantId};

mod memory;
#[cfg(feature = "calendar")]
pub mod monthly;

pub use memory::{MemoryQuota, Permit, RateDecision, Reservation};

/// A source of time for quota decisions, injectable for tests.
pub trait Clock: Send + Sync + fmt::Debug {
    /// Time since the Unix epoch.
    fn now(&self) -> Duration;
}

/// The system clock: wall time read once, then advanced with the CPU's
/// monotonic counter (via `quanta`, the clock `governor` uses), which is
/// several times cheaper than asking the OS on every check and never runs
/// backwards.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

struct Base {
    clock: quanta::Clock,
    start: quanta::Instant,
    wall: Duration,
}

static BASE: std::sync::OnceLock<Base> = std::sync::OnceLock::new();

impl Clock for SystemClock {
    fn now(&self) -> Duration {
        let base = BASE.get_or_init(|| {
            let clock = quanta::Clock::new();
            Base {
                start: clock.now(),
                wall: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default(),
                clock,
            }
        });
        base.wall + base.clock.now().duration_since(base.start)
    }
}

/// A clock that moves only when told to.
///
/// ```
/// use std::time::Duration;
/// use tenancy_core::quota::{Clock, ManualClock};
///
/// let clock = ManualClock::new(Duration::from_secs(1_000));
/// clock.advance(Duration::from_millis(1500));
/// assert_eq!(clock.now(), Duration::from_millis(1_001_500));
/// ```
#[derive(Debug, Clone, Default)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    /// A clock reading `start`.
    pub fn new(start: Duration) -> Self {
        Self(Arc::new(AtomicU64::new(nanos(start))))
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        self.0.fetch_add(nanos(by), Ordering::SeqCst);
    }

    /// Sets the clock.
    pub fn set(&self, to: Duration) {
        self.0.store(nanos(to), Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Duration {
        Duration::from_nanos(self.0.load(Ordering::SeqCst))
    }
}

pub(crate) fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// A refusal: the tenant has used its allowance of a resource.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{kind} quota exceeded for {resource}: {used} of {limit} used, {requested} requested{}",
    retry_after.map(|d| format!("; retry after {:.1} s", d.as_secs_f64())).unwrap_or_default()
)]
#[non_exhaustive]
pub struct QuotaExceeded {
    /// The tenant.
    pub tenant: TenantId,
    /// The resource.
    pub resource: ResourceKey,
    /// Its kind.
    pub kind: ResourceKind,
    /// Usage at the moment of refusal.
    pub used: u64,
    /// The limit (0 when the plan does not include the resource).
    pub limit: u64,
    /// The amount asked for.
    pub requested: u64,
    /// When a retry can succeed (rate limits); `None` when waiting will not help.
    pub retry_after: Option<Duration>,
}

impl QuotaExceeded {
    /// A refusal without `retry_after` (set the field for rate limits).
    pub fn new(
        tenant: TenantId,
        resource: &str,
        kind: ResourceKind,
        used: u64,
        limit: u64,
        requested: u64,
    ) -> Self {
        Self {
            tenant,
            resource: resource.into(),
            kind,
            used,
            limit,
            requested,
            retry_after: None,
        }
    }

    /// HTTP status: 429 for rate and concurrency, 413 for storage (resources
    /// named `*_bytes`), 403 for other stock.
    pub fn status(&self) -> u16 {
        match self.kind {
            ResourceKind::Rate | ResourceKind::Concurrency => 429,
            ResourceKind::Monthly => 403,
            ResourceKind::Stock if self.resource.ends_with("_bytes") => 413,
            ResourceKind::Stock => 403,
        }
    }
}

/// Why a quota operation failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum QuotaError {
    /// The tenant is over its allowance.
    #[error(transparent)]
    Exceeded(#[from] QuotaExceeded),
    /// The resource is metered as another kind (a programming error).
    #[error("resource {resource} is a {actual} resource, not {expected}")]
    WrongKind {
        /// The resource.
        resource: ResourceKey,
        /// The kind the call needs.
        expected: ResourceKind,
        /// The kind the plan defines.
        actual: ResourceKind,
    },
    /// The context carries no entitlements: resolve the tenant's plan first.
    #[error(
        "the tenant context carries no plan entitlements; attach them with TenantContext::with_entitlements"
    )]
    NoEntitlements,
    /// The backend failed.
    #[error(transparent)]
    Backend(#[from] StoreError),
}

/// The limit on `resource` in the context's entitlements, checked to be of
/// kind `expected`. `Ok(None)`: the plan does not meter the resource (every
/// backend refuses it, limit 0). Shared by all quota backends.
///
/// ```
/// use std::sync::Arc;
/// use tenancy_core::plan::{Limit, PlanCatalog, ResourceKind};
/// use tenancy_core::quota::entitled_limit;
/// use tenancy_core::{Tenant, TenantContext, TenantId};
///
/// let c = PlanCatalog::from_json(r#"{"plans": [{"id": "p", "name": "P", "limits": {"users": {"stock": 5}}}]}"#)?;
/// let ctx = TenantContext::new(Tenant::new(TenantId::new_v4(), "a".parse()?, "A"))
///     .with_entitlements(Arc::new(c.entitlements(&"p".into(), &Default::default())?));
/// assert_eq!(entitled_limit(&ctx, "users", ResourceKind::Stock)?, Some(Limit::Stock(5)));
/// assert_eq!(entitled_limit(&ctx, "projects", ResourceKind::Stock)?, None);
/// assert!(entitled_limit(&ctx, "users", ResourceKind::Rate).is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn entitled_limit(
    ctx: &crate::TenantContext,
    resource: &str,
    expected: ResourceKind,
) -> Result<Option<crate::plan::Limit>, QuotaError> {
    use crate::plan::Limit;
    let e = ctx.entitlements().ok_or(QuotaError::NoEntitlements)?;
    let limit = e.limit(resource).copied();
    let actual = match limit {
        Some(Limit::Stock(_)) => Some(ResourceKind::Stock),
        Some(Limit::Rate(_)) => Some(ResourceKind::Rate),
        Some(Limit::Concurrency(_)) => Some(ResourceKind::Concurrency),
        Some(Limit::Monthly(_)) => Some(ResourceKind::Monthly),
        _ => None,
    };
    match actual {
        Some(actual) if actual != expected => Err(QuotaError::WrongKind {
            resource: resource.into(),
            expected,
            actual,
        }),
        _ => Ok(limit),
    }
}

impl QuotaError {
    /// A refusal for the context's tenant (shared by every backend).
    pub fn exceeded(
        ctx: &crate::TenantContext,
        resource: &str,
        kind: ResourceKind,
        used: u64,
        limit: u64,
        requested: u64,
        retry_after: Option<Duration>,
    ) -> Self {
        let mut e = QuotaExceeded::new(ctx.tenant_id(), resource, kind, used, limit, requested);
        e.retry_after = retry_after;
        QuotaError::Exceeded(e)
    }
}

/// The rate windows `(limit, period)` that apply to `resource` for the
/// context's tenant: `Ok(None)` when it is unlimited, a single zero-limit
/// window when the plan does not meter it (refused, never unlimited).
/// Shared by the rate-limiting backends.
pub fn rate_windows(
    ctx: &crate::TenantContext,
    resource: &str,
) -> Result<Option<Vec<(u64, Duration)>>, QuotaError> {
    match entitled_limit(ctx, resource, ResourceKind::Rate)? {
        Some(crate::plan::Limit::Rate(spec)) => Ok(Some(spec.windows())),
        Some(_) => Ok(None),
        None => Ok(Some(vec![(0, Duration::from_secs(1))])),
    }
}

/// A resource's usage against its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Usage {
    /// The kind.
    pub kind: ResourceKind,
    /// In use (stock, concurrency) or used in the most loaded window (rate).
    pub used: u64,
    /// The limit (`None` = unlimited).
    pub limit: Option<u64>,
}

/// Usage crossed a threshold.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ThresholdCrossed {
    /// The tenant.
    pub tenant: TenantId,
    /// The resource.
    pub resource: ResourceKey,
    /// The threshold, in percent.
    pub percent: u8,
    /// Usage when it was crossed.
    pub used: u64,
    /// The limit.
    pub limit: u64,
    /// The start of the period in which it was crossed.
    pub period_start: DateTime<Utc>,
}

impl ThresholdCrossed {
    /// An event (for backends outside this crate).
    pub fn new(
        tenant: TenantId,
        resource: &str,
        percent: u8,
        used: u64,
        limit: u64,
        period_start: DateTime<Utc>,
    ) -> Self {
        Self {
            tenant,
            resource: resource.into(),
            percent,
            used,
            limit,
            period_start,
        }
    }
}

/// The start of a usage period, as carried in [`ThresholdCrossed`] and [`UsageRecord`].
pub type PeriodStart = DateTime<Utc>;

/// The period start `secs` seconds after the Unix epoch.
pub fn period_start_from_secs(secs: u64) -> PeriodStart {
    DateTime::from_timestamp(i64::try_from(secs).unwrap_or(i64::MAX), 0).unwrap_or_default()
}

/// The thresholds in `percents` that `used` of `limit` has reached.
///
/// ```
/// assert_eq!(tenancy_core::quota::reached_thresholds(&[80, 95], 9, 10), vec![80]);
/// assert!(tenancy_core::quota::reached_thresholds(&[80, 95], 7, 10).is_empty());
/// ```
pub fn reached_thresholds(percents: &[u8], used: u64, limit: u64) -> Vec<u8> {
    if limit == 0 {
        return Vec::new();
    }
    percents
        .iter()
        .copied()
        .filter(|p| u128::from(used) * 100 >= u128::from(*p) * u128::from(limit))
        .collect()
}

/// Receives quota events (wire it to the audit log or notifications).
pub trait QuotaEvents: Send + Sync {
    /// A threshold was crossed (once per threshold, resource and period).
    fn threshold_crossed(&self, event: &ThresholdCrossed);
}

/// Logs quota events through `tracing` (the default sink).
#[derive(Debug, Clone, Copy, Default)]
pub struct TracingEvents;

impl QuotaEvents for TracingEvents {
    fn threshold_crossed(&self, e: &ThresholdCrossed) {
        tracing::info!(
            target: "tenancy::quota",
            tenant = %e.tenant,
            resource = %e.resource,
            percent = e.percent,
            used = e.used,
            limit = e.limit,
            "quota threshold crossed"
        );
    }
}

/// Consumption of a resource in one period, for billing.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct UsageRecord {
    /// The tenant.
    pub tenant: TenantId,
    /// The resource.
    pub resource: ResourceKey,
    /// The period's start.
    pub period_start: DateTime<Utc>,
    /// Amount consumed (rate) or added (stock) in the period.
    pub amount: u64,
}
