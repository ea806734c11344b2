//! Premium payments and the commissions they earn.
//!
//! Completing a payment, in one transaction: marks it paid, earns the
//! agent's commission (first-year or renewal rate, plus any bonus, from the
//! tenant's `commission_rates` setting), moves the policy's next due date
//! and schedules the next premium. Refunding cancels the commissions not
//! paid out yet.

use crate::data::Tx;
use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Months, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use tenancy_core::Role;
use tenancy_core::audit::AuditEvent;

use super::agents::{in_set, reach, visible_agents};
use super::policies::Policy;
use super::{
    ApiError, AppState, Body, Caller, PAY_COMMISSIONS, Page, PageQuery, PathOf, QueryOf,
    SETTLE_PAYMENTS,
};
use crate::domain::{
    CommissionKind, CommissionRates, CommissionStatus, Currency, PaymentMethod, PaymentStatus,
    PolicyStatus, apply_bp,
};
use crate::id::Id;

/// A premium payment.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Payment {
    /// Id.
    pub id: Id,
    /// The policy.
    pub policy_id: Id,
    /// Amount, minor units.
    pub amount_minor: i64,
    /// Currency.
    #[sqlx(try_from = "String")]
    pub currency: Currency,
    /// When it is due.
    pub due_date: NaiveDate,
    /// When it was paid.
    pub paid_date: Option<NaiveDate>,
    /// How it was paid.
    pub method: Option<String>,
    /// Status.
    #[sqlx(try_from = "String")]
    pub status: PaymentStatus,
    /// The payment provider's reference, unique in the tenant.
    pub transaction_ref: Option<String>,
    /// Who recorded it as paid (a user id).
    pub confirmed_by: Option<String>,
    /// When they did.
    pub confirmed_at: Option<DateTime<Utc>>,
    /// Who refunded it.
    pub refunded_by: Option<String>,
    /// When they did.
    pub refunded_at: Option<DateTime<Utc>>,
    /// Created.
    pub created_at: DateTime<Utc>,
}

pub(crate) const COLUMNS: &str = "y.id, y.policy_id, y.amount_minor, y.currency, y.due_date, y.paid_date, \
    y.method, y.status, y.transaction_ref, y.confirmed_by, y.confirmed_at, y.refunded_by, \
    y.refunded_at, y.created_at";

/// A commission.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Commission {
    /// Id.
    pub id: Id,
    /// The payment that earned it.
    pub payment_id: Id,
    /// The policy.
    pub policy_id: Id,
    /// The agent who earned it.
    pub agent_id: Id,
    /// Why.
    #[sqlx(try_from = "String")]
    pub kind: CommissionKind,
    /// Rate, basis points.
    pub rate_bp: i64,
    /// Amount, minor units.
    pub amount_minor: i64,
    /// Currency.
    #[sqlx(try_from = "String")]
    pub currency: Currency,
    /// Status.
    #[sqlx(try_from = "String")]
    pub status: CommissionStatus,
    /// Created.
    pub created_at: DateTime<Utc>,
}

/// Recording a completed payment.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct CompleteRequest {
    /// How it was paid.
    pub method: PaymentMethod,
    /// The payment provider's reference (unique in the tenant).
    pub transaction_ref: String,
    /// When it was paid (default today in the tenant's time zone): not in
    /// the future, not before the premium was due.
    pub paid_date: Option<NaiveDate>,
}

/// Refuses callers who may not settle payments (complete or refund).
fn settler(caller: &Caller) -> Result<(), ApiError> {
    if caller.can(SETTLE_PAYMENTS) {
        Ok(())
    } else {
        Err(ApiError::forbidden(
            "only tenant admins and finance members complete or refund payments",
        ))
    }
}

/// Today in the tenant's time zone (setting `time_zone`, UTC by default).
fn tenant_today(caller: &Caller) -> Result<NaiveDate, ApiError> {
    let tz = super::settings::time_zone_of(&caller.ctx.tenant().settings)?;
    Ok(Utc::now().with_timezone(&tz).date_naive())
}

