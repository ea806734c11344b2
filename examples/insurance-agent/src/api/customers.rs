//! Customers: owned by an agent; visible to that agent, their managers and
//! tenant admins; optionally shared tenant-wide (read-only); deactivated,
//! never deleted.

use crate::data::Tx;
use axum::Json;
use axum::extract::State;
use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use tenancy_core::Role;

use super::agents::{in_set, visible_agents};
use super::{ApiError, AppState, Body, Caller, Page, PageQuery, PathOf, QueryOf};
use crate::domain::{CustomerType, KycStatus, LifecycleStage, RiskProfile};
use crate::id::Id;
use crate::sensitive::{
    SealedFields, SensitiveFields, blind_index, masked, normalize_pan, normalize_phone, open, seal,
};
use tenancy_core::audit::{Action, AuditEvent};

/// A customer.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Customer {
    /// Id.
    pub id: Id,
    /// The agent who owns the relationship.
    pub agent_id: Id,
    /// First name.
    pub first_name: String,
    /// Last name.
    pub last_name: String,
    /// Date of birth.
    pub date_of_birth: Option<NaiveDate>,
    /// Email.
    pub email: Option<String>,
    /// Individual, family or business.
    #[sqlx(try_from = "String")]
    pub customer_type: CustomerType,
    /// Risk profile.
    #[sqlx(try_from = "String")]
    pub risk_profile: RiskProfile,
    /// Lifecycle stage.
    #[sqlx(try_from = "String")]
    pub lifecycle_stage: LifecycleStage,
    /// Engagement score, 0–100.
    pub engagement_score: i64,
    /// KYC status.
    #[sqlx(try_from = "String")]
    pub kyc_status: KycStatus,
    /// Shared tenant-wide (read-only for those who do not own it).
    pub shared: bool,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Sensitive fields: decrypted for those who own the record (and the
    /// read is audited), masked for everyone else and in lists.
    #[sqlx(skip)]
    pub sensitive: SensitiveFields,
    /// The stored ciphertexts and blind indexes (never serialised).
    #[sqlx(flatten)]
    #[serde(skip)]
    #[schema(ignore)]
    pub sealed: SealedFields,
}

pub(crate) const COLUMNS: &str = "id, agent_id, first_name, last_name, date_of_birth, email, customer_type, \
    risk_profile, lifecycle_stage, engagement_score, kyc_status, shared, created_at, \
    phone_enc, phone_index, pan_enc, pan_index, aadhaar_enc, bank_account_enc, medical_history_enc";

/// A new customer.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct NewCustomer {
    /// The owning agent (default: the caller's own agent record).
    pub agent_id: Option<Id>,
    /// First name.
    pub first_name: String,
    /// Last name.
    pub last_name: String,
    /// Date of birth.
    pub date_of_birth: Option<NaiveDate>,
    /// Email.
    pub email: Option<String>,
    /// Individual, family or business.
    pub customer_type: CustomerType,
    /// Risk profile (default medium).
    pub risk_profile: Option<RiskProfile>,
    /// Lifecycle stage (default prospect).
    pub lifecycle_stage: Option<LifecycleStage>,
    /// Shared tenant-wide.
    #[serde(default)]
    pub shared: bool,
    /// Sensitive fields (encrypted before they are stored).
    #[serde(default)]
    pub sensitive: SensitiveFields,
}

/// Changes to a customer (absent fields are left as they are).
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CustomerPatch {
    /// Email.
    pub email: Option<String>,
    /// Risk profile.
    pub risk_profile: Option<RiskProfile>,
    /// Lifecycle stage.
    pub lifecycle_stage: Option<LifecycleStage>,
    /// Engagement score, 0–100.
    pub engagement_score: Option<i64>,
    /// KYC status.
    pub kyc_status: Option<KycStatus>,
    /// Shared tenant-wide.
    pub shared: Option<bool>,
    /// Reassign to another agent (within the caller's reach).
    pub agent_id: Option<Id>,
    /// Sensitive fields to replace (absent ones are kept).
    pub sensitive: Option<SensitiveFields>,
}

