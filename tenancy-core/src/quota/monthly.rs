//! Usage per calendar month, in the tenant's own time zone (feature
//! `calendar`): [`MonthlyQuota::record`] adds consumption to the month's
//! counter atomically — refused past `limit + overage`, accepted and flagged
//! as overage between — and announces the 80 / 95 / 100 % thresholds exactly
//! once per month each.
//!
//! The month is the tenant's: a tenant in `Asia/Kolkata` (setting
//! `time_zone`) starts December at 2026-11-30T18:30Z; one without the setting
//! counts in UTC.
//!
//! ```
//! use std::sync::Arc;
//! use tenancy_core::plan::PlanCatalog;
//! use tenancy_core::quota::monthly::{MemoryMonthly, MonthlyQuota};
//! use tenancy_core::{Tenant, TenantContext, TenantId};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let catalog = PlanCatalog::from_json(r#"{"plans": [{"id": "p", "name": "P",
//!     "limits": {"sms": {"monthly": {"limit": 100, "overage": 20}}}}]}"#)?;
//! let mut tenant = Tenant::new(TenantId::new_v4(), "acme".parse()?, "Acme").with_plan("p".into());
//! tenant.settings = serde_json::json!({"time_zone": "Asia/Kolkata"});
//! let ctx = TenantContext::new(tenant.clone())
//!     .with_entitlements(Arc::new(catalog.entitlements(&"p".into(), &Default::default())?));
//!
//! let quota = MonthlyQuota::new(Arc::new(MemoryMonthly::default()));
//! let d = quota.record(&ctx, "sms", 110).await?;
//! assert_eq!((d.used, d.limit, d.overage), (110, 100, 10));
//! assert!(quota.record(&ctx, "sms", 11).await.is_err()); // 121 > 100 + 20
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use chrono::{DateTime, Datelike, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;

use super::{QuotaError, QuotaEvents, ThresholdCrossed, TracingEvents};
use crate::plan::{Limit, ResourceKind};
use crate::{StoreError, Tenant, TenantContext, TenantId};

/// The tenant setting naming its IANA time zone.
pub const TIME_ZONE_SETTING: &str = "time_zone";

/// The thresholds announced by default, in percent of the included limit.
pub const DEFAULT_THRESHOLDS: [u8; 3] = [80, 95, 100];

/// The tenant's time zone: setting `time_zone` (an IANA name), UTC when
/// absent. A name that is not a time zone is an error, never UTC.
///
/// ```
/// use tenancy_core::quota::monthly::time_zone_of;
/// use tenancy_core::{Tenant, TenantId};
///
/// let mut t = Tenant::new(TenantId::new_v4(), "acme".parse()?, "Acme");
/// assert_eq!(time_zone_of(&t)?, chrono_tz::UTC);
/// t.settings = serde_json::json!({"time_zone": "Europe/Berlin"});
/// assert_eq!(time_zone_of(&t)?, chrono_tz::Europe::Berlin);
/// t.settings = serde_json::json!({"time_zone": "Mars/Olympus"});
/// assert!(time_zone_of(&t).is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn time_zone_of(tenant: &Tenant) -> Result<Tz, StoreError> {
    match tenant.settings.get(TIME_ZONE_SETTING) {
        None | Some(serde_json::Value::Null) => Ok(chrono_tz::UTC),
        Some(serde_json::Value::String(name)) => name.parse().map_err(|_| {
            StoreError::msg(format!(
                "tenant time_zone {name:?} is not an IANA time zone"
            ))
        }),
        Some(other) => Err(StoreError::msg(format!(
            "tenant time_zone {other} is not a time zone name"
        ))),
    }
}

/// One calendar month of a time zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CalendarMonth {
    /// `YYYY-MM`.
    pub key: String,
    /// Its first instant.
    pub start: DateTime<Utc>,
    /// The first instant of the next month.
    pub end: DateTime<Utc>,
}

