//! Quotas kept in PostgreSQL, shared by every instance of the application.
//!
//! **Stock** counters live in `tenancy.quota_usage` and change *in the same
//! transaction as the business write* ([`TenantTx::consume_stock`]): the
//! conditional upsert takes the counter's row lock until the transaction
//! ends, so concurrent writers across processes serialise on it, the limit
//! is never exceeded, and a rolled-back write rolls its quota back with it.
//! The count and the data cannot disagree.
//!
//! **Rate** windows live in `tenancy.quota_rate` (GCRA, one row per window)
//! and are checked in their own short transaction by [`PgRateLimiter`]; all
//! windows pass or none is charged.
//!
//! Consumption is added to `tenancy.quota_records` per period for billing.
//! All three tables are tenant rows under row-level security.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tenancy_core::TenantContext;
use tenancy_core::plan::{Limit, ResourceKey, ResourceKind};
use tenancy_core::quota::{
    Clock, QuotaError, RateDecision, SystemClock, ThresholdCrossed, Usage, entitled_limit,
    rate_windows, reached_thresholds,
};

use crate::{DbError, TenantDb, TenantTx};

fn backend(e: impl Into<DbError>) -> QuotaError {
    QuotaError::Backend(tenancy_core::StoreError::new(e.into()))
}

