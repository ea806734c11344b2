//! The tenant itself: usage against the plan, plan changes, and compliance
//! reports built from the audit log.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use tenancy_core::Role;

use super::{ApiError, AppState, Caller, QueryOf, STOCK, THRESHOLDS, require_feature};

/// One metered resource.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ResourceUsage {
    /// The resource (`agents`, `customers`, `policies`, `users`, `api_calls`,
    /// `quotes` this calendar month).
    pub resource: String,
    /// In use (stock) or used in the busiest window (rate).
    pub used: u64,
    /// The plan's limit (`None` = unlimited).
    pub limit: Option<u64>,
    /// `used / limit` in percent, when limited.
    pub percent: Option<u64>,
}

/// Usage against the plan.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct UsageReport {
    /// The tenant's plan.
    pub plan: Option<String>,
    /// Per resource.
    pub resources: Vec<ResourceUsage>,
    /// The percentages at which threshold events are recorded.
    pub thresholds: Vec<u64>,
}

/// The tenant's usage of every limited resource.
#[utoipa::path(get, path = "/usage", responses((status = 200, body = UsageReport)), security(("bearer" = [])))]
pub async fn usage(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<UsageReport>, ApiError> {
    let counts = stock_counts(&state, &caller).await?;
    let e = caller.ctx.entitlements().cloned();
    let percent =
        |used: u64, limit: Option<u64>| limit.map(|l| used.saturating_mul(100) / l.max(1));
    let seats = super::invitations::invitations(&state)
        .seats_used(caller.ctx.tenant_id())
        .await
        .map_err(ApiError::from)?;
    let mut resources: Vec<ResourceUsage> = counts
        .iter()
        .chain(std::iter::once(&("users", seats)))
        .map(|(r, used)| {
            let limit = e.as_ref().and_then(|e| e.stock_limit(r));
            ResourceUsage {
                resource: (*r).to_owned(),
                used: *used,
                limit,
                percent: percent(*used, limit),
            }
        })
        .collect();
    if let Some(Ok(rates)) = state.quota.as_ref().map(|q| q.usage(&caller.ctx))
        && let Some(u) = rates.get("api_calls")
    {
        {
            resources.push(ResourceUsage {
                resource: "api_calls".to_owned(),
                used: u.used,
                limit: u.limit,
                percent: percent(u.used, u.limit),
            });
        }
    }
    // Calendar-month allowances: used this month against the included
    // amount (percent can pass 100 within the overage allowance).
    if let Some(e) = e.as_ref() {
        for resource in ["quotes"] {
            let limit = match e.limit(resource) {
                Some(tenancy_core::plan::Limit::Monthly(spec)) => Some(spec.limit),
                Some(tenancy_core::plan::Limit::Unlimited) => None,
                _ => continue,
            };
            let used = state
                .monthly
                .used(&caller.ctx, resource)
                .await
                .map_err(|e| ApiError::internal(e.to_string()))?;
            resources.push(ResourceUsage {
                resource: resource.to_owned(),
                used,
                limit,
                percent: percent(used, limit),
            });
        }
    }
    Ok(Json(UsageReport {
        plan: caller.ctx.tenant().plan.as_ref().map(ToString::to_string),
        resources,
        thresholds: THRESHOLDS.to_vec(),
    }))
}

pub(super) async fn stock_counts(
    state: &AppState,
    caller: &Caller,
) -> Result<Vec<(&'static str, u64)>, ApiError> {
    let mut tx = state.data.begin(&caller.ctx).await?;
    let mut out = Vec::new();
    for (resource, sql) in STOCK {
        let n: i64 = crate::on!(tx, sqlx::query_scalar(sql), fetch_one)?;
        out.push((resource, u64::try_from(n).unwrap_or(0)));
    }
    tx.commit().await?;
    Ok(out)
}

/// A plan change.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct PlanChange {
    /// The new plan's id.
    pub plan: String,
    /// On a downgrade below current usage: refuse (default) or accept and
    /// mark the resources over their limit (no new ones until under it).
    #[serde(default)]
    pub allow_over_limit: bool,
}

/// The outcome of a plan change.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PlanChanged {
    /// The previous plan.
    pub from: Option<String>,
    /// The new plan.
    pub to: String,
    /// Resources left over their new limit.
    pub over_limit: Vec<ResourceUsage>,
}

/// The report window.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct Window {
    /// Days back from now (1–366, default 30).
    pub days: Option<i64>,
}

impl Window {
    fn since(&self) -> Result<DateTime<Utc>, ApiError> {
        let days = self.days.unwrap_or(30);
        if !(1..=366).contains(&days) {
            return Err(ApiError::bad_request("days must be between 1 and 366"));
        }
        Ok(Utc::now() - Duration::days(days))
    }
}

