use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use dashmap::DashMap;

use super::{
    Clock, QuotaError, QuotaEvents, QuotaExceeded, SystemClock, ThresholdCrossed, TracingEvents,
    Usage, UsageRecord, nanos,
};
use crate::plan::{Limit, RateSpec, ResourceKey, ResourceKind};
use crate::{TenantContext, TenantId};

/// The in-process quota backend.
///
/// State lives in a sharded map of tenants, each with a map of resources
/// guarded by a per-tenant read lock that is only written when a resource is
/// first used; every decision is then made with atomic compare-and-swap on
/// that resource's counters. Exact within one process; for several
/// processes use the PostgreSQL (stock) or Redis (rate) backends.
///
/// ```
/// use std::sync::Arc;
/// use tenancy_core::plan::PlanCatalog;
/// use tenancy_core::quota::MemoryQuota;
/// use tenancy_core::{Tenant, TenantContext, TenantId};
///
/// let catalog = PlanCatalog::from_json(r#"{"plans": [{"id": "free", "name": "Free",
///     "limits": {"users": {"stock": 2}, "api_calls": {"rate": {"per_minute": 100}}}}]}"#)?;
/// let ctx = TenantContext::new(Tenant::new(TenantId::new_v4(), "acme".parse()?, "Acme"))
///     .with_entitlements(Arc::new(catalog.entitlements(&"free".into(), &Default::default())?));
///
/// let quota = MemoryQuota::new();
/// quota.reserve(&ctx, "users", 1)?.commit();
/// let second = quota.reserve(&ctx, "users", 1)?; // not committed: released on drop
/// assert!(quota.reserve(&ctx, "users", 1).is_err());
/// drop(second);
/// quota.reserve(&ctx, "users", 1)?.commit();
///
/// let decision = quota.check_rate(&ctx, "api_calls", 1)?;
/// assert_eq!(decision.remaining, 99);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct MemoryQuota {
    clock: Arc<dyn Clock>,
    events: Arc<dyn QuotaEvents>,
    thresholds: Vec<u8>,
    period: Duration,
    tenants: DashMap<TenantId, Arc<TenantState>>,
}

impl std::fmt::Debug for MemoryQuota {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryQuota")
            .field("tenants", &self.tenants.len())
            .field("thresholds", &self.thresholds)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct TenantState {
    resources: RwLock<HashMap<ResourceKey, Arc<ResourceState>>>,
}

struct ResourceState {
    key: ResourceKey,
    /// Stock and concurrency: reserved + committed (stock) or in use.
    held: AtomicU64,
    /// Stock: committed.
    committed: AtomicU64,
    /// Rate: GCRA windows, rebuilt when the limits change.
    rate: RwLock<Option<Arc<RateWindows>>>,
    /// Threshold bookkeeping: `period << 8 | fired-bits`.
    fired: AtomicU64,
    /// Consumption per period start (ns).
    ledger: Mutex<BTreeMap<u64, u64>>,
}

struct RateWindows {
    spec: RateSpec,
    windows: Vec<Window>,
}

struct Window {
    limit: u64,
    period: u64,
    emission: u64,
    tat: AtomicU64,
}

/// The outcome of an allowed rate check, for `RateLimit-*` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateDecision {
    /// The limit of the most constrained window.
    pub limit: u64,
    /// What is left in the most constrained window.
    pub remaining: u64,
    /// Until that window is fully replenished.
    pub reset_after: Duration,
}

/// Stock held for a pending write: [`Reservation::commit`] keeps it,
/// dropping it gives it back.
#[must_use = "a reservation is released when dropped; call commit() to keep it"]
pub struct Reservation {
    state: Arc<ResourceState>,
    amount: u64,
    done: bool,
    quota_period: (Arc<dyn Clock>, Duration),
}

impl std::fmt::Debug for Reservation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reservation")
            .field("resource", &self.state.key)
            .field("amount", &self.amount)
            .finish()
    }
}

impl Reservation {
    /// Keeps the reserved stock (the write it was for succeeded).
    pub fn commit(mut self) {
        self.state
            .committed
            .fetch_add(self.amount, Ordering::SeqCst);
        let (clock, period) = &self.quota_period;
        record(&self.state, clock.as_ref(), *period, self.amount);
        self.done = true;
    }

    /// The amount reserved.
    pub fn amount(&self) -> u64 {
        self.amount
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.done {
            saturating_sub(&self.state.held, self.amount);
        }
    }
}

/// A concurrency slot, released when dropped.
#[must_use = "the slot is released when the permit is dropped"]
pub struct Permit {
    state: Arc<ResourceState>,
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Permit")
            .field("resource", &self.state.key)
            .finish()
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        saturating_sub(&self.state.held, 1);
    }
}

fn saturating_sub(a: &AtomicU64, n: u64) {
    let _ = a.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| {
        Some(v.saturating_sub(n))
    });
}