fn i64_of(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn u64_of(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// The start of the daily period containing `now`.
fn day_start(now: DateTime<Utc>) -> DateTime<Utc> {
    let secs = now.timestamp().div_euclid(86_400) * 86_400;
    DateTime::from_timestamp(secs, 0).unwrap_or(now)
}

impl TenantTx {
    /// Claims every threshold `used` of `limit` has reached for today; the
    /// ones this transaction is first to claim are announced after commit.
    async fn note_thresholds(
        &mut self,
        resource: &str,
        used: u64,
        limit: u64,
        now: DateTime<Utc>,
    ) -> Result<(), QuotaError> {
        let due: Vec<i16> = reached_thresholds(&self.quota.thresholds, used, limit)
            .into_iter()
            .map(i16::from)
            .collect();
        if due.is_empty() {
            return Ok(());
        }
        let period = day_start(now);
        let tenant = self.tenant_id();
        let fresh: Vec<i16> = sqlx::query_scalar(
            "INSERT INTO tenancy.quota_thresholds (tenant_id, resource, period_start, percent) \
             SELECT $1, $2, $3, unnest($4::smallint[]) ON CONFLICT DO NOTHING RETURNING percent",
        )
        .bind(tenant.as_uuid())
        .bind(resource)
        .bind(period)
        .bind(&due)
        .fetch_all(&mut **self)
        .await
        .map_err(backend)?;
        for p in fresh {
            self.pending.push(ThresholdCrossed::new(
                tenant,
                resource,
                u8::try_from(p).unwrap_or(100),
                used,
                limit,
                period,
            ));
        }
        Ok(())
    }

    /// Consumes `amount` of a stock resource in this transaction.
    ///
    /// Refused with [`QuotaExceeded`](tenancy_core::quota::QuotaExceeded) (nothing consumed) when it would pass
    /// the limit in the context's entitlements — including when a downgrade
    /// left usage above the limit. Returns usage after the consumption.
    /// Commit the transaction to keep it; rolling back gives it back.
    ///
    /// ```no_run
    /// # async fn example(db: tenancy_sqlx::TenantDb, ctx: tenancy_core::TenantContext) -> Result<(), Box<dyn std::error::Error>> {
    /// let mut tx = db.begin(&ctx).await?;
    /// tx.consume_stock("policies", 1).await?; // refused past the plan's limit
    /// sqlx::query("INSERT INTO policies (tenant_id, id) VALUES ($1, gen_random_uuid())")
    ///     .bind(ctx.tenant_id().as_uuid())
    ///     .execute(&mut *tx)
    ///     .await?;
    /// tx.commit().await?; // the policy and its quota, together
    /// # Ok(()) }
    /// ```
    pub async fn consume_stock(&mut self, resource: &str, amount: u64) -> Result<u64, QuotaError> {
        let ctx = self.context().clone();
        let limit = match entitled_limit(&ctx, resource, ResourceKind::Stock)? {
            Some(Limit::Stock(n)) => Some(n),
            Some(_) => None,
            None => Some(0),
        };
        if let Some(l) = limit
            && amount > l
        {
            let used = self.stock_used(resource).await?;
            return Err(QuotaError::exceeded(
                &ctx,
                resource,
                ResourceKind::Stock,
                used,
                l,
                amount,
                None,
            ));
        }
        let period = day_start(Utc::now());
        let used: Option<i64> = sqlx::query_scalar(
            r#"
            WITH u AS (
                INSERT INTO tenancy.quota_usage AS q (tenant_id, resource, used)
                VALUES ($1, $2, $3)
                ON CONFLICT (tenant_id, resource) DO UPDATE SET used = q.used + EXCLUDED.used
                WHERE $4::bigint IS NULL OR q.used + EXCLUDED.used <= $4::bigint
                RETURNING q.used
            ), r AS (
                INSERT INTO tenancy.quota_records AS rec (tenant_id, resource, period_start, amount)
                SELECT $1, $2, $5, $3 FROM u
                ON CONFLICT (tenant_id, resource, period_start)
                DO UPDATE SET amount = rec.amount + EXCLUDED.amount
            )
            SELECT used FROM u
            "#,
        )
        .bind(ctx.tenant_id().as_uuid())
        .bind(resource)
        .bind(i64_of(amount))
        .bind(limit.map(i64_of))
        .bind(period)
        .fetch_optional(&mut **self)
        .await
        .map_err(backend)?;
        match used {
            Some(used) => {
                let used = u64_of(used);
                if let Some(l) = limit {
                    self.note_thresholds(resource, used, l, Utc::now()).await?;
                }
                Ok(used)
            }
            None => {
                let used = self.stock_used(resource).await?;
                Err(QuotaError::exceeded(
                    &ctx,
                    resource,
                    ResourceKind::Stock,
                    used,
                    limit.unwrap_or(u64::MAX),
                    amount,
                    None,
                ))
            }
        }
    }

    /// Gives back `amount` of a stock resource (things were deleted), in
    /// this transaction.
    pub async fn release_stock(&mut self, resource: &str, amount: u64) -> Result<(), QuotaError> {
        let tenant = self.tenant_id();
        sqlx::query(
            "UPDATE tenancy.quota_usage SET used = GREATEST(used - $3, 0) \
             WHERE tenant_id = $1 AND resource = $2",
        )
        .bind(tenant.as_uuid())
        .bind(resource)
        .bind(i64_of(amount))
        .execute(&mut **self)
        .await
        .map_err(backend)?;
        Ok(())
    }

    /// Current usage of a stock resource.
    pub async fn stock_used(&mut self, resource: &str) -> Result<u64, QuotaError> {
        let tenant = self.tenant_id();
        let used: Option<i64> = sqlx::query_scalar(
            "SELECT used FROM tenancy.quota_usage WHERE tenant_id = $1 AND resource = $2",
        )
        .bind(tenant.as_uuid())
        .bind(resource)
        .fetch_optional(&mut **self)
        .await
        .map_err(backend)?;
        Ok(used.map(u64_of).unwrap_or(0))
    }

    /// Sets the usage of a stock resource (to align it with existing data).
    pub async fn set_stock_used(&mut self, resource: &str, used: u64) -> Result<(), QuotaError> {
        let tenant = self.tenant_id();
        sqlx::query(
            "INSERT INTO tenancy.quota_usage (tenant_id, resource, used) VALUES ($1, $2, $3) \
             ON CONFLICT (tenant_id, resource) DO UPDATE SET used = EXCLUDED.used",
        )
        .bind(tenant.as_uuid())
        .bind(resource)
        .bind(i64_of(used))
        .execute(&mut **self)
        .await
        .map_err(backend)?;
        Ok(())
    }

    /// Usage of every stock and rate resource the tenant's plan meters (for a
    /// usage endpoint). Concurrency is in-process state: take it from
    /// `MemoryQuota::usage`.
    pub async fn usage(&mut self) -> Result<BTreeMap<ResourceKey, Usage>, QuotaError> {
        let ctx = self.context().clone();
        let e = ctx
            .entitlements()
            .ok_or(QuotaError::NoEntitlements)?
            .clone();
        let tenant = ctx.tenant_id().as_uuid();
        let stock: BTreeMap<String, i64> = sqlx::query_as::<_, (String, i64)>(
            "SELECT resource, used FROM tenancy.quota_usage WHERE tenant_id = $1",
        )
        .bind(tenant)
        .fetch_all(&mut **self)
        .await
        .map_err(backend)?
        .into_iter()
        .collect();
        let rate: Vec<(String, i64, i64)> = sqlx::query_as(
            "SELECT resource, period_ms, tat_us FROM tenancy.quota_rate WHERE tenant_id = $1",
        )
        .bind(tenant)
        .fetch_all(&mut **self)
        .await
        .map_err(backend)?;
        let now_us = i64::try_from(SystemClock.now().as_micros()).unwrap_or(i64::MAX);
        let mut out = BTreeMap::new();
        for (resource, limit) in &e.limits {
            let usage = match limit {
                Limit::Stock(n) => Usage {
                    kind: ResourceKind::Stock,
                    used: stock.get(&**resource).copied().map(u64_of).unwrap_or(0),
                    limit: Some(*n),
                },
                Limit::Rate(spec) => {
                    let mut u = Usage {
                        kind: ResourceKind::Rate,
                        used: 0,
                        limit: None,
                    };
                    let mut worst = -1.0f64;
                    for (limit, period) in spec.windows() {
                        let period_ms = i64::try_from(period.as_millis()).unwrap_or(i64::MAX);
                        let tat = rate
                            .iter()
                            .find(|(r, p, _)| r.as_str() == &**resource && *p == period_ms)
                            .map_or(0, |(_, _, t)| *t);
                        let emission = (period_ms * 1000 / i64_of(limit.max(1))).max(1);
                        let backlog = (tat - now_us).max(0);
                        let used = u64_of((backlog + emission - 1) / emission).min(limit);
                        let ratio = used as f64 / limit.max(1) as f64;
                        if ratio > worst {
                            worst = ratio;
                            u.used = used;
                            u.limit = Some(limit);
                        }
                    }
                    u
                }
                Limit::Concurrency(n) => Usage {
                    kind: ResourceKind::Concurrency,
                    used: 0,
                    limit: Some(u64::from(*n)),
                },
                _ => Usage {
                    kind: ResourceKind::Stock,
                    used: stock.get(&**resource).copied().map(u64_of).unwrap_or(0),
                    limit: None,
                },
            };
            out.insert(resource.clone(), usage);
        }
        Ok(out)
    }

    /// Consumption per resource and daily period since `since`, for billing.
    pub async fn usage_records(
        &mut self,
        since: DateTime<Utc>,
    ) -> Result<BTreeMap<(String, DateTime<Utc>), u64>, QuotaError> {
        let tenant = self.tenant_id();
        let rows: Vec<(String, DateTime<Utc>, i64)> = sqlx::query_as(
            "SELECT resource, period_start, amount FROM tenancy.quota_records \
             WHERE tenant_id = $1 AND period_start >= $2 ORDER BY resource, period_start",
        )
        .bind(tenant.as_uuid())
        .bind(since)
        .fetch_all(&mut **self)
        .await
        .map_err(backend)?;
        Ok(rows
            .into_iter()
            .map(|(r, p, a)| ((r, p), u64_of(a)))
            .collect())
    }
}

/// Rate limits shared by every instance, in `tenancy.quota_rate`.
///
/// Each check is one short tenant transaction: every window of the
/// resource is advanced with a conditional upsert (GCRA); if any window
/// refuses, the transaction rolls back and no window is charged. Time comes
/// from the injected [`Clock`] (instances should run NTP).
#[derive(Debug, Clone)]
pub struct PgRateLimiter {
    db: TenantDb,
    clock: Arc<dyn Clock>,
}

impl PgRateLimiter {
    /// A limiter using `db` and the system clock.
    pub fn new(db: TenantDb) -> Self {
        Self {
            db,
            clock: Arc::new(SystemClock),
        }
    }

    /// Uses `clock` instead of the system clock.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Consumes `cost` from every window of `resource` for the context's tenant.
    pub async fn check(
        &self,
        ctx: &TenantContext,
        resource: &str,
        cost: u64,
    ) -> Result<RateDecision, QuotaError> {
        self.check_counted(ctx, resource, None, cost).await
    }

    /// [`Self::check`] for one `subject` of the tenant (a user, a client
    /// address): the plan's windows for `resource`, counted in rows of
    /// their own (`<resource>@<subject>`); not recorded as usage, no
    /// thresholds.
    pub async fn check_for(
        &self,
        ctx: &TenantContext,
        resource: &str,
        subject: &str,
        cost: u64,
    ) -> Result<RateDecision, QuotaError> {
        self.check_counted(ctx, resource, Some(subject), cost).await
    }

    async fn check_counted(
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
        let now_us = i64::try_from(self.clock.now().as_micros()).unwrap_or(i64::MAX);
        let mut tx = self.db.begin(ctx).await.map_err(backend)?;
        let mut tightest: Option<(u64, i64, i64, i64)> = None; // (limit, backlog, emission, period) in µs
        for (limit, period) in &windows {
            let period_us = i64::try_from(period.as_micros()).unwrap_or(i64::MAX);
            let emission_us = if *limit == 0 {
                i64::MAX / 4
            } else {
                (period_us / i64_of(*limit)).max(1)
            };
            let inc = emission_us.saturating_mul(i64_of(cost));
            let tat: Option<i64> = sqlx::query_scalar(
                r#"
                INSERT INTO tenancy.quota_rate AS r (tenant_id, resource, period_ms, tat_us)
                SELECT $1, $2, $3, $4 + $5 WHERE $5 <= $6
                ON CONFLICT (tenant_id, resource, period_ms)
                DO UPDATE SET tat_us = GREATEST(r.tat_us, $4) + $5
                WHERE GREATEST(r.tat_us, $4) + $5 - $4 <= $6
                RETURNING tat_us
                "#,
            )
            .bind(ctx.tenant_id().as_uuid())
            .bind(&counter)
            .bind(i64::try_from(period.as_millis()).unwrap_or(i64::MAX))
            .bind(now_us)
            .bind(inc)
            .bind(period_us)
            .fetch_optional(&mut *tx)
            .await
            .map_err(backend)?;
            match tat {
                Some(tat) => {
                    let backlog = tat - now_us;
                    let left = (period_us - backlog) / emission_us;
                    if tightest.is_none_or(|(_, b, e, p)| left < (p - b) / e) {
                        tightest = Some((*limit, backlog, emission_us, period_us));
                    }
                }
                None => {
                    let current: Option<i64> = sqlx::query_scalar(
                        "SELECT tat_us FROM tenancy.quota_rate \
                         WHERE tenant_id = $1 AND resource = $2 AND period_ms = $3",
                    )
                    .bind(ctx.tenant_id().as_uuid())
                    .bind(&counter)
                    .bind(i64::try_from(period.as_millis()).unwrap_or(i64::MAX))
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(backend)?;
                    tx.rollback().await.map_err(backend)?;
                    let backlog = current.map_or(0, |t| (t - now_us).max(0));
                    let used = u64_of((backlog + emission_us - 1) / emission_us).min(*limit);
                    let wait = backlog + inc - period_us;
                    let retry =
                        (cost <= *limit && wait > 0).then(|| Duration::from_micros(u64_of(wait)));
                    return Err(QuotaError::exceeded(
                        ctx,
                        resource,
                        ResourceKind::Rate,
                        used,
                        *limit,
                        cost,
                        retry,
                    ));
                }
            }
        }
        if subject.is_some() {
            tx.commit().await.map_err(backend)?;
            return Ok(decision(tightest));
        }
        sqlx::query(
            "INSERT INTO tenancy.quota_records AS rec (tenant_id, resource, period_start, amount) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (tenant_id, resource, period_start) \
             DO UPDATE SET amount = rec.amount + EXCLUDED.amount",
        )
        .bind(ctx.tenant_id().as_uuid())
        .bind(resource)
        .bind(day_start(
            DateTime::from_timestamp_micros(now_us).unwrap_or_else(Utc::now),
        ))
        .bind(i64_of(cost))
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        if let Some((limit, backlog, emission, _)) = tightest {
            let used = u64_of((backlog + emission - 1) / emission).min(limit);
            let now = DateTime::from_timestamp_micros(now_us).unwrap_or_else(Utc::now);
            tx.note_thresholds(resource, used, limit, now).await?;
        }
        tx.commit().await.map_err(backend)?;
        Ok(decision(tightest))
    }
}

/// The decision of the tightest window `(limit, backlog, emission, period)`.
fn decision(tightest: Option<(u64, i64, i64, i64)>) -> RateDecision {
    match tightest {
        Some((limit, backlog, emission, _)) => RateDecision::new(
            limit,
            Duration::from_micros(u64_of(backlog)),
            Duration::from_micros(u64_of(emission)),
        ),
        None => RateDecision::new(u64::MAX, Duration::ZERO, Duration::from_nanos(1)),
    }
}

#[async_trait::async_trait]
impl tenancy_core::pipeline::RateCheck for PgRateLimiter {
    async fn check_rate(
        &self,
        ctx: &TenantContext,
        resource: &str,
        cost: u64,
    ) -> Result<RateDecision, QuotaError> {
        self.check(ctx, resource, cost).await
    }

    async fn check_rate_for(
        &self,
        ctx: &TenantContext,
        resource: &str,
        subject: &str,
        cost: u64,
    ) -> Result<RateDecision, QuotaError> {
        self.check_for(ctx, resource, subject, cost).await
    }
}
