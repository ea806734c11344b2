//! Tenant administration of members (tenant admins): list them with their
//! status and last activity, change a role, suspend and resume, remove.
//!
//! Every change ends the member's sessions in the tenant at once (their
//! tokens are refused with `session-revoked`), is audited with who did it,
//! and never leaves the tenant without an active admin (409). Admins do not
//! change, suspend or remove themselves (another admin does).

use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tenancy_core::audit::AuditEvent;
use tenancy_core::{
    Membership, MembershipStatus, MembershipStore, MembershipWriter, Role, TenantError, UserId,
};

use super::session::{role_from_name, role_name};
use super::{ApiError, AppState, Body, Caller, Page, PageQuery, PathOf, QueryOf};

/// A member of the tenant.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Member {
    /// The account id.
    pub user_id: String,
    /// The account's email (absent for identity-provider users).
    pub email: Option<String>,
    /// The account's name.
    pub name: Option<String>,
    /// `tenant_admin`, `manager`, `agent`, `viewer` or `finance`.
    pub role: String,
    /// `active` or `suspended`.
    pub status: String,
    /// The last sign-in or session renewal here.
    pub last_active_at: Option<DateTime<Utc>>,
}

/// A role change.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RoleChange {
    /// `tenant_admin`, `manager`, `agent`, `viewer` or `finance`.
    pub role: String,
}

fn admin_only(caller: &Caller) -> Result<(), ApiError> {
    if caller.role == Role::Admin {
        Ok(())
    } else {
        Err(ApiError::forbidden("only tenant admins administer members"))
    }
}

fn store_error(e: tenancy_core::StoreError) -> ApiError {
    ApiError::from(TenantError::Store(e))
}

async fn view(state: &AppState, m: &Membership) -> Result<Member, ApiError> {
    let profile = state.data.user_profile(m.user_id.as_str()).await?;
    Ok(Member {
        user_id: m.user_id.to_string(),
        name: profile.as_ref().map(|(n, _)| n.clone()),
        email: profile.map(|(_, e)| e),
        role: role_name(m.role, &m.grants).to_owned(),
        status: m.status.as_str().to_owned(),
        last_active_at: m.last_active_at,
    })
}

/// Lists the tenant's members (tenant admins).
#[utoipa::path(get, path = "/members", params(PageQuery),
    responses((status = 200, body = Page<Member>), (status = 403)), security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    QueryOf(page): QueryOf<PageQuery>,
) -> Result<Json<Page<Member>>, ApiError> {
    admin_only(&caller)?;
    let (limit, offset) = page.bounds()?;
    let all = state
        .data
        .memberships()
        .members_of(caller.ctx.tenant_id())
        .await?;
    let total = i64::try_from(all.len()).unwrap_or(i64::MAX);
    let mut items = Vec::new();
    for m in all
        .iter()
        .skip(usize::try_from(offset).unwrap_or(usize::MAX))
        .take(usize::try_from(limit).unwrap_or(0))
    {
        items.push(view(&state, m).await?);
    }
    Ok(Json(Page {
        items,
        limit,
        offset,
        total,
    }))
}

/// The member `user` of the caller's tenant, after the checks every change
/// makes: admin caller, not themselves, an existing member.
async fn target(state: &AppState, caller: &Caller, user: &str) -> Result<Membership, ApiError> {
    admin_only(caller)?;
    if user == caller.user.as_str() {
        return Err(ApiError::conflict(
            "you cannot change your own membership: ask another tenant admin",
        ));
    }
    state
        .data
        .memberships()
        .membership(&UserId::new(user), caller.ctx.tenant_id())
        .await
        .map_err(store_error)?
        .ok_or_else(|| ApiError::not_found("member"))
}

/// Refuses a change that would leave the tenant without an active admin.
async fn keeps_an_admin(
    state: &AppState,
    caller: &Caller,
    changed: &Membership,
    after: Option<&Membership>,
) -> Result<(), ApiError> {
    let was_admin = changed.role == Role::Admin && changed.status == MembershipStatus::Active;
    let stays_admin =
        after.is_some_and(|m| m.role == Role::Admin && m.status == MembershipStatus::Active);
    if !was_admin || stays_admin {
        return Ok(());
    }
    let admins = state
        .data
        .memberships()
        .members_of(caller.ctx.tenant_id())
        .await?
        .into_iter()
        .filter(|m| {
            m.role == Role::Admin
                && m.status == MembershipStatus::Active
                && m.user_id != changed.user_id
        })
        .count();
    if admins == 0 {
        return Err(ApiError::conflict(
            "the tenant would have no active tenant admin: make someone else admin first",
        ));
    }
    Ok(())
}