/// Filters on the payment list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct PaymentFilter {
    /// Only this status.
    pub status: Option<PaymentStatus>,
    /// Only this policy's.
    pub policy_id: Option<Id>,
}

/// Schedules a pending premium of `p` due on `due`.
pub async fn schedule(tx: &mut Tx, tenant: Id, p: &Policy, due: NaiveDate) -> Result<Id, ApiError> {
    let id = Id::new();
    crate::on!(tx, sqlx::query(
        "INSERT INTO payments (tenant_id, id, policy_id, amount_minor, currency, due_date, status, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, 'pending', $7)",
    )
    .bind(tenant)
    .bind(id)
    .bind(p.id)
    .bind(p.premium_minor)
    .bind(p.currency.as_str())
    .bind(due)
    .bind(Utc::now()), execute)?;
    Ok(id)
}

async fn fetch(tx: &mut Tx, filter: &str, id: Id) -> Result<Option<Payment>, ApiError> {
    Ok(crate::on!(
        tx,
        sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM payments y JOIN policies p ON p.id = y.policy_id \
         WHERE y.id = $1 AND p.active = TRUE AND {filter}"
        ))
        .bind(id),
        fetch_optional
    )?)
}

async fn audit(
    state: &AppState,
    tx: &mut Tx,
    caller: &Caller,
    action: &str,
    kind: &str,
    id: Id,
) -> Result<(), ApiError> {
    state
        .data
        .audit()
        .append(
            tx,
            AuditEvent::from_context(&caller.ctx, action, kind).with_resource_id(id),
        )
        .await?;
    Ok(())
}

/// Lists the payments of the policies the caller may see.
#[utoipa::path(get, path = "/payments", params(PageQuery, PaymentFilter),
    responses((status = 200, body = Page<Payment>)), security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    QueryOf(page): QueryOf<PageQuery>,
    QueryOf(filter): QueryOf<PaymentFilter>,
) -> Result<Json<Page<Payment>>, ApiError> {
    let (limit, offset) = page.bounds()?;
    let mut tx = state.data.begin(&caller.ctx).await?;
    let read = if caller.can(SETTLE_PAYMENTS) {
        "TRUE".to_owned()
    } else {
        reach(&mut tx, &caller, "p.").await?.0
    };
    let where_ = format!(
        "p.active = TRUE AND {read} AND ($1 IS NULL OR y.status = $1) AND ($2 IS NULL OR y.policy_id = $2)"
    );
    let status = filter.status.map(PaymentStatus::as_str);
    let items: Vec<Payment> =
        crate::on!(tx, sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM payments y JOIN policies p ON p.id = y.policy_id WHERE {where_} \
         ORDER BY y.due_date DESC, y.id LIMIT $3 OFFSET $4"
    ))
    .bind(status)
    .bind(filter.policy_id)
    .bind(limit)
    .bind(offset), fetch_all)?;
    let total: i64 =
        crate::on!(tx, sqlx::query_scalar(&format!(
        "SELECT count(*) FROM payments y JOIN policies p ON p.id = y.policy_id WHERE {where_}"
    ))
    .bind(status)
    .bind(filter.policy_id), fetch_one)?;
    tx.commit().await?;
    Ok(Json(Page {
        items,
        limit,
        offset,
        total,
    }))
}

/// The result of completing a payment.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Completed {
    /// The payment.
    pub payment: Payment,
    /// The commissions it earned.
    pub commissions: Vec<Commission>,
    /// The next premium scheduled, if the policy runs on.
    pub next_payment_id: Option<Id>,
}

/// Records a pending payment as paid; earns commissions, schedules the next premium.
#[utoipa::path(post, path = "/payments/{id}/complete", params(("id" = Id, Path)), request_body = CompleteRequest,
    responses((status = 200, body = Completed), (status = 404), (status = 409), (status = 422)),
    security(("bearer" = [])))]
