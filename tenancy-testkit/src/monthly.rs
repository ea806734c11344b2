//! One behaviour table for every [`MonthlyStore`] (memory, PostgreSQL,
//! SQLite): calendar months in the tenant's time zone, the soft limit with
//! its overage allowance exact under concurrency, thresholds announced once
//! per month — and [`UncheckedMonthly`], the broken twin that checks the
//! cap outside the store's atomic step.

use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use chrono::{DateTime, TimeZone, Utc};
use tenancy_core::plan::PlanCatalog;
use tenancy_core::quota::monthly::{MonthlyQuota, MonthlyStore};
use tenancy_core::quota::{QuotaError, QuotaEvents, ThresholdCrossed};
use tenancy_core::{StoreError, Tenant, TenantContext, TenantId};

/// Concurrent consumers in [`calendar_months`].
pub const CONSUMERS: usize = 64;

/// Collects threshold events.
#[derive(Debug, Default)]
pub struct CollectedEvents(pub Mutex<Vec<ThresholdCrossed>>);

impl QuotaEvents for CollectedEvents {
    fn threshold_crossed(&self, event: &ThresholdCrossed) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(event.clone());
    }
}

/// What [`calendar_months`] observed at the month boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MonthlyReport {
    /// Of [`CONSUMERS`] concurrent consumptions of 2, how many were counted.
    pub accepted: usize,
    /// How many were refused.
    pub refused: usize,
}

fn at(y: i32, m: u32, d: u32, h: u32, min: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, m, d, h, min, 0)
        .single()
        .unwrap_or_default()
}

/// Runs the table on `store` for `tenant` (created where the store needs
/// it; its settings are replaced by `time_zone: Asia/Kolkata`). Plan: `sms`
/// 100 a month plus 20 of overage. An `Err` names the rule that broke.
///
/// 1. 50 sent on 30 November at 23:59 in Kolkata count in November;
/// 2. at 00:00 on 1 December in Kolkata (18:30 UTC), [`CONSUMERS`]
///    concurrent sends of 2: exactly 60 counted (120 = limit + overage),
///    the rest refused with a wait until the month ends; 20 billed as
///    overage; 80, 95 and 100 % announced once each, for December only;
/// 3. November still holds 50; January starts from zero.
pub async fn calendar_months(
    store: Arc<dyn MonthlyStore>,
    tenant: &Tenant,
) -> Result<MonthlyReport, String> {
    let catalog = PlanCatalog::from_json(
        r#"{"plans": [{"id": "metered", "name": "Metered",
            "limits": {"sms": {"monthly": {"limit": 100, "overage": 20}}}}]}"#,
    )
    .map_err(|e| e.to_string())?;
    let mut t = tenant.clone().with_plan("metered".into());
    t.settings = serde_json::json!({"time_zone": "Asia/Kolkata"});
    let ctx = TenantContext::new(t).with_entitlements(Arc::new(
        catalog
            .entitlements(&"metered".into(), &Default::default())
            .map_err(|e| e.to_string())?,
    ));
    let events = Arc::new(CollectedEvents::default());
    let quota = MonthlyQuota::new(store.clone()).with_events(events.clone());

    // 1. The last minute of November in Kolkata.
    let november = quota
        .record_at(&ctx, "sms", 50, at(2026, 11, 30, 18, 29))
        .await
        .map_err(|e| format!("1. {e}"))?;
    if november.month.key != "2026-11" || november.used != 50 {
        return Err(format!("1. counted as {november:?}"));
    }

    // 2. Midnight, 1 December in Kolkata: the race.
    let midnight = at(2026, 11, 30, 18, 30);
    let tasks: Vec<_> = (0..CONSUMERS)
        .map(|_| {
            let (quota, ctx) = (quota.clone(), ctx.clone());
            tokio::spawn(async move { quota.record_at(&ctx, "sms", 2, midnight).await })
        })
        .collect();
    let (mut accepted, mut refused, mut overage) = (0, 0, 0);
    for t in tasks {
        match t.await.map_err(|e| e.to_string())? {
            Ok(d) => {
                accepted += 1;
                overage = overage.max(d.overage);
                if d.month.key != "2026-12" {
                    return Err(format!("2. counted in {}", d.month.key));
                }
            }
            Err(QuotaError::Exceeded(q)) => {
                refused += 1;
                let wait = q.retry_after.map_or(0, |w| w.as_secs());
                // Until 1 January in Kolkata: 31 days.
                if wait != 31 * 86_400 {
                    return Err(format!(
                        "2. refusal waits {wait} s, not until the month ends"
                    ));
                }
            }
            Err(e) => return Err(format!("2. {e}")),
        }
    }
    let report = MonthlyReport { accepted, refused };
    let december = store
        .used(ctx.tenant_id(), "sms", "2026-12")
        .await
        .map_err(|e| e.to_string())?;
    if accepted != 60 || december != 120 || overage != 20 {
        return Err(format!(
            "2. {accepted} of {CONSUMERS} counted, December holds {december}, overage {overage}: {report:?}"
        ));
    }
    let announced: Vec<(u8, DateTime<Utc>)> = events
        .0
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .map(|e| (e.percent, e.period_start))
        .collect();
    let mut percents: Vec<u8> = announced.iter().map(|(p, _)| *p).collect();
    percents.sort_unstable();
    if percents != [80, 95, 100] || announced.iter().any(|(_, start)| *start != midnight) {
        return Err(format!("2. thresholds announced: {announced:?}"));
    }

    // 3. November untouched; January from zero.
    let nov = store
        .used(ctx.tenant_id(), "sms", "2026-11")
        .await
        .map_err(|e| e.to_string())?;
    let january = quota
        .record_at(&ctx, "sms", 1, at(2026, 12, 31, 18, 30))
        .await
        .map_err(|e| format!("3. {e}"))?;
    if nov != 50 || january.month.key != "2027-01" || january.used != 1 {
        return Err(format!("3. November {nov}, January {january:?}"));
    }
    Ok(report)
}

/// The broken twin: checks the cap with a read, then adds without one, as
/// a hand-written counter would.
pub struct UncheckedMonthly(pub Arc<dyn MonthlyStore>);

#[async_trait]
impl MonthlyStore for UncheckedMonthly {
    async fn add(
        &self,
        tenant: TenantId,
        resource: &str,
        month: &str,
        amount: u64,
        cap: u64,
    ) -> Result<Result<(u64, u64), u64>, StoreError> {
        let current = self.0.used(tenant, resource, month).await?;
        if current.saturating_add(amount) > cap {
            return Ok(Err(current));
        }
        tokio::task::yield_now().await;
        self.0.add(tenant, resource, month, amount, u64::MAX).await
    }

    async fn used(&self, tenant: TenantId, resource: &str, month: &str) -> Result<u64, StoreError> {
        self.0.used(tenant, resource, month).await
    }
}