/// Ends `user`'s sessions in the caller's tenant and audits `action`.
async fn revoke_and_audit(
    state: &AppState,
    caller: &Caller,
    user: &UserId,
    action: &str,
    details: serde_json::Value,
) -> Result<(), ApiError> {
    if let Some(epochs) = state.sessions.epochs() {
        epochs
            .revoke(caller.ctx.tenant_id(), user)
            .await
            .map_err(store_error)?;
    }
    let mut tx = state.data.begin_write(&caller.ctx).await?;
    state
        .data
        .audit()
        .append(
            &mut tx,
            AuditEvent::from_context(&caller.ctx, action, "members")
                .with_details(serde_json::json!({ "user_id": user.as_str() }))
                .with_details(details),
        )
        .await?;
    tx.commit().await?;
    Ok(())
}

/// Changes a member's role (tenant admins); their sessions end.
#[utoipa::path(put, path = "/members/{user_id}", params(("user_id" = String, Path)),
    request_body = RoleChange,
    responses((status = 200, body = Member), (status = 403), (status = 404), (status = 409), (status = 422)),
    security(("bearer" = [])))]
pub async fn change_role(
    State(state): State<AppState>,
    caller: Caller,
    PathOf(user): PathOf<String>,
    Body(change): Body<RoleChange>,
) -> Result<Json<Member>, ApiError> {
    let current = target(&state, &caller, &user).await?;
    let (role, grants) = role_from_name(&change.role).ok_or_else(|| {
        ApiError::invalid_field(
            "role",
            "role must be tenant_admin, manager, agent, viewer or finance",
        )
    })?;
    let mut next = current.clone();
    next.role = role;
    next.grants = grants;
    keeps_an_admin(&state, &caller, &current, Some(&next)).await?;
    state
        .data
        .memberships()
        .put(&next)
        .await
        .map_err(store_error)?;
    revoke_and_audit(
        &state,
        &caller,
        &next.user_id,
        "change_role",
        serde_json::json!({
            "from": role_name(current.role, &current.grants),
            "to": role_name(next.role, &next.grants),
        }),
    )
    .await?;
    Ok(Json(view(&state, &next).await?))
}

async fn set_status(
    state: &AppState,
    caller: &Caller,
    user: &str,
    status: MembershipStatus,
) -> Result<Json<Member>, ApiError> {
    let current = target(state, caller, user).await?;
    if current.status == status {
        return Err(ApiError::conflict(format!(
            "the membership is already {}",
            status.as_str()
        )));
    }
    let next = current.clone().with_status(status);
    keeps_an_admin(state, caller, &current, Some(&next)).await?;
    state
        .data
        .memberships()
        .put(&next)
        .await
        .map_err(store_error)?;
    let action = match status {
        MembershipStatus::Suspended => "suspend",
        _ => "resume",
    };
    revoke_and_audit(state, caller, &next.user_id, action, serde_json::json!({})).await?;
    Ok(Json(view(state, &next).await?))
}

/// Suspends a member (tenant admins): refused from now on
/// (`membership-suspended`), role and history kept.
#[utoipa::path(post, path = "/members/{user_id}/suspend", params(("user_id" = String, Path)),
    responses((status = 200, body = Member), (status = 403), (status = 404), (status = 409)),
    security(("bearer" = [])))]
pub async fn suspend(
    State(state): State<AppState>,
    caller: Caller,
    PathOf(user): PathOf<String>,
) -> Result<Json<Member>, ApiError> {
    set_status(&state, &caller, &user, MembershipStatus::Suspended).await
}

/// Resumes a suspended member (tenant admins); they sign in again.
#[utoipa::path(post, path = "/members/{user_id}/resume", params(("user_id" = String, Path)),
    responses((status = 200, body = Member), (status = 403), (status = 404), (status = 409)),
    security(("bearer" = [])))]
pub async fn resume(
    State(state): State<AppState>,
    caller: Caller,
    PathOf(user): PathOf<String>,
) -> Result<Json<Member>, ApiError> {
    set_status(&state, &caller, &user, MembershipStatus::Active).await
}

/// Removes a member (tenant admins); their sessions end. Their records
/// (customers, policies, the audit trail) stay with the tenant.
#[utoipa::path(delete, path = "/members/{user_id}", params(("user_id" = String, Path)),
    responses((status = 204), (status = 403), (status = 404), (status = 409)),
    security(("bearer" = [])))]
pub async fn remove(
    State(state): State<AppState>,
    caller: Caller,
    PathOf(user): PathOf<String>,
) -> Result<http::StatusCode, ApiError> {
    let current = target(&state, &caller, &user).await?;
    keeps_an_admin(&state, &caller, &current, None).await?;
    let removed = MembershipWriter::remove(
        &state.data.memberships(),
        &current.user_id,
        caller.ctx.tenant_id(),
    )
    .await
    .map_err(store_error)?;
    if !removed {
        return Err(ApiError::not_found("member"));
    }
    revoke_and_audit(
        &state,
        &caller,
        &current.user_id,
        "remove",
        serde_json::json!({ "role": role_name(current.role, &current.grants) }),
    )
    .await?;
    Ok(http::StatusCode::NO_CONTENT)
}
