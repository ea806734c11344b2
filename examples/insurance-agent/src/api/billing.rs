//! The plan and the billing side.
//!
//! - `GET /plan`: the plan and any request awaiting billing (members).
//! - `POST /plan` (tenant admins): a move that grants nothing new (a
//!   downgrade) applies at once; an upgrade becomes a **request**, sent to
//!   billing through the outbox (`plan.change_requested`), and the plan
//!   stays until billing confirms it.
//! - `POST /billing/callback` (the billing side, signed with the shared
//!   webhook secret): confirms or declines a pending request. Unsigned,
//!   tampered, stale and replayed callbacks are refused, and a request is
//!   applied at most once.
//!
//! Every applied change is written to the outbox (`plan.changed`) in the
//! same transaction as the tenant record, and audited. Operators change
//! plans directly from the command line (`tenant plan`).

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tenancy_core::audit::{AuditActor, AuditEvent};
use tenancy_core::outbox::OutboxMessage;
use tenancy_core::plan::{DowngradePolicy, PlanError};
use tenancy_core::problem::Problem;
use tenancy_core::store::TenantUpdate;
use tenancy_core::webhook::{IDEMPOTENCY_HEADER, SIGNATURE_HEADER};
use tenancy_core::{PlanId, Role, TenantContext, TenantId};
use uuid::Uuid;

use super::tenant::{PlanChange, PlanChanged, ResourceUsage, stock_counts};
use super::{ApiError, AppState, Body, Caller};
use crate::billing::BILLING;

/// The tenant settings key holding the request awaiting billing.
const REQUEST_KEY: &str = "plan_request";

/// A plan upgrade awaiting billing's confirmation.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PlanRequest {
    /// The request (billing answers with it).
    pub request_id: Uuid,
    /// The plan asked for.
    pub plan: String,
    /// Who asked.
    pub requested_by: String,
    /// When.
    pub requested_at: DateTime<Utc>,
}

/// The plan now, and any request awaiting billing.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PlanView {
    /// The plan in effect.
    pub plan: Option<String>,
    /// An upgrade awaiting billing.
    pub pending: Option<PlanRequest>,
}

/// An upgrade sent to billing (202).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PlanRequested {
    /// `pending`.
    pub status: &'static str,
    /// The request.
    pub request: PlanRequest,
    /// The plan in effect until billing confirms.
    pub plan: Option<String>,
}

fn pending_of(settings: &serde_json::Value) -> Option<PlanRequest> {
    settings
        .get(REQUEST_KEY)
        .and_then(|v| serde_json::from_value(v.clone()).ok())
}

/// The plan and any pending upgrade (every member).
#[utoipa::path(get, path = "/plan", responses((status = 200, body = PlanView)),
    security(("bearer" = [])))]
pub async fn get(caller: Caller) -> Json<PlanView> {
    let t = caller.ctx.tenant();
    Json(PlanView {
        plan: t.plan.as_ref().map(ToString::to_string),
        pending: pending_of(&t.settings),
    })
}

/// Changes the plan (tenant admins): a downgrade at once (200), an upgrade
/// as a request confirmed by billing (202).
#[utoipa::path(post, path = "/plan", request_body = PlanChange,
    responses((status = 200, body = PlanChanged, description = "Applied (grants nothing new)"),
        (status = 202, body = PlanRequested, description = "An upgrade, sent to billing for confirmation"),
        (status = 403), (status = 409), (status = 422)),
    security(("bearer" = [])))]
