//! Data-subject rights for customers, shared by the API and the command
//! line: **forget** (erasure on request) and **export** (subject access).
//!
//! A customer's sensitive fields are encrypted with their own data-subject
//! key (`tenancy_core::crypto::subject`, kept in `subject-keys.sqlite3`
//! beside the KEKs). Forgetting a customer destroys that key — so the
//! ciphertexts never open again, also from a backup taken earlier — then,
//! in one tenant transaction, redacts the plain personal columns (names,
//! email, date of birth), clears the ciphertexts and the blind indexes (a
//! search by PAN or phone no longer finds them), deactivates the record and
//! audits it. Policies, payments and commissions keep their financial
//! records; what identified the person is gone from them because it only
//! ever lived in the customer record.

use chrono::{DateTime, SubsecRound as _, Utc};
use serde::Serialize;
use tenancy_core::TenantContext;
use tenancy_core::audit::{Action, AuditEvent};
use tenancy_core::crypto::subject::SubjectId;
use tenancy_sqlx::AuditQuery;

use crate::api::ApiError;
use crate::api::customers::{COLUMNS, Customer};
use crate::api::payments::Payment;
use crate::api::policies::Policy;
use crate::data::{Data, Tx};
use crate::id::Id;

/// The audit action of a forgotten customer.
pub const ERASE: &str = "erase";

/// What replaces a forgotten customer's names.
pub const REDACTED: &str = "[erased]";

/// The data subject of customer `id`: `customer:<id>`.
pub fn customer_subject(id: Id) -> Result<SubjectId, ApiError> {
    SubjectId::new(format!("customer:{id}")).map_err(|e| ApiError::internal(e.to_string()))
}

/// Who asks: a signed-in tenant admin (their context carries the actor), or
/// an operator at the command line.
#[derive(Debug, Clone, Copy)]
pub enum Requester<'a> {
    /// The caller of the API.
    Caller,
    /// `operator:<name>` at the command line.
    Operator(&'a str),
}

fn event(ctx: &TenantContext, by: Requester<'_>, action: &str, id: Id) -> AuditEvent {
    match by {
        Requester::Caller => AuditEvent::from_context(ctx, action, "customers"),
        Requester::Operator(name) => AuditEvent::system(
            ctx.tenant_id(),
            &format!("operator:{name}"),
            action,
            "customers",
        ),
    }
    .with_resource_id(id)
}

/// The result of forgetting a customer.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Forgotten {
    /// The customer.
    pub customer_id: Id,
    /// When the customer was (first) forgotten.
    pub erased_at: DateTime<Utc>,
    /// Whether a data-subject key was destroyed now (`false` when the
    /// customer never had sensitive fields, or was already forgotten).
    pub destroyed_key: bool,
    /// Whether the customer had already been forgotten.
    pub already_erased: bool,
    /// Policies kept, with their financial records.
    pub policies_kept: i64,
    /// Payments kept.
    pub payments_kept: i64,
}

/// Forgets customer `id` (active or deactivated). Forgetting twice is
/// harmless and reports `already_erased`.
pub async fn forget(
    data: &Data,
    ctx: &TenantContext,
    by: Requester<'_>,
    id: Id,
) -> Result<Forgotten, ApiError> {
    let started = std::time::Instant::now();
    let tenant = ctx.tenant_id();
    let subject = customer_subject(id)?;
    let mut tx = data.begin_write(ctx).await?;
    let found: Option<(Id, Option<DateTime<Utc>>)> = crate::on!(
        tx,
        sqlx::query_as("SELECT id, erased_at FROM customers WHERE id = $1").bind(id),
        fetch_optional
    )?;
    let Some((_, before)) = found else {
        return Err(ApiError::not_found("customer"));
    };
    // The key first: from here on no copy of the ciphertexts opens, even
    // if the redaction below fails (a retry completes it).
    let erasure = data
        .subjects()
        .erase(tenant, &subject)
        .await
        .map_err(|e| ApiError::unavailable(format!("the subject key store failed: {e}")))?;
    // Microseconds: what both databases store.
    let erased_at = before.unwrap_or(erasure.erased_at.trunc_subsecs(6));
    crate::on!(
        tx,
        sqlx::query(
            "UPDATE customers SET first_name = $2, last_name = $2, email = NULL, \
             date_of_birth = NULL, phone_enc = NULL, phone_index = NULL, pan_enc = NULL, \
             pan_index = NULL, aadhaar_enc = NULL, bank_account_enc = NULL, \
             medical_history_enc = NULL, shared = FALSE, active = FALSE, erased_at = $3 \
             WHERE id = $1",
        )
        .bind(id)
        .bind(REDACTED)
        .bind(erased_at),
        execute
    )?;
    let policies_kept: i64 = crate::on!(
        tx,
        sqlx::query_scalar("SELECT count(*) FROM policies WHERE customer_id = $1").bind(id),
        fetch_one
    )?;
    let payments_kept: i64 = crate::on!(
        tx,
        sqlx::query_scalar(
            "SELECT count(*) FROM payments y JOIN policies p ON p.id = y.policy_id \
             WHERE p.customer_id = $1"
        )
        .bind(id),
        fetch_one
    )?;
    data.audit()
        .append(
            &mut tx,
            event(ctx, by, ERASE, id).with_details(serde_json::json!({
                "destroyed_key": erasure.destroyed_key,
                "already_erased": before.is_some(),
                "policies_kept": policies_kept,
                "payments_kept": payments_kept,
            })),
        )
        .await?;
    tx.commit().await?;
    tracing::info!(
        tenant.id = %tenant,
        customer = %id,
        elapsed_ms = started.elapsed().as_millis(),
        "customer forgotten"
    );
    Ok(Forgotten {
        customer_id: id,
        erased_at,
        destroyed_key: erasure.destroyed_key,
        already_erased: before.is_some(),
        policies_kept,
        payments_kept,
    })
}