pub async fn complete(
    State(state): State<AppState>,
    caller: Caller,
    PathOf(id): PathOf<Id>,
    Body(req): Body<CompleteRequest>,
) -> Result<Json<Completed>, ApiError> {
    settler(&caller)?;
    let reference = crate::validate::text("transaction_ref", &req.transaction_ref, 100)?;
    let today = tenant_today(&caller)?;
    let paid = req.paid_date.unwrap_or(today);
    if paid > today {
        return Err(ApiError::invalid_field(
            "paid_date",
            "paid_date must not be in the future",
        ));
    }
    let rates = CommissionRates::of(&caller.ctx.tenant().settings).map_err(ApiError::internal)?;
    let tenant: Id = caller.ctx.tenant_id().into();
    let mut tx = state.data.begin_write(&caller.ctx).await?;
    let Some(mut pay) = fetch(&mut tx, "TRUE", id).await? else {
        return Err(ApiError::not_found("payment"));
    };
    if paid < pay.due_date {
        return Err(ApiError::invalid_field(
            "paid_date",
            format!(
                "paid_date must not be before the due date ({})",
                pay.due_date
            ),
        ));
    }
    if pay.status != PaymentStatus::Pending {
        return Err(ApiError::conflict(format!(
            "the payment is {}, not pending",
            pay.status
        )));
    }
    let Some(policy) = super::policies::fetch(&mut tx, "TRUE", pay.policy_id).await? else {
        return Err(ApiError::not_found("policy"));
    };
    if !matches!(policy.status, PolicyStatus::Active | PolicyStatus::Lapsed) {
        return Err(ApiError::conflict(format!(
            "the policy is {}",
            policy.status
        )));
    }
    pay.status = PaymentStatus::Completed;
    pay.paid_date = Some(paid);
    pay.method = Some(req.method.as_str().to_owned());
    pay.transaction_ref = Some(reference);
    pay.confirmed_by = Some(caller.user.as_str().to_owned());
    pay.confirmed_at = Some(Utc::now());
    crate::on!(tx, sqlx::query(
        "UPDATE payments SET status = 'completed', paid_date = $2, method = $3, transaction_ref = $4, \
         confirmed_by = $5, confirmed_at = $6 WHERE id = $1 AND status = 'pending'",
    )
    .bind(pay.id)
    .bind(pay.paid_date)
    .bind(&pay.method)
    .bind(&pay.transaction_ref)
    .bind(&pay.confirmed_by)
    .bind(pay.confirmed_at), execute)?;

    // Commissions: first-year while the premium falls in the policy's first
    // year (by due date), renewal after; a bonus on top when configured.
    let first_year_ends = policy
        .commencement_date
        .and_then(|c| c.checked_add_months(Months::new(12)));
    let kind = match first_year_ends {
        Some(end) if pay.due_date >= end => (CommissionKind::Renewal, rates.renewal_bp),
        _ => (CommissionKind::FirstYear, rates.first_year_bp),
    };
    let mut earned = vec![kind];
    if rates.bonus_bp > 0 {
        earned.push((CommissionKind::Bonus, rates.bonus_bp));
    }
    let mut commissions = Vec::new();
    for (kind, bp) in earned {
        let c = Commission {
            id: Id::new(),
            payment_id: pay.id,
            policy_id: policy.id,
            agent_id: policy.agent_id,
            kind,
            rate_bp: bp,
            amount_minor: apply_bp(pay.amount_minor, bp),
            currency: pay.currency,
            status: CommissionStatus::Pending,
            created_at: Utc::now(),
        };
        crate::on!(tx, sqlx::query(
            "INSERT INTO commissions (tenant_id, id, payment_id, policy_id, agent_id, kind, rate_bp, \
             amount_minor, currency, status, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'pending', $10)",
        )
        .bind(tenant)
        .bind(c.id)
        .bind(c.payment_id)
        .bind(c.policy_id)
        .bind(c.agent_id)
        .bind(c.kind.as_str())
        .bind(c.rate_bp)
        .bind(c.amount_minor)
        .bind(c.currency.as_str())
        .bind(c.created_at), execute)?;
        commissions.push(c);
    }

    // The policy moves on: active again if it had lapsed, next premium due.
    let next_due = pay
        .due_date
        .checked_add_months(Months::new(policy.premium_frequency.months()));
    let runs_on = match (next_due, policy.maturity_date) {
        (Some(n), Some(m)) => n < m,
        (Some(_), None) => true,
        _ => false,
    };
    let mut next_payment_id = None;
    let mut p = policy.clone();
    p.status = PolicyStatus::Active;
    p.next_due_date = if runs_on { next_due } else { None };
    crate::on!(
        tx,
        sqlx::query("UPDATE policies SET status = $2, next_due_date = $3 WHERE id = $1")
            .bind(p.id)
            .bind(p.status.as_str())
            .bind(p.next_due_date),
        execute
    )?;
    if let (true, Some(due)) = (runs_on, next_due) {
        next_payment_id = Some(schedule(&mut tx, tenant, &p, due).await?);
    }
    audit(&state, &mut tx, &caller, "complete", "payments", pay.id).await?;
    tx.commit().await?;
    Ok(Json(Completed {
        payment: pay,
        commissions,
        next_payment_id,
    }))
}