pub async fn change(
    State(state): State<AppState>,
    caller: Caller,
    Body(req): Body<PlanChange>,
) -> Result<Response, ApiError> {
    if caller.role != Role::Admin {
        return Err(ApiError::forbidden("only tenant admins change the plan"));
    }
    let tenant = caller.ctx.tenant().clone();
    let new_plan = PlanId::new(req.plan.clone());
    let counts = stock_counts(&state, &caller).await?;
    let policy = if req.allow_over_limit {
        DowngradePolicy::MarkOverLimit
    } else {
        DowngradePolicy::Refuse
    };
    let (next, event) = state
        .plans
        .change_plan(
            tenant.id,
            tenant.plan.as_ref(),
            &new_plan,
            &tenant.plan_overrides,
            |r| counts.iter().find(|(c, _)| *c == r).map_or(0, |(_, n)| *n),
            policy,
        )
        .map_err(|e| match e {
            PlanError::DowngradeBelowUsage { .. } => ApiError::conflict(e.to_string()),
            other => ApiError::invalid(other.to_string()),
        })?;
    let from = tenant.plan.as_ref().map(ToString::to_string);
    let upgrade = match caller.ctx.entitlements() {
        Some(current) => next.grants_more_than(current),
        None => true,
    };
    let user = caller.user.as_str().to_owned();
    if upgrade {
        let request = PlanRequest {
            request_id: Uuid::new_v4(),
            plan: new_plan.to_string(),
            requested_by: user.clone(),
            requested_at: Utc::now(),
        };
        let message = OutboxMessage::new(
            tenant.id,
            BILLING,
            "plan.change_requested",
            serde_json::json!({
                "request_id": request.request_id, "from": from, "to": request.plan,
                "requested_by": user,
            }),
        );
        // A newer request replaces an older one: billing's answer to the
        // older one then finds nothing pending.
        state
            .data
            .update_tenant(
                tenant.id,
                &TenantUpdate::new()
                    .expect_plan(tenant.plan.clone())
                    .settings_patch(serde_json::json!({ REQUEST_KEY: request }))
                    .emit(message),
            )
            .await?;
        let mut tx = state.data.begin_write(&caller.ctx).await?;
        state
            .data
            .audit()
            .append(
                &mut tx,
                AuditEvent::user(tenant.id, &user, "plan.change_requested", "tenant").with_details(
                    serde_json::json!({
                        "request_id": request.request_id, "from": from, "to": request.plan,
                    }),
                ),
            )
            .await?;
        tx.commit().await?;
        return Ok((
            StatusCode::ACCEPTED,
            Json(PlanRequested {
                status: "pending",
                request,
                plan: from,
            }),
        )
            .into_response());
    }
    // Grants nothing new: applied now, audited, and billing told in the
    // same store transaction. Applied only while the plan is still the one
    // the downgrade check saw; other fields changed meanwhile are kept.
    let mut tx = state.data.begin_write(&caller.ctx).await?;
    state
        .data
        .audit()
        .append(&mut tx, event.audit_event(&AuditActor::User(user.clone())))
        .await?;
    tx.commit().await?;
    state
        .data
        .update_tenant(
            tenant.id,
            &TenantUpdate::new()
                .expect_plan(tenant.plan.clone())
                .plan(Some(new_plan.clone()))
                .settings_patch(serde_json::json!({ REQUEST_KEY: null }))
                .emit(OutboxMessage::new(
                    tenant.id,
                    BILLING,
                    "plan.changed",
                    serde_json::json!({ "from": from, "to": new_plan.as_str(), "by": user }),
                )),
        )
        .await?;
    Ok(Json(PlanChanged {
        from,
        to: event.new.to_string(),
        over_limit: event
            .over_limit
            .iter()
            .map(|o| ResourceUsage {
                resource: o.resource.to_string(),
                used: o.used,
                limit: Some(o.limit),
                percent: Some(o.used.saturating_mul(100) / o.limit.max(1)),
            })
            .collect(),
    })
    .into_response())
}

/// Billing's answer to a plan request.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct BillingDecision {
    /// The tenant.
    #[schema(value_type = String, format = Uuid)]
    pub tenant_id: TenantId,
    /// The request answered.
    pub request_id: Uuid,
    /// `confirmed` (the plan changes) or `declined`.
    pub decision: Decision,
}

/// Billing's decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// Paid for: apply the plan.
    Confirmed,
    /// Not paid for: drop the request.
    Declined,
}

/// What a callback did.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DecisionApplied {
    /// `applied` or `declined`.
    pub status: &'static str,
    /// The plan in effect now.
    pub plan: Option<String>,
}

fn refused(e: &tenancy_core::webhook::WebhookError) -> ApiError {
    ApiError(Box::new(Problem::new(
        e.status(),
        e.code(),
        "Billing callback refused",
        e.to_string(),
    )))
}

