use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use dashmap::DashMap;
use foldhash::fast::RandomState;

use super::{
    Clock, QuotaError, QuotaEvents, SystemClock, ThresholdCrossed, TracingEvents, Usage,
    UsageRecord, entitled_limit, nanos,
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
/// assert_eq!(decision.remaining(), 99);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct MemoryQuota {
    /// `None`: the system clock, called directly (no dynamic dispatch).
    clock: Option<Arc<dyn Clock>>,
    events: Arc<dyn QuotaEvents>,
    thresholds: Vec<u8>,
    period: Duration,
    tenants: DashMap<TenantId, Arc<TenantState>, RandomState>,
    /// Rate windows per subject (user, client address) of a tenant:
    /// bounded, idle ones dropped (a day idle drains every window).
    subjects: moka::sync::Cache<(TenantId, Arc<str>, Arc<str>), Arc<ResourceState>>,
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
    resources: RwLock<HashMap<ResourceKey, Arc<ResourceState>, RandomState>>,
}

struct ResourceState {
    key: ResourceKey,
    /// Stock and concurrency: reserved + committed (stock) or in use.
    held: AtomicU64,
    /// Stock: committed.
    committed: AtomicU64,
    /// Rate: GCRA windows for the first limits seen (the common case)...
    first_rate: OnceLock<RateWindows>,
    /// ...and rebuilt ones after the limits changed.
    rate: RwLock<Option<Arc<RateWindows>>>,
    /// Threshold bookkeeping: `period << 8 | fired-bits`.
    fired: AtomicU64,
    /// Consumption in the current period (lock-free fast path)...
    current_period: AtomicU64,
    current_amount: AtomicU64,
    /// ...and in earlier periods, by period start (ns).
    ledger: Mutex<BTreeMap<u64, u64>>,
}

impl ResourceState {
    fn new(key: &str) -> Self {
        Self {
            key: key.into(),
            held: AtomicU64::new(0),
            committed: AtomicU64::new(0),
            first_rate: OnceLock::new(),
            rate: RwLock::new(None),
            fired: AtomicU64::new(0),
            current_period: AtomicU64::new(0),
            current_amount: AtomicU64::new(0),
            ledger: Mutex::new(BTreeMap::new()),
        }
    }

    /// Adds `amount` to the consumption of the period containing `now`.
    fn record(&self, now: u64, period: Duration, amount: u64) {
        let current = self.current_period.load(Ordering::Acquire);
        let len = nanos(period).max(1);
        // Fast path: still inside the current period (no division).
        if now >= current && now - current < len && current != 0 {
            self.current_amount.fetch_add(amount, Ordering::AcqRel);
            return;
        }
        let start = period_start(now, period);
        if current != start {
            let mut ledger = self.ledger.lock().unwrap_or_else(PoisonError::into_inner);
            let previous = self.current_period.load(Ordering::Acquire);
            if previous != start {
                let carried = self.current_amount.swap(0, Ordering::AcqRel);
                if carried > 0 {
                    *ledger.entry(previous).or_insert(0) += carried;
                }
                self.current_period.store(start, Ordering::Release);
            }
        }
        // A record racing a period switch may land in the adjacent period;
        // it is never lost.
        self.current_amount.fetch_add(amount, Ordering::AcqRel);
    }

    /// Every period's consumption, current one included.
    fn records(&self) -> BTreeMap<u64, u64> {
        let mut all = self
            .ledger
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let current = self.current_amount.load(Ordering::Acquire);
        if current > 0 {
            *all.entry(self.current_period.load(Ordering::Acquire))
                .or_insert(0) += current;
        }
        all
    }
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

/// The outcome of an allowed rate check, describing the most constrained
/// window, for `RateLimit-*` headers. Figures are computed on demand, so a
/// check that does not need them does not pay for the divisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateDecision {
    limit: u64,
    backlog: u64,
    emission: u64,
}

impl RateDecision {
    /// A decision for a window of `limit` events whose backlog (time until
    /// fully replenished) is `backlog`, one event per `emission` — for other
    /// backends implementing GCRA.
    pub fn new(limit: u64, backlog: Duration, emission: Duration) -> Self {
        Self {
            limit,
            backlog: nanos(backlog),
            emission: nanos(emission).max(1),
        }
    }

    /// The decision for an unlimited resource.
    pub const UNLIMITED: RateDecision = RateDecision {
        limit: u64::MAX,
        backlog: 0,
        emission: 1,
    };

