//! The agent dashboard: what the caller's book of business looks like —
//! their own for an agent, their team's for a manager, the tenant's for an
//! admin.

use axum::Json;
use axum::extract::State;
use chrono::{Duration, Utc};
use serde::Serialize;

use super::agents::reach;
use super::policies::{COLUMNS, Policy};
use super::{ApiError, AppState, Caller};

/// Issued ÷ quoted over a window.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Conversion {
    /// Policies quoted in the window.
    pub quoted: i64,
    /// Of those, issued.
    pub issued: i64,
    /// `issued / quoted` in basis points (10 000 = 100 %); 0 when nothing was quoted.
    pub rate_bp: i64,
}

/// The dashboard.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Dashboard {
    /// Customers in the active lifecycle stage.
    pub active_customers: i64,
    /// Completed payments in the last 30 days, minor units (INR).
    pub revenue_30d_minor: i64,
    /// Conversion over the last 90 days.
    pub conversion_90d: Conversion,
    /// Active policies with a premium due in the next 30 days (or overdue), soonest first.
    pub due_soon: Vec<Policy>,
}

/// The caller's dashboard.
#[utoipa::path(get, path = "/dashboard", responses((status = 200, body = Dashboard)), security(("bearer" = [])))]
pub async fn dashboard(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Dashboard>, ApiError> {
    let today = Utc::now().date_naive();
    let mut tx = state.data.begin(&caller.ctx).await?;
    // Owned records only: shared ones are someone else's business.
    let (_, own) = reach(&mut tx, &caller, "").await?;
    let (_, own_p) = reach(&mut tx, &caller, "p.").await?;
    let active_customers: i64 = crate::on!(
        tx,
        sqlx::query_scalar(&format!(
            "SELECT count(*) FROM customers WHERE active = TRUE AND lifecycle_stage = 'active' AND {own}"
        )),
        fetch_one
    )?;
    // Summed in halves: no overflow on either backend, whatever is stored.
    let halves: (i64, i64) = crate::on!(
        tx,
        sqlx::query_as(&format!(
            "SELECT {} FROM payments y JOIN policies p ON p.id = y.policy_id \
         WHERE y.status = 'completed' AND y.currency = 'INR' AND y.paid_date >= $1 AND {own_p}",
            crate::validate::sum_minor_sql("y.amount_minor")
        ))
        .bind(today - Duration::days(30)),
        fetch_one
    )?;
    let revenue_30d_minor = crate::validate::combine(halves);
    let since = Utc::now() - Duration::days(90);
    let (quoted, issued): (i64, i64) = crate::on!(tx, sqlx::query_as(&format!(
        "SELECT count(*), count(p.issue_date) FROM policies p WHERE p.active = TRUE AND p.created_at >= $1 AND {own_p}"
    ))
    .bind(since), fetch_one)?;
    let due_soon: Vec<Policy> = crate::on!(
        tx,
        sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM policies p WHERE p.active = TRUE AND p.status = 'active' \
         AND p.next_due_date <= $1 AND {own_p} ORDER BY p.next_due_date, p.policy_number LIMIT 20"
        ))
        .bind(today + Duration::days(30)),
        fetch_all
    )?;
    tx.commit().await?;
    Ok(Json(Dashboard {
        active_customers,
        revenue_30d_minor,
        conversion_90d: Conversion {
            quoted,
            issued,
            rate_bp: if quoted == 0 {
                0
            } else {
                issued * 10_000 / quoted
            },
        },
        due_soon,
    }))
}