/// The billing side confirms or declines a plan request. Signed with the
/// shared webhook secret (`Idempotency-Key`, `Tenancy-Signature`): 401 when
/// unsigned, tampered or stale, 409 when replayed or when the request is no
/// longer pending.
#[utoipa::path(post, path = "/billing/callback", request_body = BillingDecision,
    params(
        ("Idempotency-Key" = String, Header, description = "Unique per callback"),
        ("Tenancy-Signature" = String, Header, description = "t=<unix seconds>,v1=<hex HMAC-SHA256 of t.key.body>"),
    ),
    responses((status = 200, body = DecisionApplied), (status = 401), (status = 404), (status = 409), (status = 422)))]
pub async fn callback(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<DecisionApplied>, ApiError> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let key = header(IDEMPOTENCY_HEADER);
    state
        .billing
        .verify(header(SIGNATURE_HEADER), key, &body)
        .map_err(|e| {
            tracing::warn!(error = %e, "billing callback refused");
            refused(&e)
        })?;
    let result = apply_decision(&state, &body).await;
    // A passing failure (the store busy, the record changing under us too
    // often) must not use the key up: billing sends the same callback again.
    if let (Err(e), Some(key)) = (&result, key)
        && (e.0.status >= 500 || e.0.code == "app.retry")
    {
        state.billing.forget(key);
    }
    result
}

async fn apply_decision(state: &AppState, body: &[u8]) -> Result<Json<DecisionApplied>, ApiError> {
    let decision: BillingDecision = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid(format!("the callback body is not a decision: {e}")))?;
    // Other writers (settings, domains) may change the record meanwhile:
    // the decision is re-checked against a fresh copy until it applies.
    for _ in 0..8 {
        let tenant = state
            .data
            .tenant(decision.tenant_id)
            .await?
            .ok_or_else(|| ApiError::not_found("tenant"))?;
        let pending = pending_of(&tenant.settings)
            .filter(|p| p.request_id == decision.request_id)
            .ok_or_else(|| {
                ApiError::conflict("no such plan request is pending: it was answered or replaced")
            })?;
        let from = tenant.plan.as_ref().map(ToString::to_string);
        // Applied only to the record the decision was checked against.
        let mut update = TenantUpdate::new()
            .expect_version(tenant.version)
            .settings_patch(serde_json::json!({ REQUEST_KEY: null }));
        let (status, action) = match decision.decision {
            Decision::Confirmed => {
                let plan = PlanId::new(pending.plan.clone());
                state
                    .plans
                    .plan(&plan)
                    .map_err(|e| ApiError::invalid(e.to_string()))?;
                update = update.plan(Some(plan)).emit(OutboxMessage::new(
                    tenant.id,
                    BILLING,
                    "plan.changed",
                    serde_json::json!({
                        "request_id": pending.request_id, "from": from, "to": pending.plan,
                        "by": "billing",
                    }),
                ));
                ("applied", "plan.changed")
            }
            Decision::Declined => ("declined", "plan.change_declined"),
        };
        let next = match state.data.update_tenant(tenant.id, &update).await {
            Ok(next) => next,
            Err(
                tenancy_core::store::WriteError::Conflict { .. }
                | tenancy_core::store::WriteError::FieldChanged { .. },
            ) => continue,
            Err(other) => return Err(other.into()),
        };
        let ctx = TenantContext::new(next.clone());
        let mut tx = state.data.begin_write(&ctx).await?;
        state
            .data
            .audit()
            .append(
                &mut tx,
                AuditEvent::system(tenant.id, "billing", action, "tenant").with_details(
                    serde_json::json!({
                        "request_id": pending.request_id, "from": from, "to": pending.plan,
                        "requested_by": pending.requested_by,
                    }),
                ),
            )
            .await?;
        tx.commit().await?;
        return Ok(Json(DecisionApplied {
            status,
            plan: next.plan.as_ref().map(ToString::to_string),
        }));
    }
    Err(ApiError(Box::new(Problem::new(
        503,
        "app.retry",
        "Try again",
        "the tenant kept changing while the callback was applied; send it again",
    ))))
}