    /// The limit of the most constrained window (`u64::MAX` if unlimited).
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// What is left in that window.
    pub fn remaining(&self) -> u64 {
        if self.limit == u64::MAX {
            return u64::MAX;
        }
        self.limit
            .saturating_sub(self.backlog.div_ceil(self.emission.max(1)).min(self.limit))
    }

    /// Until that window is fully replenished.
    pub fn reset_after(&self) -> Duration {
        Duration::from_nanos(self.backlog)
    }
}

/// Stock held for a pending write: [`Reservation::commit`] keeps it,
/// dropping it gives it back.
#[must_use = "a reservation is released when dropped; call commit() to keep it"]
pub struct Reservation {
    state: Arc<ResourceState>,
    amount: u64,
    done: bool,
    quota_period: (Option<Arc<dyn Clock>>, Duration),
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
        let now = clock
            .as_ref()
            .map_or_else(|| SystemClock.now(), |c| c.now());
        self.state.record(nanos(now), *period, self.amount);
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

fn period_start(now: u64, period: Duration) -> u64 {
    let p = nanos(period).max(1);
    now / p * p
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
            clock: None,
            events: Arc::new(TracingEvents),
            thresholds: vec![80, 95],
            period: Duration::from_secs(86_400),
            tenants: DashMap::with_hasher(RandomState::default()),
            subjects: moka::sync::Cache::builder()
                .max_capacity(1_000_000)
                .time_to_idle(Duration::from_secs(86_400))
                .build(),
        }
    }

    /// Uses `clock` for rate windows and periods.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = Some(clock);
        self
    }

    fn now(&self) -> u64 {
        match &self.clock {
            Some(c) => nanos(c.now()),
            None => nanos(SystemClock.now()),
        }
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

    /// Runs `f` on the resource's state without cloning anything on the
    /// fast path (two uncontended read guards).
    fn with_state<R>(
        &self,
        tenant: TenantId,
        resource: &str,
        f: impl FnOnce(&Arc<ResourceState>) -> R,
    ) -> R {
        if let Some(t) = self.tenants.get(&tenant) {
            let resources = t.resources.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(r) = resources.get(resource) {
                return f(r);
            }
        }
        f(&self.state(tenant, resource))
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
            .or_insert_with(|| Arc::new(ResourceState::new(resource)))
            .clone()
    }

    fn thresholds(&self, tenant: TenantId, state: &ResourceState, now: u64, used: u64, limit: u64) {
        // Fast reject: below the lowest threshold (one multiplication).
        match self.thresholds.first() {
            Some(lowest)
                if limit > 0
                    && u128::from(used) * 100 >= u128::from(*lowest) * u128::from(limit) => {}
            _ => return,
        }
        let period = period_start(now, self.period);
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
        let fired = state.fired.load(Ordering::Acquire);
        if fired >> 8 == period_id && fired & due == due {
            return; // already announced this period
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
    /// [`QuotaExceeded`](super::QuotaExceeded) if that would pass the limit (including after a
    /// downgrade left usage above it).
    pub fn reserve(
        &self,
        ctx: &TenantContext,
        resource: &str,
        amount: u64,
    ) -> Result<Reservation, QuotaError> {
        let limit = match entitled_limit(ctx, resource, ResourceKind::Stock)? {
            Some(Limit::Stock(n)) => Some(n),
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
            return Err(QuotaError::exceeded(
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
            let now = self.now();
            self.thresholds(ctx.tenant_id(), &state, now, seen + amount, l);
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
        let limit = match entitled_limit(ctx, resource, ResourceKind::Concurrency)? {
            Some(Limit::Concurrency(n)) => Some(u64::from(n)),
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
            return Err(QuotaError::exceeded(
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

    fn build_windows(spec: &RateSpec) -> RateWindows {
        RateWindows {
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
        }
    }

    /// Runs `f` on the GCRA windows for `spec` (lock-free unless the
    /// tenant's limits for this resource changed since first use).
    fn with_windows<R>(
        state: &ResourceState,
        spec: &RateSpec,
        f: impl FnOnce(&RateWindows) -> R,
    ) -> R {
        let first = state.first_rate.get_or_init(|| Self::build_windows(spec));
        if first.spec == *spec {
            return f(first);
        }
        f(&Self::windows(state, spec))
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
        let built = Arc::new(Self::build_windows(spec));
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
        let Some(spec) = rate_spec(ctx, resource)? else {
            return Ok(RateDecision::UNLIMITED);
        };
        let now = self.now();
        self.with_state(ctx.tenant_id(), resource, |state| {
            Self::with_windows(state, &spec, |rw| {
                self.consume(ctx, resource, state, rw, now, cost, true)
            })
        })
    }

    /// [`Self::check_rate`] for one `subject` of the tenant (a user, a
    /// client address): the plan's windows for `resource`, counted for that
    /// subject alone. Not recorded as usage and fires no thresholds (the
    /// tenant's own check does).
    pub fn check_rate_for(
        &self,
        ctx: &TenantContext,
        resource: &str,
        subject: &str,
        cost: u64,
    ) -> Result<RateDecision, QuotaError> {
        let Some(spec) = rate_spec(ctx, resource)? else {
            return Ok(RateDecision::UNLIMITED);
        };
        let now = self.now();
        let key = (
            ctx.tenant_id(),
            Arc::<str>::from(resource),
            Arc::<str>::from(subject),
        );
        let state = self
            .subjects
            .get_with(key, || Arc::new(ResourceState::new(resource)));
        Self::with_windows(&state, &spec, |rw| {
            self.consume(ctx, resource, &state, rw, now, cost, false)
        })
    }

    #[allow(clippy::too_many_arguments)] // one caller each; a struct would only rename them
    fn consume(
        &self,
        ctx: &TenantContext,
        resource: &str,
        state: &ResourceState,
        rw: &RateWindows,
        now: u64,
        cost: u64,
        record: bool,
    ) -> Result<RateDecision, QuotaError> {
        // At most four windows (second, minute, hour, day): no allocation.
        let mut advanced = [(0usize, 0u64); 4];
        let mut n_advanced = 0;
        // The most constrained window so far: (window, backlog after this call).
        let mut tightest: Option<(&Window, u64)> = None;
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
                    if let Some(slot) = advanced.get_mut(n_advanced) {
                        *slot = (i, inc);
                        n_advanced += 1;
                    }
                    let backlog = old.max(now) + inc - now;
                    // Fewer emissions left = tighter: compare (period - backlog) / emission
                    // across windows by cross-multiplying (no division).
                    let tighter = tightest.is_none_or(|(t, tb)| {
                        u128::from(w.period - backlog) * u128::from(t.emission)
                            < u128::from(t.period - tb) * u128::from(w.emission)
                    });
                    if tighter {
                        tightest = Some((w, backlog));
                    }
                }
                Err(tat) => {
                    for (j, inc) in &advanced[..n_advanced] {
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
                    return Err(QuotaError::exceeded(
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
        if record {
            state.record(now, self.period, cost);
        }
        let Some((w, backlog)) = tightest else {
            return Ok(RateDecision::UNLIMITED);
        };
        // Thresholds: the division only once the lowest one may be reached.
        if record
            && let Some(lowest) = self.thresholds.first()
            && u128::from(backlog) * 100 >= u128::from(*lowest) * u128::from(w.period)
        {
            let used = backlog.div_ceil(w.emission).min(w.limit);
            self.thresholds(ctx.tenant_id(), state, now, used, w.limit);
        }
        Ok(RateDecision {
            limit: w.limit,
            backlog,
            emission: w.emission,
        })
    }

    /// Usage of every resource the tenant's plan meters.
    pub fn usage(&self, ctx: &TenantContext) -> Result<BTreeMap<ResourceKey, Usage>, QuotaError> {
        let e = ctx.entitlements().ok_or(QuotaError::NoEntitlements)?;
        let now = self.now();
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
                    let mut u = Usage {
                        kind: ResourceKind::Rate,
                        used: 0,
                        limit: None,
                    };
                    let mut worst = -1.0f64;
                    let windows: Vec<(u64, u64, u64)> = Self::with_windows(&state, spec, |rw| {
                        rw.windows
                            .iter()
                            .map(|w| (w.tat.load(Ordering::SeqCst), w.emission, w.limit))
                            .collect()
                    });
                    for (tat, emission, limit) in windows {
                        let w = Window {
                            limit,
                            period: 0,
                            emission,
                            tat: AtomicU64::new(tat),
                        };
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
                for (start, amount) in &r.records() {
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

/// The plan's rate windows for `resource`: `None` when it is not a rate
/// (unlimited here), a zero rate when the plan does not mention it.
fn rate_spec(ctx: &TenantContext, resource: &str) -> Result<Option<RateSpec>, QuotaError> {
    Ok(match entitled_limit(ctx, resource, ResourceKind::Rate)? {
        Some(Limit::Rate(spec)) => Some(spec),
        Some(_) => None,
        None => Some(RateSpec {
            per_second: Some(0),
            ..RateSpec::default()
        }),
    })
}