/// Filters on the customer list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct CustomerFilter {
    /// Only this lifecycle stage.
    pub stage: Option<LifecycleStage>,
    /// Only the customer with this PAN (exact match through a blind index).
    pub pan: Option<String>,
    /// Only customers with this phone number (exact match through a blind index).
    pub phone: Option<String>,
}

async fn reach(tx: &mut Tx, caller: &Caller) -> Result<(String, String), ApiError> {
    super::agents::reach(tx, caller, "").await
}

/// Lists the customers the caller may see.
#[utoipa::path(get, path = "/customers", params(PageQuery, CustomerFilter),
    responses((status = 200, body = Page<Customer>)), security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    QueryOf(page): QueryOf<PageQuery>,
    QueryOf(filter): QueryOf<CustomerFilter>,
) -> Result<Json<Page<Customer>>, ApiError> {
    let (limit, offset) = page.bounds()?;
    let tenant = caller.ctx.tenant_id();
    let pan = match &filter.pan {
        Some(p) => {
            Some(blind_index(&state.data, tenant, "customers.pan", &normalize_pan(p)?).await?)
        }
        None => None,
    };
    let phone = match &filter.phone {
        Some(p) => {
            Some(blind_index(&state.data, tenant, "customers.phone", &normalize_phone(p)?).await?)
        }
        None => None,
    };
    let mut tx = state.data.begin(&caller.ctx).await?;
    let (read, _) = reach(&mut tx, &caller).await?;
    let stage = filter.stage.map(LifecycleStage::as_str);
    let where_ = format!(
        "active = TRUE AND {read} AND ($1 IS NULL OR lifecycle_stage = $1) \
         AND ($4 IS NULL OR pan_index = $4) AND ($5 IS NULL OR phone_index = $5)"
    );
    let mut items: Vec<Customer> = crate::on!(
        tx,
        sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM customers WHERE {where_} ORDER BY last_name, first_name, id \
         LIMIT $2 OFFSET $3"
        ))
        .bind(stage)
        .bind(limit)
        .bind(offset)
        .bind(&pan)
        .bind(&phone),
        fetch_all
    )?;
    let total: i64 =
        crate::on!(tx, sqlx::query_scalar(&format!(
        "SELECT count(*) FROM customers WHERE {where_} AND $2 IS NOT NULL AND $3 IS NOT NULL"
    ))
    .bind(stage)
    .bind(limit)
    .bind(offset)
    .bind(&pan)
    .bind(&phone), fetch_one)?;
    tx.commit().await?;
    for c in &mut items {
        c.sensitive = masked(&c.sealed);
    }
    Ok(Json(Page {
        items,
        limit,
        offset,
        total,
    }))
}

async fn fetch(tx: &mut Tx, filter: &str, id: Id) -> Result<Option<Customer>, ApiError> {
    Ok(crate::on!(
        tx,
        sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM customers WHERE id = $1 AND active = TRUE AND {filter}"
        ))
        .bind(id),
        fetch_optional
    )?)
}

/// One customer (404 when not visible to the caller, or not in this tenant).
#[utoipa::path(get, path = "/customers/{id}", params(("id" = Id, Path)),
    responses((status = 200, body = Customer), (status = 404)), security(("bearer" = [])))]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    PathOf(id): PathOf<Id>,
) -> Result<Json<Customer>, ApiError> {
    // A write transaction: reading an owner's view appends an audit event.
    let mut tx = state.data.begin_write(&caller.ctx).await?;
    let (read, write) = reach(&mut tx, &caller).await?;
    let mut found = fetch(&mut tx, &write, id).await?;
    let owner = found.is_some();
    if !owner {
        found = fetch(&mut tx, &read, id).await?;
    }
    let Some(mut c) = found else {
        return Err(ApiError::not_found("customer"));
    };
    if owner && c.sealed != SealedFields::default() {
        c.sensitive = open(&state.data, caller.ctx.tenant_id(), c.id, &c.sealed).await?;
        let fields: Vec<&str> = [
            ("phone", &c.sensitive.phone),
            ("pan", &c.sensitive.pan),
            ("aadhaar", &c.sensitive.aadhaar),
            ("bank_account", &c.sensitive.bank_account),
            ("medical_history", &c.sensitive.medical_history),
        ]
        .iter()
        .filter(|(_, v)| v.is_some())
        .map(|(n, _)| *n)
        .collect();
        audit(&state, &mut tx, &caller, Action::READ, c.id, &fields).await?;
    } else {
        c.sensitive = masked(&c.sealed);
    }
    tx.commit().await?;
    Ok(Json(c))
}