/// Records a failed payment attempt (the payment stays due as failed).
#[utoipa::path(post, path = "/payments/{id}/fail", params(("id" = Id, Path)),
    responses((status = 200, body = Payment), (status = 404), (status = 409)), security(("bearer" = [])))]
pub async fn fail(
    State(state): State<AppState>,
    caller: Caller,
    PathOf(id): PathOf<Id>,
) -> Result<Json<Payment>, ApiError> {
    transition(
        &state,
        &caller,
        id,
        PaymentStatus::Pending,
        PaymentStatus::Failed,
    )
    .await
}

/// Refunds a completed payment; its commissions not yet paid out are cancelled.
#[utoipa::path(post, path = "/payments/{id}/refund", params(("id" = Id, Path)),
    responses((status = 200, body = Payment), (status = 404), (status = 409)), security(("bearer" = [])))]
pub async fn refund(
    State(state): State<AppState>,
    caller: Caller,
    PathOf(id): PathOf<Id>,
) -> Result<Json<Payment>, ApiError> {
    settler(&caller)?;
    transition(
        &state,
        &caller,
        id,
        PaymentStatus::Completed,
        PaymentStatus::Refunded,
    )
    .await
}

async fn transition(
    state: &AppState,
    caller: &Caller,
    id: Id,
    from: PaymentStatus,
    to: PaymentStatus,
) -> Result<Json<Payment>, ApiError> {
    let mut tx = state.data.begin_write(&caller.ctx).await?;
    // Settlers act on every payment of the tenant; others on their own.
    let write = if caller.can(SETTLE_PAYMENTS) {
        "TRUE".to_owned()
    } else {
        reach(&mut tx, caller, "p.").await?.1
    };
    let Some(mut pay) = fetch(&mut tx, &write, id).await? else {
        return Err(ApiError::not_found("payment"));
    };
    if pay.status != from {
        return Err(ApiError::conflict(format!(
            "the payment is {}, not {from}",
            pay.status
        )));
    }
    pay.status = to;
    if to == PaymentStatus::Refunded {
        pay.refunded_by = Some(caller.user.as_str().to_owned());
        pay.refunded_at = Some(Utc::now());
    }
    crate::on!(
        tx,
        sqlx::query(
            "UPDATE payments SET status = $2, refunded_by = $3, refunded_at = $4 WHERE id = $1"
        )
        .bind(pay.id)
        .bind(to.as_str())
        .bind(&pay.refunded_by)
        .bind(pay.refunded_at),
        execute
    )?;
    if to == PaymentStatus::Refunded {
        crate::on!(tx, sqlx::query("UPDATE commissions SET status = 'cancelled' WHERE payment_id = $1 AND status = 'pending'")
            .bind(pay.id), execute)?;
    }
    audit(state, &mut tx, caller, to.as_str(), "payments", pay.id).await?;
    tx.commit().await?;
    Ok(Json(pay))
}