fn period_start(clock: &dyn Clock, period: Duration) -> u64 {
    let p = nanos(period).max(1);
    nanos(clock.now()) / p * p
}

fn record(state: &ResourceState, clock: &dyn Clock, period: Duration, amount: u64) {
    let start = period_start(clock, period);
    *state
        .ledger
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .entry(start)
        .or_insert(0) += amount;
}

fn to_datetime(ns: u64) -> DateTime<Utc> {
    DateTime::from_timestamp_nanos(i64::try_from(ns).unwrap_or(i64::MAX))
}

impl Default for MemoryQuota {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryQuota {
    /// A backend with the system clock, thresholds at 80 % and 95 %, daily
    /// periods and tracing events.
    pub fn new() -> Self {
        Self {
            clock: Arc::new(SystemClock),
            events: Arc::new(TracingEvents),
            thresholds: vec![80, 95],
            period: Duration::from_secs(86_400),
            tenants: DashMap::new(),
        }
    }

    /// Uses `clock` for rate windows and periods.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Sends threshold events to `events`.
    pub fn with_events(mut self, events: Arc<dyn QuotaEvents>) -> Self {
        self.events = events;
        self
    }

    /// Threshold percentages (1–100); each fires once per crossing per period.
    pub fn with_thresholds(mut self, percents: &[u8]) -> Self {
        let mut t: Vec<u8> = percents.iter().map(|p| (*p).clamp(1, 100)).collect();
        t.sort_unstable();
        t.dedup();
        t.truncate(8);
        self.thresholds = t;
        self
    }

    /// The length of a usage period (threshold re-arming, usage records).
    pub fn with_period(mut self, period: Duration) -> Self {
        self.period = period;
        self
    }

    fn state(&self, tenant: TenantId, resource: &str) -> Arc<ResourceState> {
        let t = match self.tenants.get(&tenant) {
            Some(t) => t.clone(),
            None => self.tenants.entry(tenant).or_default().clone(),
        };
        if let Some(r) = t
            .resources
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(resource)
        {
            return r.clone();
        }
        t.resources
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(resource.into())
            .or_insert_with(|| {
                Arc::new(ResourceState {
                    key: resource.into(),
                    held: AtomicU64::new(0),
                    committed: AtomicU64::new(0),
                    rate: RwLock::new(None),
                    fired: AtomicU64::new(0),
                    ledger: Mutex::new(BTreeMap::new()),
                })
            })
            .clone()
    }