/// Appends an audit event for a customer in the request's transaction.
async fn audit(
    state: &AppState,
    tx: &mut Tx,
    caller: &Caller,
    action: &str,
    id: Id,
    fields: &[&str],
) -> Result<(), ApiError> {
    state
        .data
        .audit()
        .append(
            tx,
            AuditEvent::from_context(&caller.ctx, action, "customers")
                .with_resource_id(id)
                .with_fields(fields.iter().copied()),
        )
        .await?;
    Ok(())
}

/// The agent a new or reassigned customer may belong to: within the
/// caller's write reach.
async fn owner_for(tx: &mut Tx, caller: &Caller, wanted: Option<Id>) -> Result<Id, ApiError> {
    let mine = super::agents::agent_of(tx, &caller.user).await?;
    let Some(agent) = wanted.or(mine) else {
        return Err(ApiError::invalid(
            "agent_id is required (the caller is not an agent)",
        ));
    };
    let team = match caller.role {
        Role::Admin => None,
        Role::Manager | Role::Member => visible_agents(tx, caller).await?,
        _ => return Err(ApiError::forbidden("viewers cannot change customers")),
    };
    let allowed = in_set("id", team.as_deref());
    let exists: Option<Id> = crate::on!(
        tx,
        sqlx::query_scalar(&format!(
            "SELECT id FROM agents WHERE id = $1 AND active = TRUE AND {allowed}"
        ))
        .bind(agent),
        fetch_optional
    )?;
    exists.ok_or_else(|| ApiError::not_found("agent"))
}

fn check_email(email: Option<&String>) -> Result<Option<String>, ApiError> {
    email
        .map(|e| crate::validate::email("email", e))
        .transpose()
}

/// Adds a customer (the plan's `customers` limit applies).
#[utoipa::path(post, path = "/customers", request_body = NewCustomer,
    responses((status = 201, body = Customer), (status = 403), (status = 422)), security(("bearer" = [])))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Body(new): Body<NewCustomer>,
) -> Result<(http::StatusCode, Json<Customer>), ApiError> {
    let first_name = crate::validate::text("first_name", &new.first_name, crate::validate::NAME)?;
    let last_name = crate::validate::text("last_name", &new.last_name, crate::validate::NAME)?;
    let email = check_email(new.email.as_ref())?;
    // Encrypted before the transaction opens: no key lookup while it holds
    // a connection.
    let id = Id::new();
    let sealed = seal(&state.data, caller.ctx.tenant_id(), id, &new.sensitive).await?;
    let mut tx = state.data.begin_write(&caller.ctx).await?;
    let agent = owner_for(&mut tx, &caller, new.agent_id).await?;
    super::check_stock(&state, &caller, &mut tx, "customers").await?;
    let mut c = Customer {
        id,
        agent_id: agent,
        first_name,
        last_name,
        date_of_birth: new.date_of_birth,
        email,
        customer_type: new.customer_type,
        risk_profile: new.risk_profile.unwrap_or(RiskProfile::Medium),
        lifecycle_stage: new.lifecycle_stage.unwrap_or(LifecycleStage::Prospect),
        engagement_score: 0,
        kyc_status: KycStatus::Pending,
        shared: new.shared,
        created_at: Utc::now(),
        sensitive: SensitiveFields::default(),
        sealed,
    };
    insert(&mut tx, caller.ctx.tenant_id().into(), &c).await?;
    audit(&state, &mut tx, &caller, Action::CREATE, c.id, &[]).await?;
    tx.commit().await?;
    c.sensitive = masked(&c.sealed);
    Ok((http::StatusCode::CREATED, Json(c)))
}