impl CalendarMonth {
    /// The month of `tz` that contains `now`.
    ///
    /// ```
    /// use chrono::{TimeZone, Utc};
    /// use tenancy_core::quota::monthly::CalendarMonth;
    ///
    /// let kolkata = chrono_tz::Asia::Kolkata;
    /// let before = Utc.with_ymd_and_hms(2026, 11, 30, 18, 29, 59).unwrap();
    /// let after = Utc.with_ymd_and_hms(2026, 11, 30, 18, 30, 0).unwrap();
    /// assert_eq!(CalendarMonth::containing(before, kolkata).key, "2026-11");
    /// assert_eq!(CalendarMonth::containing(after, kolkata).key, "2026-12");
    /// assert_eq!(CalendarMonth::containing(after, kolkata).start, after);
    /// ```
    pub fn containing(now: DateTime<Utc>, tz: Tz) -> Self {
        let local = now.with_timezone(&tz).date_naive();
        let first = NaiveDate::from_ymd_opt(local.year(), local.month(), 1).unwrap_or(local);
        let next = first
            .checked_add_months(chrono::Months::new(1))
            .unwrap_or(first);
        Self {
            key: format!("{:04}-{:02}", first.year(), first.month()),
            start: midnight(tz, first),
            end: midnight(tz, next),
        }
    }
}

/// The first instant of `day` in `tz` (a day that starts in a DST gap
/// starts at the gap's end).
fn midnight(tz: Tz, day: NaiveDate) -> DateTime<Utc> {
    let mut t = day.and_hms_opt(0, 0, 0).unwrap_or_default();
    for _ in 0..4 {
        if let Some(at) = tz.from_local_datetime(&t).earliest() {
            return at.with_timezone(&Utc);
        }
        t += chrono::Duration::minutes(30);
    }
    Utc.from_utc_datetime(&t)
}

/// Where monthly counters live. `add` is atomic per (tenant, resource,
/// month): concurrent calls never pass `cap` together.
#[async_trait]
pub trait MonthlyStore: Send + Sync {
    /// Adds `amount` to the counter unless the total would pass `cap`.
    /// `Ok(Ok((before, after)))` when added, `Ok(Err(current))` when
    /// refused (nothing added).
    async fn add(
        &self,
        tenant: TenantId,
        resource: &str,
        month: &str,
        amount: u64,
        cap: u64,
    ) -> Result<Result<(u64, u64), u64>, StoreError>;

    /// The counter's value (0 when never counted).
    async fn used(&self, tenant: TenantId, resource: &str, month: &str) -> Result<u64, StoreError>;
}

/// Monthly counters in this process's memory.
#[derive(Debug, Default)]
pub struct MemoryMonthly {
    counters: Mutex<HashMap<(TenantId, String, String), u64>>,
}

#[async_trait]
impl MonthlyStore for MemoryMonthly {
    async fn add(
        &self,
        tenant: TenantId,
        resource: &str,
        month: &str,
        amount: u64,
        cap: u64,
    ) -> Result<Result<(u64, u64), u64>, StoreError> {
        let mut map = self.counters.lock().unwrap_or_else(PoisonError::into_inner);
        let c = map
            .entry((tenant, resource.to_owned(), month.to_owned()))
            .or_insert(0);
        let before = *c;
        match before.checked_add(amount) {
            Some(after) if after <= cap => {
                *c = after;
                Ok(Ok((before, after)))
            }
            _ => Ok(Err(before)),
        }
    }

    async fn used(&self, tenant: TenantId, resource: &str, month: &str) -> Result<u64, StoreError> {
        Ok(self
            .counters
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&(tenant, resource.to_owned(), month.to_owned()))
            .copied()
            .unwrap_or(0))
    }
}

/// An accepted consumption.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MonthlyDecision {
    /// The month it was counted in.
    pub month: CalendarMonth,
    /// Used this month, after it.
    pub used: u64,
    /// Included in the plan.
    pub limit: u64,
    /// Used beyond `limit` (billed as overage), after it.
    pub overage: u64,
    /// Thresholds this consumption crossed (each crossed once per month).
    pub crossed: Vec<u8>,
}