    fn limit<'c>(
        ctx: &'c TenantContext,
        resource: &str,
        expected: ResourceKind,
    ) -> Result<Option<&'c Limit>, QuotaError> {
        let e = ctx.entitlements().ok_or(QuotaError::NoEntitlements)?;
        let limit = e.limit(resource);
        if let Some(actual) = limit.and_then(kind_of)
            && actual != expected
        {
            return Err(QuotaError::WrongKind {
                resource: resource.into(),
                expected,
                actual,
            });
        }
        Ok(limit)
    }

    fn exceeded(
        ctx: &TenantContext,
        resource: &str,
        kind: ResourceKind,
        used: u64,
        limit: u64,
        requested: u64,
        retry_after: Option<Duration>,
    ) -> QuotaError {
        QuotaError::Exceeded(QuotaExceeded {
            tenant: ctx.tenant_id(),
            resource: resource.into(),
            kind,
            used,
            limit,
            requested,
            retry_after,
        })
    }

    fn thresholds(&self, tenant: TenantId, state: &ResourceState, used: u64, limit: u64) {
        if self.thresholds.is_empty() || limit == 0 {
            return;
        }
        let period = period_start(self.clock.as_ref(), self.period);
        let period_id = period / nanos(self.period).max(1);
        let due: u64 = self
            .thresholds
            .iter()
            .enumerate()
            .filter(|(_, p)| u128::from(used) * 100 >= u128::from(**p) * u128::from(limit))
            .fold(0, |acc, (i, _)| acc | (1 << i));
        if due == 0 {
            return;
        }
        let mut newly = 0;
        let _ = state
            .fired
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| {
                let (p, bits) = (v >> 8, v & 0xff);
                let bits = if p == period_id { bits } else { 0 };
                newly = due & !bits;
                (newly != 0).then_some((period_id << 8) | bits | due)
            });
        for (i, percent) in self.thresholds.iter().enumerate() {
            if newly & (1 << i) != 0 {
                self.events.threshold_crossed(&ThresholdCrossed {
                    tenant,
                    resource: state.key.clone(),
                    percent: *percent,
                    used,
                    limit,
                    period_start: to_datetime(period),
                });
            }
        }
    }

    /// Reserves `amount` of a stock resource. Fails with
    /// [`QuotaExceeded`] if that would pass the limit (including after a
    /// downgrade left usage above it).
    pub fn reserve(
        &self,
        ctx: &TenantContext,
        resource: &str,
        amount: u64,
    ) -> Result<Reservation, QuotaError> {
        let limit = match Self::limit(ctx, resource, ResourceKind::Stock)? {
            Some(Limit::Stock(n)) => Some(*n),
            Some(_) => None,
            None => Some(0),
        };
        let state = self.state(ctx.tenant_id(), resource);
        let mut seen = 0;
        let ok = state
            .held
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |held| {
                seen = held;
                let next = held.checked_add(amount)?;
                match limit {
                    Some(l) if next > l => None,
                    _ => Some(next),
                }
            });
        if ok.is_err() {
            return Err(Self::exceeded(
                ctx,
                resource,
                ResourceKind::Stock,
                seen,
                limit.unwrap_or(u64::MAX),
                amount,
                None,
            ));
        }
        if let Some(l) = limit {
            self.thresholds(ctx.tenant_id(), &state, seen + amount, l);
        }
        Ok(Reservation {
            state,
            amount,
            done: false,
            quota_period: (self.clock.clone(), self.period),
        })
    }

    /// Gives back `amount` of committed stock (the things were deleted).
    pub fn release(&self, ctx: &TenantContext, resource: &str, amount: u64) {
        let state = self.state(ctx.tenant_id(), resource);
        saturating_sub(&state.held, amount);
        saturating_sub(&state.committed, amount);
    }

    /// Sets the committed usage of a stock resource (load it from your
    /// database at start-up).
    pub fn set_used(&self, tenant: TenantId, resource: &str, used: u64) {
        let state = self.state(tenant, resource);
        state.held.store(used, Ordering::SeqCst);
        state.committed.store(used, Ordering::SeqCst);
    }

    /// Takes a concurrency slot, released when the [`Permit`] drops.
    pub fn acquire(&self, ctx: &TenantContext, resource: &str) -> Result<Permit, QuotaError> {
        let limit = match Self::limit(ctx, resource, ResourceKind::Concurrency)? {
            Some(Limit::Concurrency(n)) => Some(u64::from(*n)),
            Some(_) => None,
            None => Some(0),
        };
        let state = self.state(ctx.tenant_id(), resource);
        let mut seen = 0;
        let ok = state
            .held
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |held| {
                seen = held;
                match limit {
                    Some(l) if held >= l => None,
                    _ => Some(held + 1),
                }
            });
        if ok.is_err() {
            return Err(Self::exceeded(
                ctx,
                resource,
                ResourceKind::Concurrency,
                seen,
                limit.unwrap_or(u64::MAX),
                1,
                None,
            ));
        }
        Ok(Permit { state })
    }

    fn windows(state: &ResourceState, spec: &RateSpec) -> Arc<RateWindows> {
        if let Some(w) = state
            .rate
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            && w.spec == *spec
        {
            return w.clone();
        }
        let mut slot = state.rate.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(w) = slot.as_ref()
            && w.spec == *spec
        {
            return w.clone();
        }
        let built = Arc::new(RateWindows {
            spec: *spec,
            windows: spec
                .windows()
                .into_iter()
                .map(|(limit, period)| {
                    let period = nanos(period);
                    Window {
                        limit,
                        period,
                        emission: period.checked_div(limit).map_or(u64::MAX, |e| e.max(1)),
                        tat: AtomicU64::new(0),
                    }
                })
                .collect(),
        });
        *slot = Some(built.clone());
        built
    }

    /// Consumes `cost` from every window of a rate resource (GCRA), all or
    /// nothing. Refusals carry the wait after which the call would succeed.
    pub fn check_rate(
        &self,
        ctx: &TenantContext,
        resource: &str,
        cost: u64,
    ) -> Result<RateDecision, QuotaError> {
        let spec = match Self::limit(ctx, resource, ResourceKind::Rate)? {
            Some(Limit::Rate(spec)) => *spec,
            Some(_) => {
                return Ok(RateDecision {
                    limit: u64::MAX,
                    remaining: u64::MAX,
                    reset_after: Duration::ZERO,
                });
            }
            None => RateSpec {
                per_second: Some(0),
                ..RateSpec::default()
            },
        };
        let state = self.state(ctx.tenant_id(), resource);
        let rw = Self::windows(&state, &spec);
        let now = nanos(self.clock.now());
        let mut advanced: Vec<(usize, u64)> = Vec::with_capacity(rw.windows.len());
        let mut best: Option<RateDecision> = None;
        let mut most_used = (0u64, 1u64);
        for (i, w) in rw.windows.iter().enumerate() {
            let inc = w.emission.saturating_mul(cost);
            let mut refused = None;
            let updated = w
                .tat
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |tat| {
                    let new_tat = tat.max(now).saturating_add(inc);
                    if new_tat - now > w.period {
                        refused = Some(new_tat - now - w.period);
                        None
                    } else {
                        Some(new_tat)
                    }
                });
            match updated {
                Ok(old) => {
                    advanced.push((i, inc));
                    let new_tat = old.max(now) + inc;
                    let backlog = new_tat - now;
                    let used = backlog.div_ceil(w.emission).min(w.limit);
                    let remaining = w.limit.saturating_sub(used);
                    if u128::from(used) * u128::from(most_used.1)
                        >= u128::from(most_used.0) * u128::from(w.limit)
                    {
                        most_used = (used, w.limit);
                    }
                    if best.is_none_or(|b| remaining < b.remaining) {
                        best = Some(RateDecision {
                            limit: w.limit,
                            remaining,
                            reset_after: Duration::from_nanos(backlog),
                        });
                    }
                }
                Err(tat) => {
                    for (j, inc) in &advanced {
                        saturating_sub(&rw.windows[*j].tat, *inc);
                    }
                    let backlog = tat.max(now) - now;
                    let used = backlog.div_ceil(w.emission).min(w.limit);
                    // Asking for more than the window holds can never succeed.
                    let retry = if cost > w.limit {
                        None
                    } else {
                        refused.map(Duration::from_nanos)
                    };
                    return Err(Self::exceeded(
                        ctx,
                        resource,
                        ResourceKind::Rate,
                        used,
                        w.limit,
                        cost,
                        retry,
                    ));
                }
            }
        }
        record(&state, self.clock.as_ref(), self.period, cost);
        self.thresholds(ctx.tenant_id(), &state, most_used.0, most_used.1);
        Ok(best.unwrap_or(RateDecision {
            limit: u64::MAX,
            remaining: u64::MAX,
            reset_after: Duration::ZERO,
        }))
    }

    /// Usage of every resource the tenant's plan meters.
    pub fn usage(&self, ctx: &TenantContext) -> Result<BTreeMap<ResourceKey, Usage>, QuotaError> {
        let e = ctx.entitlements().ok_or(QuotaError::NoEntitlements)?;
        let now = nanos(self.clock.now());
        let mut out = BTreeMap::new();
        for (resource, limit) in &e.limits {
            let state = self.state(ctx.tenant_id(), resource);
            let usage = match limit {
                Limit::Stock(n) => Usage {
                    kind: ResourceKind::Stock,
                    used: state.held.load(Ordering::SeqCst),
                    limit: Some(*n),
                },
                Limit::Concurrency(n) => Usage {
                    kind: ResourceKind::Concurrency,
                    used: state.held.load(Ordering::SeqCst),
                    limit: Some(u64::from(*n)),
                },
                Limit::Rate(spec) => {
                    let rw = Self::windows(&state, spec);
                    let mut u = Usage {
                        kind: ResourceKind::Rate,
                        used: 0,
                        limit: None,
                    };
                    let mut worst = -1.0f64;
                    for w in &rw.windows {
                        let backlog = w.tat.load(Ordering::SeqCst).max(now) - now;
                        let used = backlog.div_ceil(w.emission).min(w.limit);
                        let ratio = used as f64 / w.limit.max(1) as f64;
                        if ratio > worst {
                            worst = ratio;
                            u.used = used;
                            u.limit = Some(w.limit);
                        }
                    }
                    u
                }
                _ => Usage {
                    kind: ResourceKind::Stock,
                    used: state.held.load(Ordering::SeqCst),
                    limit: None,
                },
            };
            out.insert(resource.clone(), usage);
        }
        Ok(out)
    }

    /// Consumption per tenant, resource and period (periods starting at or
    /// after `since`), for billing.
    pub fn usage_records(&self, since: DateTime<Utc>) -> Vec<UsageRecord> {
        let mut out = Vec::new();
        for t in &self.tenants {
            let resources = t
                .value()
                .resources
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            for (key, r) in resources.iter() {
                let ledger = r.ledger.lock().unwrap_or_else(PoisonError::into_inner);
                for (start, amount) in ledger.iter() {
                    let period_start = to_datetime(*start);
                    if period_start >= since {
                        out.push(UsageRecord {
                            tenant: *t.key(),
                            resource: key.clone(),
                            period_start,
                            amount: *amount,
                        });
                    }
                }
            }
        }
        out.sort_by(|a, b| {
            (a.tenant, &a.resource, a.period_start).cmp(&(b.tenant, &b.resource, b.period_start))
        });
        out
    }
}

fn kind_of(limit: &Limit) -> Option<ResourceKind> {
    match limit {
        Limit::Stock(_) => Some(ResourceKind::Stock),
        Limit::Rate(_) => Some(ResourceKind::Rate),
        Limit::Concurrency(_) => Some(ResourceKind::Concurrency),
        _ => None,
    }
}
