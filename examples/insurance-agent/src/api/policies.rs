//! Policies: quoted, issued, then in force until they lapse, mature or are
//! surrendered. A policy belongs to its customer's agent.

use crate::data::Tx;
use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Months, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use tenancy_core::audit::{Action, AuditEvent};

use super::agents::reach;
use super::{ApiError, AppState, Body, Caller, Page, PageQuery, PathOf, QueryOf};
use crate::domain::{Currency, PolicyStatus, PremiumFrequency};
use crate::id::Id;

/// A rider: extra cover on a policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Rider {
    /// What it covers.
    pub name: String,
    /// Its sum assured, minor units.
    pub sum_assured_minor: i64,
}

/// A policy.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Policy {
    /// Id.
    pub id: Id,
    /// Number, unique in the tenant.
    pub policy_number: String,
    /// Product name.
    pub product: String,
    /// The insured customer.
    pub customer_id: Id,
    /// The agent (the customer's).
    pub agent_id: Id,
    /// Sum assured, minor units.
    pub sum_assured_minor: i64,
    /// Premium per period, minor units.
    pub premium_minor: i64,
    /// Currency of every amount.
    #[sqlx(try_from = "String")]
    pub currency: Currency,
    /// How often the premium is due.
    #[sqlx(try_from = "String")]
    pub premium_frequency: PremiumFrequency,
    /// When it was issued.
    pub issue_date: Option<NaiveDate>,
    /// When cover starts.
    pub commencement_date: Option<NaiveDate>,
    /// When it matures.
    pub maturity_date: Option<NaiveDate>,
    /// When the next premium is due.
    pub next_due_date: Option<NaiveDate>,
    /// Status.
    #[sqlx(try_from = "String")]
    pub status: PolicyStatus,
    /// Riders.
    #[sqlx(json)]
    pub riders: Vec<Rider>,
    /// Shared tenant-wide (read-only to others).
    pub shared: bool,
    /// Created.
    pub created_at: DateTime<Utc>,
}

pub(crate) const COLUMNS: &str = "p.id, p.policy_number, p.product, p.customer_id, p.agent_id, \
    p.sum_assured_minor, p.premium_minor, p.currency, p.premium_frequency, p.issue_date, \
    p.commencement_date, p.maturity_date, p.next_due_date, p.status, p.riders, p.shared, p.created_at";

/// A quote.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct NewPolicy {
    /// Number, unique in the tenant.
    pub policy_number: String,
    /// Product name.
    pub product: String,
    /// The customer (within the caller's reach).
    pub customer_id: Id,
    /// Sum assured, minor units (> 0).
    pub sum_assured_minor: i64,
    /// Premium per period, minor units (> 0).
    pub premium_minor: i64,
    /// Currency (default INR).
    pub currency: Option<Currency>,
    /// Premium frequency.
    pub premium_frequency: PremiumFrequency,
    /// Term in years (sets the maturity date when issued; 1–100).
    pub term_years: u32,
    /// Riders.
    #[serde(default)]
    pub riders: Vec<Rider>,
    /// Shared tenant-wide.
    #[serde(default)]
    pub shared: bool,
}

/// Issuing a quoted policy.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
pub struct IssueRequest {
    /// When cover starts (default today); the first premium is due then.
    pub commencement_date: Option<NaiveDate>,
}

/// A status change.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct StatusChange {
    /// The new status (lapsed, matured, surrendered; or active from lapsed).
    pub status: PolicyStatus,
}

/// Filters on the policy list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct PolicyFilter {
    /// Only this status.
    pub status: Option<PolicyStatus>,
    /// Only this customer's.
    pub customer_id: Option<Id>,
}

