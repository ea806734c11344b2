//! tenancy-rs quotas on Redis: rate limits and stock counters shared by
//! every instance of an application.
//!
//! Every decision is one Lua script run atomically by Redis, so concurrent
//! instances never overshoot:
//!
//! - **rate** ([`RedisQuota::check_rate`]): GCRA, one key per window holding
//!   its theoretical arrival time; all windows are checked before any is
//!   written, so a refusal charges nothing; keys expire once drained;
//! - **stock** ([`RedisQuota::reserve`]): a counter per resource, increased
//!   only if the result stays within the limit; an uncommitted
//!   [`RedisReservation`] is given back when dropped.
//!
//! [`RedisAttempts`] keeps sign-in attempt counters
//! (`tenancy_core::signin`) for every instance to share.
//!
//! Limits come from the tenant's entitlements in its
//! `TenantContext`, exactly as for the
//! in-memory and PostgreSQL backends. Keys are
//! `tenancy:{<tenant id>}:...`: the braces keep one tenant's keys in one
//! Redis Cluster slot.
//!
//! ```no_run
//! # async fn example(ctx: tenancy_core::TenantContext) -> Result<(), Box<dyn std::error::Error>> {
//! let quota = tenancy_redis::RedisQuota::connect("redis://127.0.0.1:6379").await?;
//! let decision = quota.check_rate(&ctx, "api_calls", 1).await?; // 429 when refused
//! println!("{} calls left", decision.remaining());
//! quota.reserve(&ctx, "agents", 1).await?.commit();
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

mod signin;

pub use signin::RedisAttempts;

use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script};
use tenancy_core::plan::{Limit, ResourceKind};
use tenancy_core::quota::{
    Clock, QuotaError, QuotaEvents, RateDecision, SystemClock, ThresholdCrossed, TracingEvents,
    entitled_limit, rate_windows, reached_thresholds,
};
use tenancy_core::{StoreError, TenantContext, TenantId};

const RATE_SCRIPT: &str = r"
local now = tonumber(ARGV[1])
local cost = tonumber(ARGV[2])
local new = {}
for i = 1, #KEYS do
  local e = tonumber(ARGV[1 + 2 * i])
  local p = tonumber(ARGV[2 + 2 * i])
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
  if tat < now then tat = now end
  local nt = tat + e * cost
  if nt - now > p then
    return {0, i, tat - now}
  end
  new[i] = nt
end
local out = {1}
for i = 1, #KEYS do
  redis.call('SET', KEYS[i], string.format('%d', new[i]), 'PX', math.floor((new[i] - now) / 1000) + 1)
  out[#out + 1] = new[i] - now
end
return out
";

const RESERVE_SCRIPT: &str = r"
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
local n = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
if limit >= 0 and used + n > limit then
  return {0, used}
end
return {1, redis.call('INCRBY', KEYS[1], n)}
";

const RELEASE_SCRIPT: &str = r"
local v = redis.call('DECRBY', KEYS[1], tonumber(ARGV[1]))
if v < 0 then redis.call('SET', KEYS[1], 0) end
return 0
";

/// Quotas kept in Redis.
#[derive(Clone)]
pub struct RedisQuota {
    conn: ConnectionManager,
    clock: Arc<dyn Clock>,
    rate: Arc<Script>,
    reserve: Arc<Script>,
    release: Arc<Script>,
    thresholds: Arc<[u8]>,
    events: Arc<dyn QuotaEvents>,
}

impl std::fmt::Debug for RedisQuota {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisQuota").finish_non_exhaustive()
    }
}

/// Why the Redis backend could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RedisQuotaError {
    /// Connecting to Redis failed.
    #[error("cannot connect to Redis: {0}")]
    Connect(#[from] redis::RedisError),
}

fn backend(e: redis::RedisError) -> QuotaError {
    QuotaError::Backend(StoreError::new(e))
}