/// Inserts `c` (used by the API and the seeder).
pub async fn insert(tx: &mut Tx, tenant: Id, c: &Customer) -> Result<(), ApiError> {
    crate::on!(tx, sqlx::query(
        "INSERT INTO customers (tenant_id, id, agent_id, first_name, last_name, date_of_birth, email, \
         customer_type, risk_profile, lifecycle_stage, engagement_score, kyc_status, shared, active, created_at, \
         phone_enc, phone_index, pan_enc, pan_index, aadhaar_enc, bank_account_enc, medical_history_enc) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, TRUE, $14, $15, $16, $17, $18, $19, $20, $21)",
    )
    .bind(tenant)
    .bind(c.id)
    .bind(c.agent_id)
    .bind(&c.first_name)
    .bind(&c.last_name)
    .bind(c.date_of_birth)
    .bind(&c.email)
    .bind(c.customer_type.as_str())
    .bind(c.risk_profile.as_str())
    .bind(c.lifecycle_stage.as_str())
    .bind(c.engagement_score)
    .bind(c.kyc_status.as_str())
    .bind(c.shared)
    .bind(c.created_at)
    .bind(&c.sealed.phone_enc)
    .bind(&c.sealed.phone_index)
    .bind(&c.sealed.pan_enc)
    .bind(&c.sealed.pan_index)
    .bind(&c.sealed.aadhaar_enc)
    .bind(&c.sealed.bank_account_enc)
    .bind(&c.sealed.medical_history_enc), execute)?;
    Ok(())
}

/// Changes a customer the caller owns (directly, through their team, or as admin).
#[utoipa::path(patch, path = "/customers/{id}", params(("id" = Id, Path)), request_body = CustomerPatch,
    responses((status = 200, body = Customer), (status = 404), (status = 422)), security(("bearer" = [])))]
pub async fn update(
    State(state): State<AppState>,
    caller: Caller,
    PathOf(id): PathOf<Id>,
    Body(patch): Body<CustomerPatch>,
) -> Result<Json<Customer>, ApiError> {
    let email = check_email(patch.email.as_ref())?;
    if patch
        .engagement_score
        .is_some_and(|s| !(0..=100).contains(&s))
    {
        return Err(ApiError::invalid(
            "engagement_score must be between 0 and 100",
        ));
    }
    let mut tx = state.data.begin_write(&caller.ctx).await?;
    let (_, write) = reach(&mut tx, &caller).await?;
    let Some(mut c) = fetch(&mut tx, &write, id).await? else {
        return Err(ApiError::not_found("customer"));
    };
    if let Some(a) = patch.agent_id {
        c.agent_id = owner_for(&mut tx, &caller, Some(a)).await?;
    }
    if email.is_some() {
        c.email = email;
    }
    c.risk_profile = patch.risk_profile.unwrap_or(c.risk_profile);
    c.lifecycle_stage = patch.lifecycle_stage.unwrap_or(c.lifecycle_stage);
    c.engagement_score = patch.engagement_score.unwrap_or(c.engagement_score);
    c.kyc_status = patch.kyc_status.unwrap_or(c.kyc_status);
    c.shared = patch.shared.unwrap_or(c.shared);
    let mut fields: Vec<&str> = Vec::new();
    if let Some(new) = &patch.sensitive {
        let s = seal(&state.data, caller.ctx.tenant_id(), c.id, new).await?;
        let mut take = |name: &'static str, set: bool| {
            if set {
                fields.push(name);
            }
            set
        };
        if take("phone", s.phone_enc.is_some()) {
            c.sealed.phone_enc = s.phone_enc;
            c.sealed.phone_index = s.phone_index;
        }
        if take("pan", s.pan_enc.is_some()) {
            c.sealed.pan_enc = s.pan_enc;
            c.sealed.pan_index = s.pan_index;
        }
        if take("aadhaar", s.aadhaar_enc.is_some()) {
            c.sealed.aadhaar_enc = s.aadhaar_enc;
        }
        if take("bank_account", s.bank_account_enc.is_some()) {
            c.sealed.bank_account_enc = s.bank_account_enc;
        }
        if take("medical_history", s.medical_history_enc.is_some()) {
            c.sealed.medical_history_enc = s.medical_history_enc;
        }
    }
    // Re-checked as the row is written: a customer forgotten or deactivated
    // since it was read is not written back (no erased field returns).
    let done = crate::on!(tx, sqlx::query(
        "UPDATE customers SET agent_id = $2, email = $3, risk_profile = $4, lifecycle_stage = $5, \
         engagement_score = $6, kyc_status = $7, shared = $8, phone_enc = $9, phone_index = $10, \
         pan_enc = $11, pan_index = $12, aadhaar_enc = $13, bank_account_enc = $14, \
         medical_history_enc = $15 WHERE id = $1 AND active = TRUE AND erased_at IS NULL",
    )
    .bind(c.id)
    .bind(c.agent_id)
    .bind(&c.email)
    .bind(c.risk_profile.as_str())
    .bind(c.lifecycle_stage.as_str())
    .bind(c.engagement_score)
    .bind(c.kyc_status.as_str())
    .bind(c.shared)
    .bind(&c.sealed.phone_enc)
    .bind(&c.sealed.phone_index)
    .bind(&c.sealed.pan_enc)
    .bind(&c.sealed.pan_index)
    .bind(&c.sealed.aadhaar_enc)
    .bind(&c.sealed.bank_account_enc)
    .bind(&c.sealed.medical_history_enc), execute)?;
    if done == 0 {
        return Err(ApiError::not_found("customer"));
    }
    audit(&state, &mut tx, &caller, Action::UPDATE, c.id, &fields).await?;
    tx.commit().await?;
    c.sensitive = masked(&c.sealed);
    Ok(Json(c))
}