pub(crate) async fn fetch(tx: &mut Tx, filter: &str, id: Id) -> Result<Option<Policy>, ApiError> {
    Ok(crate::on!(
        tx,
        sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM policies p WHERE p.id = $1 AND p.active = TRUE AND {filter}"
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
    id: Id,
) -> Result<(), ApiError> {
    state
        .data
        .audit()
        .append(
            tx,
            AuditEvent::from_context(&caller.ctx, action, "policies").with_resource_id(id),
        )
        .await?;
    Ok(())
}

/// Lists the policies the caller may see.
#[utoipa::path(get, path = "/policies", params(PageQuery, PolicyFilter),
    responses((status = 200, body = Page<Policy>)), security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    QueryOf(page): QueryOf<PageQuery>,
    QueryOf(filter): QueryOf<PolicyFilter>,
) -> Result<Json<Page<Policy>>, ApiError> {
    let (limit, offset) = page.bounds()?;
    let mut tx = state.data.begin(&caller.ctx).await?;
    let (read, _) = reach(&mut tx, &caller, "p.").await?;
    let where_ = format!(
        "p.active = TRUE AND {read} AND ($1 IS NULL OR p.status = $1) AND ($2 IS NULL OR p.customer_id = $2)"
    );
    let status = filter.status.map(PolicyStatus::as_str);
    let items: Vec<Policy> = crate::on!(tx, sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM policies p WHERE {where_} ORDER BY p.policy_number LIMIT $3 OFFSET $4"
    ))
    .bind(status)
    .bind(filter.customer_id)
    .bind(limit)
    .bind(offset), fetch_all)?;
    let total: i64 = crate::on!(
        tx,
        sqlx::query_scalar(&format!("SELECT count(*) FROM policies p WHERE {where_}"))
            .bind(status)
            .bind(filter.customer_id),
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

/// One policy.
#[utoipa::path(get, path = "/policies/{id}", params(("id" = Id, Path)),
    responses((status = 200, body = Policy), (status = 404)), security(("bearer" = [])))]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    PathOf(id): PathOf<Id>,
) -> Result<Json<Policy>, ApiError> {
    let mut tx = state.data.begin(&caller.ctx).await?;
    let (read, _) = reach(&mut tx, &caller, "p.").await?;
    let p = fetch(&mut tx, &read, id).await?;
    tx.commit().await?;
    p.map(Json).ok_or_else(|| ApiError::not_found("policy"))
}

/// Quotes a policy for a customer the caller owns (the plan's `policies`
/// limit applies, and its monthly `quotes` allowance).
#[utoipa::path(post, path = "/policies", request_body = NewPolicy,
    responses((status = 201, body = Policy), (status = 403), (status = 404), (status = 409), (status = 422)),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Body(new): Body<NewPolicy>,
) -> Result<(http::StatusCode, Json<Policy>), ApiError> {
    use crate::validate;
    let policy_number = validate::text("policy_number", &new.policy_number, validate::SHORT)?;
    let product = validate::text("product", &new.product, validate::NAME)?;
    validate::money("sum_assured_minor", new.sum_assured_minor)?;
    validate::money("premium_minor", new.premium_minor)?;
    if !(1..=100).contains(&new.term_years) {
        return Err(ApiError::invalid_field(
            "term_years",
            "term_years must be between 1 and 100",
        ));
    }
    if new.riders.len() > validate::LIST {
        return Err(ApiError::invalid_field(
            "riders",
            format!("riders must have at most {} items", validate::LIST),
        ));
    }
    let mut riders = Vec::with_capacity(new.riders.len());
    for r in &new.riders {
        riders.push(Rider {
            name: validate::text("riders.name", &r.name, validate::NAME)?,
            sum_assured_minor: validate::money("riders.sum_assured_minor", r.sum_assured_minor)?,
        });
    }
    let mut tx = state.data.begin_write(&caller.ctx).await?;
    let (_, write) = reach(&mut tx, &caller, "").await?;
    let agent: Option<Id> = crate::on!(
        tx,
        sqlx::query_scalar(&format!(
            "SELECT agent_id FROM customers WHERE id = $1 AND active = TRUE AND {write}"
        ))
        .bind(new.customer_id),
        fetch_optional
    )?;
    let Some(agent_id) = agent else {
        return Err(ApiError::not_found("customer"));
    };
    super::check_stock(&state, &caller, &mut tx, "policies").await?;
    super::record_monthly(&state, &caller, "quotes").await?;
    let p = Policy {
        id: Id::new(),
        policy_number,
        product,
        customer_id: new.customer_id,
        agent_id,
        sum_assured_minor: new.sum_assured_minor,
        premium_minor: new.premium_minor,
        currency: new.currency.unwrap_or(Currency::Inr),
        premium_frequency: new.premium_frequency,
        issue_date: None,
        commencement_date: None,
        // The term is kept as the maturity date relative to the quote; it
        // is set for real when the policy is issued.
        maturity_date: Utc::now()
            .date_naive()
            .checked_add_months(Months::new(new.term_years * 12)),
        next_due_date: None,
        status: PolicyStatus::Quoted,
        riders,
        shared: new.shared,
        created_at: Utc::now(),
    };
    insert(&mut tx, caller.ctx.tenant_id().into(), &p).await?;
    audit(&state, &mut tx, &caller, Action::CREATE, p.id).await?;
    tx.commit().await?;
    Ok((http::StatusCode::CREATED, Json(p)))
}