/// Who read or exported which sensitive fields.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DataAccessLine {
    /// The user.
    pub actor: String,
    /// The resource type.
    pub resource_type: String,
    /// Fields accessed (union).
    pub fields: Vec<String>,
    /// Records accessed (distinct).
    pub records: u64,
    /// Accesses.
    pub accesses: u64,
    /// The last one.
    pub last_at: DateTime<Utc>,
}

/// What each user did.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ActivityLine {
    /// The user (or system component).
    pub actor: String,
    /// The action.
    pub action: String,
    /// How many times.
    pub count: u64,
    /// The last time.
    pub last_at: DateTime<Utc>,
}

fn reports_allowed(caller: &Caller) -> Result<(), ApiError> {
    if caller.role != Role::Admin {
        return Err(ApiError::forbidden(
            "only tenant admins read compliance reports",
        ));
    }
    require_feature(caller, "audit_log_access")
}

/// Fields, records, count and last time of one user's access to one resource type.
type Access = (Vec<String>, Vec<String>, u64, DateTime<Utc>);

/// Data-access report: reads and exports of sensitive fields, per user.
#[utoipa::path(get, path = "/reports/data-access", params(Window),
    responses((status = 200, body = [DataAccessLine]), (status = 403)), security(("bearer" = [])))]
pub async fn data_access(
    State(state): State<AppState>,
    caller: Caller,
    QueryOf(w): QueryOf<Window>,
) -> Result<Json<Vec<DataAccessLine>>, ApiError> {
    reports_allowed(&caller)?;
    let since = w.since()?;
    let mut tx = state.data.begin(&caller.ctx).await?;
    let events = state.data.audit().since(&mut tx, since).await?;
    tx.commit().await?;
    let mut lines: BTreeMap<(String, String), Access> = BTreeMap::new();
    for (_, e) in events {
        if !matches!(e.action.as_str(), "read" | "export") || e.fields.is_empty() {
            continue;
        }
        let line = lines
            .entry((e.actor.id().to_owned(), e.resource_type.clone()))
            .or_insert_with(|| (Vec::new(), Vec::new(), 0, e.at));
        for f in &e.fields {
            if !line.0.contains(f) {
                line.0.push(f.clone());
            }
        }
        if let Some(r) = &e.resource_id
            && !line.1.contains(r)
        {
            line.1.push(r.clone());
        }
        line.2 += 1;
        line.3 = line.3.max(e.at);
    }
    Ok(Json(
        lines
            .into_iter()
            .map(
                |((actor, resource_type), (mut fields, records, accesses, last_at))| {
                    fields.sort();
                    DataAccessLine {
                        actor,
                        resource_type,
                        fields,
                        records: records.len() as u64,
                        accesses,
                        last_at,
                    }
                },
            )
            .collect(),
    ))
}

/// User-activity report: actions per user.
#[utoipa::path(get, path = "/reports/user-activity", params(Window),
    responses((status = 200, body = [ActivityLine]), (status = 403)), security(("bearer" = [])))]
pub async fn user_activity(
    State(state): State<AppState>,
    caller: Caller,
    QueryOf(w): QueryOf<Window>,
) -> Result<Json<Vec<ActivityLine>>, ApiError> {
    reports_allowed(&caller)?;
    let since = w.since()?;
    let mut tx = state.data.begin(&caller.ctx).await?;
    let events = state.data.audit().since(&mut tx, since).await?;
    tx.commit().await?;
    let mut lines: BTreeMap<(String, String), (u64, DateTime<Utc>)> = BTreeMap::new();
    for (_, e) in events {
        let line = lines
            .entry((e.actor.id().to_owned(), e.action.clone()))
            .or_insert((0, e.at));
        line.0 += 1;
        line.1 = line.1.max(e.at);
    }
    Ok(Json(
        lines
            .into_iter()
            .map(|((actor, action), (count, last_at))| ActivityLine {
                actor,
                action,
                count,
                last_at,
            })
            .collect(),
    ))
}

/// Every table of the tenant, sensitive fields decrypted (tenant admins,
/// plans with `bulk_export`). Recorded in the audit log as an export.
#[utoipa::path(get, path = "/export",
    responses((status = 200, description = "Table name to rows", body = Object), (status = 403)),
    security(("bearer" = [])))]
pub async fn export(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<serde_json::Value>, ApiError> {
    if caller.role != Role::Admin {
        return Err(ApiError::forbidden(
            "only tenant admins export the tenant's data",
        ));
    }
    require_feature(&caller, "bulk_export")?;
    let rows =
        crate::ops::export_rows(&state.data, caller.ctx.tenant(), caller.user.as_str()).await?;
    Ok(Json(serde_json::Value::Object(
        rows.into_iter()
            .map(|(t, r)| (t, serde_json::Value::Array(r)))
            .collect(),
    )))
}