fn key(tenant: TenantId, kind: &str, resource: &str) -> String {
    format!("tenancy:{{{tenant}}}:{kind}:{resource}")
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

impl RedisQuota {
    /// Connects (with automatic reconnection) to `url`.
    pub async fn connect(url: &str) -> Result<Self, RedisQuotaError> {
        let client = redis::Client::open(url)?;
        Ok(Self::new(ConnectionManager::new(client).await?))
    }

    /// Uses an existing connection manager.
    pub fn new(conn: ConnectionManager) -> Self {
        Self {
            conn,
            clock: Arc::new(SystemClock),
            rate: Arc::new(Script::new(RATE_SCRIPT)),
            reserve: Arc::new(Script::new(RESERVE_SCRIPT)),
            release: Arc::new(Script::new(RELEASE_SCRIPT)),
            thresholds: Arc::from(vec![80u8, 95]),
            events: Arc::new(TracingEvents),
        }
    }

    /// Sends threshold events to `events` at these percentages (default:
    /// tracing at 80 % and 95 %). Each fires once per resource and day across
    /// all instances (a `SET NX` claim decides).
    pub fn with_events(mut self, events: Arc<dyn QuotaEvents>, thresholds: &[u8]) -> Self {
        let mut t: Vec<u8> = thresholds.iter().map(|p| (*p).clamp(1, 100)).collect();
        t.sort_unstable();
        t.dedup();
        self.thresholds = t.into();
        self.events = events;
        self
    }

    async fn note_thresholds(
        &self,
        ctx: &TenantContext,
        resource: &str,
        used: u64,
        limit: u64,
    ) -> Result<(), QuotaError> {
        let due = reached_thresholds(&self.thresholds, used, limit);
        if due.is_empty() {
            return Ok(());
        }
        let now = self.clock.now();
        let day = now.as_secs() / 86_400 * 86_400;
        let period_start = tenancy_core::quota::period_start_from_secs(day);
        let mut conn = self.conn.clone();
        for p in due {
            let claim = key(ctx.tenant_id(), "thr", &format!("{resource}:{day}:{p}"));
            let fresh: Option<String> = redis::cmd("SET")
                .arg(&claim)
                .arg(1)
                .arg("NX")
                .arg("EX")
                .arg(2 * 86_400)
                .query_async(&mut conn)
                .await
                .map_err(backend)?;
            if fresh.is_some() {
                self.events.threshold_crossed(&ThresholdCrossed::new(
                    ctx.tenant_id(),
                    resource,
                    p,
                    used,
                    limit,
                    period_start,
                ));
            }
        }
        Ok(())
    }

    /// Uses `clock` for rate windows (instances should run NTP).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Consumes `cost` from every window of a rate resource, all or nothing.
    pub async fn check_rate(
        &self,
        ctx: &TenantContext,
        resource: &str,
        cost: u64,
    ) -> Result<RateDecision, QuotaError> {
        self.check(ctx, resource, None, cost).await
    }

    /// [`Self::check_rate`] for one `subject` of the tenant (a user, a
    /// client address): the plan's windows, counted per subject (keys
    /// `tenancy:{<tenant>}:rate:<resource>@<subject>:<period>`, expiring once
    /// drained); no thresholds.
    pub async fn check_rate_for(
        &self,
        ctx: &TenantContext,
        resource: &str,
        subject: &str,
        cost: u64,
    ) -> Result<RateDecision, QuotaError> {
        self.check(ctx, resource, Some(subject), cost).await
    }

    async fn check(
        &self,
        ctx: &TenantContext,
        resource: &str,
        subject: Option<&str>,
        cost: u64,
    ) -> Result<RateDecision, QuotaError> {
        let counter = match subject {
            Some(s) => format!("{resource}@{s}"),
            None => resource.to_owned(),
        };
        let Some(windows) = rate_windows(ctx, resource)? else {
            return Ok(RateDecision::UNLIMITED);
        };
        let now = micros(self.clock.now());
        let mut invocation = self.rate.prepare_invoke();
        invocation.arg(now).arg(cost);
        let mut params = Vec::with_capacity(windows.len());
        for (limit, period) in &windows {
            let period_us = micros(*period);
            let emission = if *limit == 0 {
                i64::MAX / 4
            } else {
                (period_us / i64::try_from(*limit).unwrap_or(i64::MAX)).max(1)
            };
            invocation
                .key(key(
                    ctx.tenant_id(),
                    "rate",
                    &format!("{counter}:{}", period.as_millis()),
                ))
                .arg(emission)
                .arg(period_us);
            params.push((*limit, period_us, emission));
        }
        let mut conn = self.conn.clone();
        let reply: Vec<i64> = invocation.invoke_async(&mut conn).await.map_err(backend)?;
        match reply.as_slice() {
            [1, backlogs @ ..] => {
                let mut best: Option<(u64, i64, i64, i64)> = None;
                for ((limit, period, emission), backlog) in params.iter().zip(backlogs) {
                    let left = (period - backlog) / emission;
                    if best.is_none_or(|(_, b, e, p)| left < (p - b) / e) {
                        best = Some((*limit, *backlog, *emission, *period));
                    }
                }
                if let Some((limit, backlog, emission, _)) = best.filter(|_| subject.is_none()) {
                    let used = u64::try_from((backlog + emission - 1) / emission)
                        .unwrap_or(0)
                        .min(limit);
                    self.note_thresholds(ctx, resource, used, limit).await?;
                }
                Ok(match best {
                    Some((limit, backlog, emission, _)) => RateDecision::new(
                        limit,
                        Duration::from_micros(u64::try_from(backlog).unwrap_or(0)),
                        Duration::from_micros(u64::try_from(emission).unwrap_or(1)),
                    ),
                    None => RateDecision::new(u64::MAX, Duration::ZERO, Duration::from_nanos(1)),
                })
            }
            [0, index, backlog] => {
                let i = usize::try_from(*index - 1).unwrap_or(0);
                let (limit, period, emission) = params.get(i).copied().unwrap_or((0, 1, 1));
                let used = u64::try_from((backlog + emission - 1) / emission)
                    .unwrap_or(0)
                    .min(limit);
                let inc = emission.saturating_mul(i64::try_from(cost).unwrap_or(i64::MAX));
                let wait = backlog + inc - period;
                let retry = (cost <= limit && wait > 0)
                    .then(|| Duration::from_micros(u64::try_from(wait).unwrap_or(0)));
                Err(QuotaError::exceeded(
                    ctx,
                    resource,
                    ResourceKind::Rate,
                    used,
                    limit,
                    cost,
                    retry,
                ))
            }
            other => Err(QuotaError::Backend(StoreError::msg(format!(
                "unexpected reply from the rate script: {other:?}"
            )))),
        }
    }

    /// Reserves `amount` of a stock resource; see [`RedisReservation`].
    pub async fn reserve(
        &self,
        ctx: &TenantContext,
        resource: &str,
        amount: u64,
    ) -> Result<RedisReservation, QuotaError> {
        let limit = match entitled_limit(ctx, resource, ResourceKind::Stock)? {
            Some(Limit::Stock(n)) => i64::try_from(n).unwrap_or(i64::MAX),
            Some(_) => -1,
            None => 0,
        };
        let k = key(ctx.tenant_id(), "stock", resource);
        let mut conn = self.conn.clone();
        let reply: Vec<i64> = self
            .reserve
            .key(&k)
            .arg(amount)
            .arg(limit)
            .invoke_async(&mut conn)
            .await
            .map_err(backend)?;
        match reply.as_slice() {
            [1, used] => {
                // The stock is taken from here on: hold it in a reservation
                // first, so that a failure below gives it back instead of
                // leaking it.
                let reservation = RedisReservation {
                    quota: self.clone(),
                    key: k,
                    amount,
                    done: false,
                };
                if limit >= 0
                    && let Err(e) = self
                        .note_thresholds(
                            ctx,
                            resource,
                            u64::try_from(*used).unwrap_or(0),
                            u64::try_from(limit).unwrap_or(u64::MAX),
                        )
                        .await
                {
                    reservation.release().await?;
                    return Err(e);
                }
                Ok(reservation)
            }
            [0, used] => Err(QuotaError::exceeded(
                ctx,
                resource,
                ResourceKind::Stock,
                u64::try_from(*used).unwrap_or(0),
                u64::try_from(limit).unwrap_or(u64::MAX),
                amount,
                None,
            )),
            other => Err(QuotaError::Backend(StoreError::msg(format!(
                "unexpected reply from the reserve script: {other:?}"
            )))),
        }
    }

    async fn release_key(&self, key: &str, amount: u64) -> Result<(), QuotaError> {
        let mut conn = self.conn.clone();
        let _: i64 = self
            .release
            .key(key)
            .arg(amount)
            .invoke_async(&mut conn)
            .await
            .map_err(backend)?;
        Ok(())
    }

    /// Gives back `amount` of committed stock (things were deleted).
    pub async fn release(
        &self,
        ctx: &TenantContext,
        resource: &str,
        amount: u64,
    ) -> Result<(), QuotaError> {
        self.release_key(&key(ctx.tenant_id(), "stock", resource), amount)
            .await
    }

    /// Current usage of a stock resource.
    pub async fn stock_used(&self, ctx: &TenantContext, resource: &str) -> Result<u64, QuotaError> {
        let mut conn = self.conn.clone();
        let used: Option<u64> = conn
            .get(key(ctx.tenant_id(), "stock", resource))
            .await
            .map_err(backend)?;
        Ok(used.unwrap_or(0))
    }
}

/// Stock held in Redis for a pending write. [`RedisReservation::commit`]
/// keeps it; dropping it gives it back (asynchronously, on the current
/// tokio runtime).
#[must_use = "a reservation is released when dropped; call commit() to keep it"]
pub struct RedisReservation {
    quota: RedisQuota,
    key: String,
    amount: u64,
    done: bool,
}

impl std::fmt::Debug for RedisReservation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisReservation")
            .field("key", &self.key)
            .field("amount", &self.amount)
            .finish()
    }
}