/// Inserts `p` (the API and the seeder).
pub async fn insert(tx: &mut Tx, tenant: Id, p: &Policy) -> Result<(), ApiError> {
    // JSON: jsonb on PostgreSQL, text on SQLite.
    let riders = sqlx::types::Json(&p.riders);
    crate::on!(tx, sqlx::query(
        "INSERT INTO policies (tenant_id, id, policy_number, product, customer_id, agent_id, \
         sum_assured_minor, premium_minor, currency, premium_frequency, issue_date, commencement_date, \
         maturity_date, next_due_date, status, riders, shared, active, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, TRUE, $18)",
    )
    .bind(tenant)
    .bind(p.id)
    .bind(&p.policy_number)
    .bind(&p.product)
    .bind(p.customer_id)
    .bind(p.agent_id)
    .bind(p.sum_assured_minor)
    .bind(p.premium_minor)
    .bind(p.currency.as_str())
    .bind(p.premium_frequency.as_str())
    .bind(p.issue_date)
    .bind(p.commencement_date)
    .bind(p.maturity_date)
    .bind(p.next_due_date)
    .bind(p.status.as_str())
    .bind(riders)
    .bind(p.shared)
    .bind(p.created_at), execute)?;
    Ok(())
}

/// Issues a quoted policy: it becomes active, its dates are set and its
/// first premium falls due on the commencement date.
#[utoipa::path(post, path = "/policies/{id}/issue", params(("id" = Id, Path)), request_body = IssueRequest,
    responses((status = 200, body = Policy), (status = 404), (status = 409)), security(("bearer" = [])))]
pub async fn issue(
    State(state): State<AppState>,
    caller: Caller,
    PathOf(id): PathOf<Id>,
    Body(req): Body<IssueRequest>,
) -> Result<Json<Policy>, ApiError> {
    let mut tx = state.data.begin_write(&caller.ctx).await?;
    let (_, write) = reach(&mut tx, &caller, "p.").await?;
    let Some(mut p) = fetch(&mut tx, &write, id).await? else {
        return Err(ApiError::not_found("policy"));
    };
    if p.status != PolicyStatus::Quoted {
        return Err(ApiError::conflict(format!(
            "the policy is {}, not quoted",
            p.status
        )));
    }
    let today = Utc::now().date_naive();
    let start = req.commencement_date.unwrap_or(today);
    let term_months = p
        .maturity_date
        .map(|m| months_between(p.created_at.date_naive(), m))
        .unwrap_or(12);
    p.issue_date = Some(today);
    p.commencement_date = Some(start);
    p.maturity_date = start.checked_add_months(Months::new(term_months));
    p.next_due_date = Some(start);
    p.status = PolicyStatus::Active;
    crate::on!(
        tx,
        sqlx::query(
            "UPDATE policies SET issue_date = $2, commencement_date = $3, maturity_date = $4, \
         next_due_date = $5, status = $6 WHERE id = $1",
        )
        .bind(p.id)
        .bind(p.issue_date)
        .bind(p.commencement_date)
        .bind(p.maturity_date)
        .bind(p.next_due_date)
        .bind(p.status.as_str()),
        execute
    )?;
    super::payments::schedule(&mut tx, caller.ctx.tenant_id().into(), &p, start).await?;
    audit(&state, &mut tx, &caller, "issue", p.id).await?;
    tx.commit().await?;
    Ok(Json(p))
}

fn months_between(from: NaiveDate, to: NaiveDate) -> u32 {
    use chrono::Datelike;
    let m = (to.year() - from.year()) * 12
        + (i32::try_from(to.month()).unwrap_or(0) - i32::try_from(from.month()).unwrap_or(0));
    u32::try_from(m.max(1)).unwrap_or(12)
}

/// Changes an active or lapsed policy's status.
#[utoipa::path(post, path = "/policies/{id}/status", params(("id" = Id, Path)), request_body = StatusChange,
    responses((status = 200, body = Policy), (status = 404), (status = 409)), security(("bearer" = [])))]
pub async fn change_status(
    State(state): State<AppState>,
    caller: Caller,
    PathOf(id): PathOf<Id>,
    Body(req): Body<StatusChange>,
) -> Result<Json<Policy>, ApiError> {
    let mut tx = state.data.begin_write(&caller.ctx).await?;
    let (_, write) = reach(&mut tx, &caller, "p.").await?;
    let Some(mut p) = fetch(&mut tx, &write, id).await? else {
        return Err(ApiError::not_found("policy"));
    };
    if !p.status.may_become(req.status) {
        return Err(ApiError::conflict(format!(
            "a {} policy cannot become {}",
            p.status, req.status
        )));
    }
    p.status = req.status;
    crate::on!(
        tx,
        sqlx::query("UPDATE policies SET status = $2 WHERE id = $1")
            .bind(p.id)
            .bind(p.status.as_str()),
        execute
    )?;
    audit(&state, &mut tx, &caller, Action::UPDATE, p.id).await?;
    tx.commit().await?;
    Ok(Json(p))
}