/// Everything stored about one customer, decrypted and machine-readable.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SubjectExport {
    /// `insurance-agent/subject-access/v1`.
    pub format: &'static str,
    /// The tenant.
    pub tenant_id: Id,
    /// The data subject (`customer:<id>`).
    pub subject: String,
    /// When this export was made.
    pub generated_at: DateTime<Utc>,
    /// Whether the record is active (deactivated records are exported too).
    pub active: bool,
    /// When the customer was forgotten (then only redacted values remain).
    pub erased_at: Option<DateTime<Utc>>,
    /// The customer record, sensitive fields decrypted.
    pub customer: Customer,
    /// Their policies.
    pub policies: Vec<Policy>,
    /// The payments of those policies.
    pub payments: Vec<Payment>,
    /// Who did what with the record, from the tenant's audit log (field
    /// names, never values).
    #[schema(value_type = Vec<Object>)]
    pub access_log: Vec<AuditEvent>,
}

/// The subject-access export of customer `id` (active or deactivated),
/// audited as an `export` of the record.
pub async fn export(
    data: &Data,
    ctx: &TenantContext,
    by: Requester<'_>,
    id: Id,
) -> Result<SubjectExport, ApiError> {
    let tenant = ctx.tenant_id();
    let mut tx = data.begin_write(ctx).await?;
    type Extra = (bool, Option<DateTime<Utc>>);
    let found: Option<Customer> = crate::on!(
        tx,
        sqlx::query_as(&format!("SELECT {COLUMNS} FROM customers WHERE id = $1")).bind(id),
        fetch_optional
    )?;
    let Some(mut customer) = found else {
        return Err(ApiError::not_found("customer"));
    };
    let (active, erased_at): Extra = crate::on!(
        tx,
        sqlx::query_as("SELECT active, erased_at FROM customers WHERE id = $1").bind(id),
        fetch_one
    )?;
    customer.sensitive = crate::sensitive::open(data, tenant, id, &customer.sealed).await?;
    let policies: Vec<Policy> = crate::on!(
        tx,
        sqlx::query_as(&format!(
            "SELECT {} FROM policies p WHERE p.customer_id = $1 ORDER BY p.created_at, p.id",
            crate::api::policies::COLUMNS
        ))
        .bind(id),
        fetch_all
    )?;
    let payments: Vec<Payment> = crate::on!(
        tx,
        sqlx::query_as(&format!(
            "SELECT {} FROM payments y JOIN policies p ON p.id = y.policy_id \
             WHERE p.customer_id = $1 ORDER BY y.due_date, y.id",
            crate::api::payments::COLUMNS
        ))
        .bind(id),
        fetch_all
    )?;
    let access_log = access_log(data, &mut tx, id).await?;
    let record_count = 1 + policies.len() as u64 + payments.len() as u64;
    data.audit()
        .append(
            &mut tx,
            event(ctx, by, Action::EXPORT, id).with_record_count(record_count),
        )
        .await?;
    tx.commit().await?;
    Ok(SubjectExport {
        format: "insurance-agent/subject-access/v1",
        tenant_id: tenant.into(),
        subject: customer_subject(id)?.to_string(),
        generated_at: Utc::now(),
        active,
        erased_at,
        customer,
        policies,
        payments,
        access_log,
    })
}

/// The audit events about customer `id`, oldest first.
async fn access_log(data: &Data, tx: &mut Tx, id: Id) -> Result<Vec<AuditEvent>, ApiError> {
    let wanted = id.to_string();
    let mut out = Vec::new();
    let mut query = AuditQuery::new().resource_type("customers").limit(1000);
    loop {
        let page = data.audit().query(tx, &query).await?;
        out.extend(
            page.events
                .into_iter()
                .map(|(_, e)| e)
                .filter(|e| e.resource_id.as_deref() == Some(wanted.as_str())),
        );
        match page.next {
            Some(seq) => query = query.before(seq),
            None => break,
        }
    }
    out.reverse();
    Ok(out)
}