/// Deactivates a customer (soft delete: the record stays for the audit trail).
#[utoipa::path(delete, path = "/customers/{id}", params(("id" = Id, Path)),
    responses((status = 204), (status = 404)), security(("bearer" = [])))]
pub async fn deactivate(
    State(state): State<AppState>,
    caller: Caller,
    PathOf(id): PathOf<Id>,
) -> Result<http::StatusCode, ApiError> {
    let mut tx = state.data.begin_write(&caller.ctx).await?;
    let (_, write) = reach(&mut tx, &caller).await?;
    let done = crate::on!(
        tx,
        sqlx::query(&format!(
            "UPDATE customers SET active = FALSE WHERE id = $1 AND active = TRUE AND {write}"
        ))
        .bind(id),
        execute
    )?;
    if done == 0 {
        return Err(ApiError::not_found("customer"));
    }
    audit(&state, &mut tx, &caller, Action::DELETE, id, &[]).await?;
    tx.commit().await?;
    Ok(http::StatusCode::NO_CONTENT)
}

/// Forgets a customer on their request (tenant admins only): their
/// data-subject key is destroyed, so their encrypted fields never decrypt
/// again — also from earlier backups; names, email and date of birth are
/// redacted, the blind indexes cleared, the record deactivated. Policies
/// and payments keep their financial records. Audited (`erase`); repeating
/// it is harmless.
#[utoipa::path(post, path = "/customers/{id}/forget", params(("id" = Id, Path)),
    responses((status = 200, body = crate::subject::Forgotten), (status = 403), (status = 404)),
    security(("bearer" = [])))]
pub async fn forget(
    State(state): State<AppState>,
    caller: Caller,
    PathOf(id): PathOf<Id>,
) -> Result<Json<crate::subject::Forgotten>, ApiError> {
    if caller.role != Role::Admin {
        return Err(ApiError::forbidden(
            "only tenant admins may forget a customer",
        ));
    }
    let done = crate::subject::forget(
        &state.data,
        &caller.ctx,
        crate::subject::Requester::Caller,
        id,
    )
    .await?;
    Ok(Json(done))
}

/// Everything stored about one customer, decrypted, as JSON (a
/// subject-access request; tenant admins only). Deactivated and forgotten
/// customers are exported too. Audited (`export`).
#[utoipa::path(get, path = "/customers/{id}/export", params(("id" = Id, Path)),
    responses((status = 200, body = crate::subject::SubjectExport), (status = 403), (status = 404)),
    security(("bearer" = [])))]
pub async fn export(
    State(state): State<AppState>,
    caller: Caller,
    PathOf(id): PathOf<Id>,
) -> Result<Json<crate::subject::SubjectExport>, ApiError> {
    if caller.role != Role::Admin {
        return Err(ApiError::forbidden(
            "only tenant admins may export a customer's data",
        ));
    }
    let out = crate::subject::export(
        &state.data,
        &caller.ctx,
        crate::subject::Requester::Caller,
        id,
    )
    .await?;
    Ok(Json(out))
}