/// The monthly quota engine. See the [module docs](self).
#[derive(Clone)]
pub struct MonthlyQuota {
    store: Arc<dyn MonthlyStore>,
    events: Arc<dyn QuotaEvents>,
    thresholds: Vec<u8>,
}

impl std::fmt::Debug for MonthlyQuota {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MonthlyQuota")
            .field("thresholds", &self.thresholds)
            .finish_non_exhaustive()
    }
}

impl MonthlyQuota {
    /// Counters in `store`, thresholds [`DEFAULT_THRESHOLDS`] logged.
    pub fn new(store: Arc<dyn MonthlyStore>) -> Self {
        Self {
            store,
            events: Arc::new(TracingEvents),
            thresholds: DEFAULT_THRESHOLDS.to_vec(),
        }
    }

    /// Where threshold events go.
    pub fn with_events(mut self, events: Arc<dyn QuotaEvents>) -> Self {
        self.events = events;
        self
    }

    /// Threshold percentages of the included limit (1–200, so overage can
    /// be announced too).
    pub fn with_thresholds(mut self, percents: &[u8]) -> Self {
        let mut t: Vec<u8> = percents.iter().map(|p| (*p).clamp(1, 200)).collect();
        t.sort_unstable();
        t.dedup();
        self.thresholds = t;
        self
    }

    /// Counts `amount` of `resource` for the context's tenant now.
    pub async fn record(
        &self,
        ctx: &TenantContext,
        resource: &str,
        amount: u64,
    ) -> Result<MonthlyDecision, QuotaError> {
        self.record_at(ctx, resource, amount, Utc::now()).await
    }

    /// [`MonthlyQuota::record`] at `now` (tests, replays of metered events).
    pub async fn record_at(
        &self,
        ctx: &TenantContext,
        resource: &str,
        amount: u64,
        now: DateTime<Utc>,
    ) -> Result<MonthlyDecision, QuotaError> {
        let spec = match super::entitled_limit(ctx, resource, ResourceKind::Monthly)? {
            Some(Limit::Monthly(spec)) => spec,
            // Unlimited: nothing to count against.
            Some(_) => crate::plan::MonthlySpec {
                limit: u64::MAX,
                overage: 0,
            },
            // Not in the plan: refused (limit 0), never unlimited.
            None => crate::plan::MonthlySpec::default(),
        };
        let tz = time_zone_of(ctx.tenant()).map_err(QuotaError::Backend)?;
        let month = CalendarMonth::containing(now, tz);
        let cap = spec.cap();
        let tenant = ctx.tenant_id();
        match self
            .store
            .add(tenant, resource, &month.key, amount, cap)
            .await
            .map_err(QuotaError::Backend)?
        {
            Err(current) => Err(QuotaError::exceeded(
                ctx,
                resource,
                ResourceKind::Monthly,
                current,
                cap,
                amount,
                (month.end - now).to_std().ok(),
            )),
            Ok((before, after)) => {
                let crossed: Vec<u8> = self
                    .thresholds
                    .iter()
                    .copied()
                    .filter(|p| {
                        let mark = u128::from(*p) * u128::from(spec.limit);
                        u128::from(before) * 100 < mark && u128::from(after) * 100 >= mark
                    })
                    .collect();
                for percent in &crossed {
                    self.events.threshold_crossed(&ThresholdCrossed::new(
                        tenant,
                        resource,
                        *percent,
                        after,
                        spec.limit,
                        month.start,
                    ));
                }
                Ok(MonthlyDecision {
                    used: after,
                    limit: spec.limit,
                    overage: after.saturating_sub(spec.limit),
                    crossed,
                    month,
                })
            }
        }
    }

    /// Used this month by the context's tenant (for a usage page).
    pub async fn used(&self, ctx: &TenantContext, resource: &str) -> Result<u64, QuotaError> {
        let tz = time_zone_of(ctx.tenant()).map_err(QuotaError::Backend)?;
        let month = CalendarMonth::containing(Utc::now(), tz);
        self.store
            .used(ctx.tenant_id(), resource, &month.key)
            .await
            .map_err(QuotaError::Backend)
    }
}