/// Filters on the commission list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct CommissionFilter {
    /// Only this status.
    pub status: Option<CommissionStatus>,
}

const COMMISSION_COLUMNS: &str = "id, payment_id, policy_id, agent_id, kind, rate_bp, amount_minor, \
    currency, status, created_at";

/// Commissions: an agent's own, a manager's team's, everyone's for admins.
#[utoipa::path(get, path = "/commissions", params(PageQuery, CommissionFilter),
    responses((status = 200, body = Page<Commission>)), security(("bearer" = [])))]
pub async fn commissions(
    State(state): State<AppState>,
    caller: Caller,
    QueryOf(page): QueryOf<PageQuery>,
    QueryOf(filter): QueryOf<CommissionFilter>,
) -> Result<Json<Page<Commission>>, ApiError> {
    let (limit, offset) = page.bounds()?;
    let mut tx = state.data.begin(&caller.ctx).await?;
    let set = match caller.role {
        _ if caller.can(PAY_COMMISSIONS) => None,
        Role::Admin => None,
        Role::Manager | Role::Member => visible_agents(&mut tx, &caller).await?,
        _ => Some(Vec::new()),
    };
    let where_ = format!(
        "{} AND ($1 IS NULL OR status = $1)",
        in_set("agent_id", set.as_deref())
    );
    let status = filter.status.map(CommissionStatus::as_str);
    let items: Vec<Commission> = crate::on!(tx, sqlx::query_as(&format!(
        "SELECT {COMMISSION_COLUMNS} FROM commissions WHERE {where_} ORDER BY created_at DESC, id LIMIT $2 OFFSET $3"
    ))
    .bind(status)
    .bind(limit)
    .bind(offset), fetch_all)?;
    let total: i64 = crate::on!(
        tx,
        sqlx::query_scalar(&format!("SELECT count(*) FROM commissions WHERE {where_}"))
            .bind(status),
        fetch_one
    )?;
    tx.commit().await?;
    Ok(Json(Page {
        items,
        limit,
        offset,
        total,
    }))
}

/// Marks a pending commission paid out (tenant admins and finance).
#[utoipa::path(post, path = "/commissions/{id}/pay", params(("id" = Id, Path)),
    responses((status = 204), (status = 403), (status = 404), (status = 409)), security(("bearer" = [])))]
pub async fn pay_commission(
    State(state): State<AppState>,
    caller: Caller,
    PathOf(id): PathOf<Id>,
) -> Result<http::StatusCode, ApiError> {
    if !caller.can(PAY_COMMISSIONS) {
        return Err(ApiError::forbidden(
            "only tenant admins and finance members pay out commissions",
        ));
    }
    let mut tx = state.data.begin_write(&caller.ctx).await?;
    let status: Option<String> = crate::on!(
        tx,
        sqlx::query_scalar("SELECT status FROM commissions WHERE id = $1").bind(id),
        fetch_optional
    )?;
    match status.as_deref() {
        None => return Err(ApiError::not_found("commission")),
        Some("pending") => {}
        Some(other) => {
            return Err(ApiError::conflict(format!(
                "the commission is {other}, not pending"
            )));
        }
    }
    crate::on!(
        tx,
        sqlx::query("UPDATE commissions SET status = 'paid' WHERE id = $1").bind(id),
        execute
    )?;
    audit(&state, &mut tx, &caller, "pay", "commissions", id).await?;
    tx.commit().await?;
    Ok(http::StatusCode::NO_CONTENT)
}