impl RedisReservation {
    /// Keeps the reserved stock.
    pub fn commit(mut self) {
        self.done = true;
    }

    /// Gives the stock back now, waiting for Redis.
    pub async fn release(mut self) -> Result<(), QuotaError> {
        self.done = true;
        self.quota.release_key(&self.key, self.amount).await
    }
}

impl Drop for RedisReservation {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let (quota, key, amount) = (self.quota.clone(), self.key.clone(), self.amount);
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    if let Err(e) = quota.release_key(&key, amount).await {
                        tracing::error!(error = %e, key = %key, "could not return an uncommitted reservation");
                    }
                });
            }
            Err(_) => tracing::error!(
                key = %key,
                "uncommitted reservation dropped outside a tokio runtime; call release() instead"
            ),
        }
    }
}

#[async_trait::async_trait]
impl tenancy_core::pipeline::RateCheck for RedisQuota {
    async fn check_rate(
        &self,
        ctx: &TenantContext,
        resource: &str,
        cost: u64,
    ) -> Result<RateDecision, QuotaError> {
        RedisQuota::check_rate(self, ctx, resource, cost).await
    }

    async fn check_rate_for(
        &self,
        ctx: &TenantContext,
        resource: &str,
        subject: &str,
        cost: u64,
    ) -> Result<RateDecision, QuotaError> {
        RedisQuota::check_rate_for(self, ctx, resource, subject, cost).await
    }
}
