//! The tenant's audit log: queries and chain verification (tenant admins,
//! plans with `audit_log_access`).

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use tenancy_core::Role;
use tenancy_core::audit::AuditEvent;
use tenancy_core::audit::chain::Anchor;
use tenancy_sqlx::AuditQuery;

use super::{ApiError, AppState, Caller, QueryOf, require_feature};

/// Filters.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct AuditFilter {
    /// Only this actor (user id).
    pub actor: Option<String>,
    /// Only this action (`create`, `update`, `delete`, `read`, `login`, ...).
    pub action: Option<String>,
    /// Only this resource type (`customers`, `agents`, `session`).
    pub resource_type: Option<String>,
    /// Page size (1–1000, default 100).
    pub limit: Option<u32>,
    /// Continue before this sequence number (`next` of the previous page).
    pub before: Option<u64>,
}

/// One event with its position in the chain.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AuditEntry {
    /// Sequence number in the tenant's chain.
    pub seq: u64,
    /// The event.
    #[schema(value_type = Object)]
    pub event: AuditEvent,
}

/// A page of events, newest first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AuditEntries {
    /// Events.
    pub items: Vec<AuditEntry>,
    /// Pass as `before` for the next page.
    pub next: Option<u64>,
}

/// The chain check.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ChainCheck {
    /// Events read (archived and live).
    pub rows: u64,
    /// Of them, in archive segments.
    pub archived_rows: u64,
    /// Of them, in the live log.
    pub live_rows: u64,
    /// Whether no break was found.
    pub intact: bool,
    /// Breaks found (described).
    pub breaks: Vec<String>,
    /// The chain's head as `<seq>:<hash>`: keep it outside the database
    /// and pass it back as `?anchor=` to detect removal of the newest events.
    pub anchor: Option<String>,
}

/// `GET /audit/verify` parameters.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct VerifyParams {
    /// A head reported earlier (`<seq>:<hash>`): the chain must still reach it.
    pub anchor: Option<String>,
}

fn admin_with_access(caller: &Caller) -> Result<(), ApiError> {
    if caller.role != Role::Admin {
        return Err(ApiError::forbidden("only tenant admins read the audit log"));
    }
    require_feature(caller, "audit_log_access")
}

/// Events of the tenant's audit log.
#[utoipa::path(get, path = "/audit", params(AuditFilter),
    responses((status = 200, body = AuditEntries), (status = 403)), security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    QueryOf(f): QueryOf<AuditFilter>,
) -> Result<Json<AuditEntries>, ApiError> {
    admin_with_access(&caller)?;
    let mut q = AuditQuery::new().limit(f.limit.unwrap_or(100));
    if let Some(a) = f.actor {
        q = q.actor(a);
    }
    if let Some(a) = f.action {
        q = q.action(a);
    }
    if let Some(r) = f.resource_type {
        q = q.resource_type(r);
    }
    if let Some(b) = f.before {
        q = q.before(b);
    }
    let mut tx = state.data.begin(&caller.ctx).await?;
    let page = state.data.audit().query(&mut tx, &q).await?;
    tx.commit().await?;
    Ok(Json(AuditEntries {
        items: page
            .events
            .into_iter()
            .map(|(seq, event)| AuditEntry { seq, event })
            .collect(),
        next: page.next,
    }))
}

/// Verifies the tenant's audit hash chain across its archive segments and the live log.
#[utoipa::path(get, path = "/audit/verify", params(VerifyParams),
    responses((status = 200, body = ChainCheck), (status = 403), (status = 422)), security(("bearer" = [])))]
pub async fn verify(
    State(state): State<AppState>,
    caller: Caller,
    QueryOf(params): QueryOf<VerifyParams>,
) -> Result<Json<ChainCheck>, ApiError> {
    admin_with_access(&caller)?;
    let anchor = params
        .anchor
        .as_deref()
        .map(str::parse::<Anchor>)
        .transpose()
        .map_err(|e| ApiError::invalid(e.to_string()))?;
    let mut tx = state.data.begin(&caller.ctx).await?;
    let anchors: Vec<Anchor> = anchor.into_iter().collect();
    let whole = state
        .data
        .audit()
        .verify_archive(&mut tx, &state.data.audit_archive(), &anchors)
        .await?;
    tx.commit().await?;
    let report = &whole.chain;
    Ok(Json(ChainCheck {
        rows: report.rows,
        archived_rows: whole.archived_rows,
        live_rows: whole.live_rows,
        intact: report.is_intact(),
        breaks: report.breaks.iter().map(|b| format!("{b:?}")).collect(),
        anchor: report.anchor().map(|a| a.to_string()),
    }))
}
