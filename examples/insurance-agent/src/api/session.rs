//! Signing in, and who the caller is.

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use tenancy_core::store::TenantStore;
use tenancy_core::{Role, TenantError, TenantSlug, UserId};

use super::{ApiError, AppState, Body, Caller};
use crate::auth::verify_password;
use crate::id::Id;

/// Credentials.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct LoginRequest {
    /// The account's email.
    pub email: String,
    /// The password.
    pub password: String,
    /// The tenant to sign in to (its slug).
    pub tenant: String,
}

/// A session.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LoginResponse {
    /// Bearer token for `Authorization: Bearer <token>`.
    pub token: String,
    /// The tenant's id.
    pub tenant_id: Id,
    /// The user's role in the tenant.
    pub role: String,
    /// Seconds until the token expires.
    pub expires_in: u64,
}

/// A hash of nothing in particular, verified when the email is unknown so
/// that a wrong email and a wrong password take the same time.
static DUMMY_HASH: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| crate::auth::hash_password("not-a-password").unwrap_or_default());

/// Signs in to a tenant: returns a token carrying the user and the tenant.
/// Any wrong part (email, password, tenant, membership) is the same 401.
#[utoipa::path(post, path = "/auth/login", request_body = LoginRequest,
    responses((status = 200, body = LoginResponse), (status = 401, description = "Wrong credentials")))]
pub async fn login(
    State(state): State<AppState>,
    Body(req): Body<LoginRequest>,
) -> Result<Json<LoginResponse>, ApiError> {
    let refused = || ApiError::unauthorized("email, password or tenant is wrong");
    let row = state
        .data
        .user_by_email(&req.email.trim().to_lowercase())
        .await?;
    let (user_id, hash) = row.unwrap_or_else(|| (String::new(), DUMMY_HASH.clone()));
    let password_ok = verify_password(&hash, &req.password);
    if user_id.is_empty() || !password_ok {
        return Err(refused());
    }
    let slug = TenantSlug::new(&req.tenant).map_err(|_| refused())?;
    let tenant = state
        .data
        .store()
        .by_slug(&slug)
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .ok_or_else(refused)?;
    // Direct members, and the parent's tenant admins for a child tenant
    // (while the parent may serve); then the tenant itself must be admitted:
    // a suspended or offboarding tenant issues no session.
    let actor = super::authorizer(&state)
        .sign_in(&UserId::new(user_id.clone()), &tenant)
        .await
        .map_err(|e| match e {
            TenantError::Suspended { .. }
            | TenantError::Offboarding
            | TenantError::TrialExpired { .. } => ApiError::from(e),
            _ => refused(),
        })?;
    let token = state.sessions.issue(&user_id, tenant.id, actor.role)?;
    // Sign-ins are recorded in the tenant's own audit log.
    let ctx = tenancy_core::TenantContext::new((*tenant).clone());
    let mut tx = state.data.begin_write(&ctx).await?;
    state
        .data
        .audit()
        .append(
            &mut tx,
            tenancy_core::audit::AuditEvent::user(
                tenant.id,
                &user_id,
                tenancy_core::audit::Action::LOGIN,
                "session",
            ),
        )
        .await?;
    tx.commit().await?;
    tracing::info!(tenant.id = %tenant.id, user = %user_id, "signed in");
    Ok(Json(LoginResponse {
        token,
        tenant_id: tenant.id.into(),
        role: actor.role.as_str().to_owned(),
        expires_in: crate::auth::TOKEN_TTL_SECS,
    }))
}

/// The caller.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Me {
    /// User id.
    pub user_id: String,
    /// Display name.
    pub name: String,
    /// Email.
    pub email: String,
    /// The tenant.
    pub tenant_id: Id,
    /// The tenant's slug.
    pub tenant: String,
    /// The tenant's plan.
    pub plan: Option<String>,
    /// Role in the tenant.
    pub role: String,
    /// The caller's agent record in this tenant, if they are an agent.
    pub agent_id: Option<Id>,
}

/// Who the caller is, in which tenant, with which role.
#[utoipa::path(get, path = "/me", responses((status = 200, body = Me)), security(("bearer" = [])))]
pub async fn me(State(state): State<AppState>, caller: Caller) -> Result<Json<Me>, ApiError> {
    let (name, email) = state
        .data
        .user_profile(caller.user.as_str())
        .await?
        .ok_or_else(|| ApiError::unauthorized("the account no longer exists"))?;
    let mut tx = state.data.begin(&caller.ctx).await?;
    let agent_id = super::agents::agent_of(&mut tx, &caller.user).await?;
    tx.commit().await?;
    let tenant = caller.ctx.tenant();
    Ok(Json(Me {
        user_id: caller.user.as_str().to_owned(),
        name,
        email,
        tenant_id: tenant.id.into(),
        tenant: tenant.slug.to_string(),
        plan: tenant.plan.as_ref().map(ToString::to_string),
        role: role_name(caller.role).to_owned(),
        agent_id,
    }))
}

/// The application's names for the library's roles.
pub fn role_name(role: Role) -> &'static str {
    match role {
        Role::Admin => "tenant_admin",
        Role::Manager => "manager",
        Role::Member => "agent",
        _ => "viewer",
    }
}
