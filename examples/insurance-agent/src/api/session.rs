//! Signing in, and who the caller is.

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use tenancy_core::audit::{Action, AuditEvent};
use tenancy_core::store::TenantStore;
use tenancy_core::{RequestMeta, Role, TenantError, TenantSlug, UserId};

use super::{ApiError, AppState, Body, Caller, Client};
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
    /// A code from the authenticator app, for accounts with one (and in
    /// tenants that require it).
    #[serde(default)]
    pub totp: Option<String>,
}

/// A session.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LoginResponse {
    /// Bearer token for `Authorization: Bearer <token>` (short-lived).
    pub token: String,
    /// Exchanged at `POST /auth/refresh` for a new pair before
    /// `refresh_expires_in` runs out.
    pub refresh_token: String,
    /// Seconds until the refresh token expires.
    pub refresh_expires_in: u64,
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

/// [`DUMMY_HASH`], for the other password checks.
pub(crate) fn dummy_hash() -> String {
    DUMMY_HASH.clone()
}

/// Signs in to a tenant: returns a token carrying the user and the tenant.
/// Any wrong part (email, password, tenant, membership) is the same 401;
/// repeated attempts for one email or from one client back off and lock out
/// (429 with `Retry-After`), whether or not the email exists.
#[utoipa::path(post, path = "/auth/login", request_body = LoginRequest,
    responses((status = 200, body = LoginResponse), (status = 401, description = "Wrong credentials"),
              (status = 429, description = "Too many attempts: wait `Retry-After` seconds"),
              (status = 503, description = "Busy: retry after `Retry-After` seconds")))]
pub async fn login(
    State(state): State<AppState>,
    Client(client): Client,
    Body(req): Body<LoginRequest>,
) -> Result<Json<LoginResponse>, ApiError> {
    let refused = || ApiError::unauthorized("email, password or tenant is wrong");
    bounded_credentials(&req.email, &req.password)?;
    crate::validate::bounded("tenant", &req.tenant, crate::validate::NAME)?;
    let email = req.email.trim().to_lowercase();
    let slug = TenantSlug::new(req.tenant.trim()).ok();
    // Charged before anything is looked up: unknown and known emails are
    // throttled alike, and a burst of guesses cannot overtake the count.
    let attempt = match state.signin.begin(&email, client.ip).await {
        Ok(attempt) => attempt,
        Err(e) => {
            if let Some(slug) = &slug {
                // Once a minute per tenant, email and client: refusals cost
                // the attacker nothing, so they must cost the log little.
                // (The email only as its digest: it is unbounded input.)
                let key = format!(
                    "{slug}\n{}\n{:?}",
                    tenancy_core::signin::SignInGuard::account_key(&email),
                    client.ip
                );
                if !state.refusals_audited.contains_key(&key) {
                    state.refusals_audited.insert(key, ());
                    audit_failure(&state, slug, None, &client, e.code()).await;
                }
            }
            tracing::warn!(ip = ?client.ip, code = e.code(), "sign-in refused");
            return Err(e.into());
        }
    };
    let row = state.data.user_by_email(&email).await?;
    let known = row.is_some();
    let (user_id, hash) = row.unwrap_or_else(|| (String::new(), DUMMY_HASH.clone()));
    let password_ok = match state.hasher.verify(hash, req.password).await {
        Ok(ok) => ok,
        Err(busy) => {
            // Not judged: the attempt counts against no one.
            attempt.abandon().await.map_err(signin_store)?;
            return Err(busy);
        }
    };
    let tenant = match &slug {
        Some(slug) => state
            .data
            .store()
            .by_slug(slug)
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?,
        None => None,
    };
    let (Some(tenant), true, true) = (tenant, known, password_ok) else {
        attempt.failed().await.map_err(signin_store)?;
        if let Some(slug) = &slug {
            let who = known.then_some(user_id.as_str());
            audit_failure(&state, slug, who, &client, "credentials").await;
        }
        return Err(refused());
    };
    // Direct members, and the parent's tenant admins for a child tenant
    // (while the parent may serve); then the tenant itself must be admitted:
    // a suspended or offboarding tenant issues no session.
    let actor = match super::authorizer(&state)
        .sign_in(&UserId::new(user_id.clone()), &tenant)
        .await
    {
        Ok(actor) => actor,
        Err(e) => {
            attempt.failed().await.map_err(signin_store)?;
            audit_failure(&state, &tenant.slug, Some(&user_id), &client, e.code()).await;
            return Err(match e {
                TenantError::Suspended { .. }
                | TenantError::Offboarding
                | TenantError::TrialExpired { .. } => ApiError::from(e),
                _ => refused(),
            });
        }
    };
    // The second factor: for every account with an authenticator, and
    // demanded by tenants that require MFA. A missing or wrong code counts
    // as a failed attempt (the right password alone must not be learnt for
    // free).
    let policy = super::mfa::SecurityPolicy::of(&tenant)?;
    match state.data.totp_of(&user_id).await? {
        Some((secret, true)) => {
            let now = jsonwebtoken::get_current_timestamp();
            let step = req
                .totp
                .as_deref()
                .and_then(|code| crate::auth::totp::step_of(&secret, code, now));
            let fresh = match step {
                Some(step) => state.data.use_totp_step(&user_id, step, true).await?,
                None => false,
            };
            if !fresh {
                attempt.failed().await.map_err(signin_store)?;
                audit_failure(&state, &tenant.slug, Some(&user_id), &client, "mfa").await;
                return Err(ApiError(Box::new(tenancy_core::problem::Problem::new(
                    401,
                    "app.mfa-required",
                    "Unauthorized",
                    "a current code from the authenticator app is required (field totp); each code works once",
                ))));
            }
        }
        _ if policy.mfa_required => {
            attempt.failed().await.map_err(signin_store)?;
            return Err(ApiError(Box::new(tenancy_core::problem::Problem::new(
                403,
                "app.mfa-enrollment-required",
                "Forbidden",
                "this tenant requires an authenticator app: enrol at POST /auth/mfa/enroll, confirm, then sign in with a code",
            ))));
        }
        _ => {}
    }
    attempt.succeeded().await.map_err(signin_store)?;
    let tokens = state
        .sessions
        .issue(&user_id, tenant.id, actor.role)
        .await?;
    // Sign-ins are recorded in the tenant's own audit log.
    let ctx = tenancy_core::TenantContext::new((*tenant).clone());
    let mut tx = state.data.begin_write(&ctx).await?;
    state
        .data
        .audit()
        .append(
            &mut tx,
            with_client(
                AuditEvent::user(tenant.id, &user_id, Action::LOGIN, "session"),
                &client,
            ),
        )
        .await?;
    tx.commit().await?;
    touch(&state, &UserId::new(user_id.clone()), tenant.id).await;
    tracing::info!(tenant.id = %tenant.id, user = %user_id, "signed in");
    Ok(Json(session_response(tokens, &tenant, actor.role)))
}

fn session_response(
    tokens: crate::auth::TokenPair,
    tenant: &tenancy_core::Tenant,
    role: Role,
) -> LoginResponse {
    LoginResponse {
        token: tokens.access,
        refresh_token: tokens.refresh,
        refresh_expires_in: crate::auth::REFRESH_TTL_SECS,
        tenant_id: tenant.id.into(),
        role: role.as_str().to_owned(),
        expires_in: crate::auth::TOKEN_TTL_SECS,
    }
}

/// A refresh token to exchange.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct RefreshRequest {
    /// The `refresh_token` of the last sign-in or refresh.
    pub refresh_token: String,
}

/// Exchanges a refresh token for a new access token and refresh token. The
/// membership and the tenant are checked again: a removed member, or a
/// suspended tenant, gets no new token.
#[utoipa::path(post, path = "/auth/refresh", request_body = RefreshRequest,
    responses((status = 200, body = LoginResponse), (status = 401, description = "Invalid or revoked"),
              (status = 403, description = "The tenant may not serve")))]
pub async fn refresh(
    State(state): State<AppState>,
    Body(req): Body<RefreshRequest>,
) -> Result<Json<LoginResponse>, ApiError> {
    let claims = state.sessions.verify_refresh(&req.refresh_token)?;
    let gone = || ApiError::unauthorized("the refresh token is not valid: sign in again");
    let tenant_id: tenancy_core::TenantId = claims.tenant_id.parse().map_err(|_| gone())?;
    // Signed out, role or password changed, tenant suspended: no renewal.
    state.sessions.check_epoch(&claims, tenant_id).await?;
    let tenant = state
        .data
        .store()
        .by_id(tenant_id)
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .ok_or_else(gone)?;
    let actor = super::authorizer(&state)
        .sign_in(&UserId::new(claims.sub.clone()), &tenant)
        .await
        .map_err(|e| match e {
            TenantError::Suspended { .. }
            | TenantError::Offboarding
            | TenantError::TrialExpired { .. } => ApiError::from(e),
            _ => gone(),
        })?;
    let tokens = state
        .sessions
        .issue(&claims.sub, tenant.id, actor.role)
        .await?;
    touch(&state, &UserId::new(claims.sub.clone()), tenant.id).await;
    Ok(Json(session_response(tokens, &tenant, actor.role)))
}

/// Records the member's activity (for `GET /members`); a failure is logged,
/// not the sign-in's.
async fn touch(state: &AppState, user: &UserId, tenant: tenancy_core::TenantId) {
    use tenancy_core::MembershipWriter;
    if let Err(e) = state
        .data
        .memberships()
        .touch(user, tenant, chrono::Utc::now())
        .await
    {
        tracing::warn!(tenant.id = %tenant, error = %e, "could not record the member's activity");
    }
}

pub(crate) fn signin_store(e: tenancy_core::StoreError) -> ApiError {
    ApiError::from(tenancy_core::signin::SignInError::Unavailable(e))
}

/// The client's address and user agent on an audit event.
pub fn with_client(mut event: AuditEvent, client: &RequestMeta) -> AuditEvent {
    if let Some(ip) = client.ip {
        event = event.with_ip(ip);
    }
    if let Some(agent) = &client.user_agent {
        event = event.with_user_agent(agent.clone());
    }
    event
}

/// Records a refused sign-in in the named tenant's audit log. The account
/// is named only when it is one of the tenant's users (`who`): an email typed
/// into the wrong tenant's sign-in is not written into that tenant's log.
async fn audit_failure(
    state: &AppState,
    slug: &TenantSlug,
    who: Option<&str>,
    client: &RequestMeta,
    reason: &str,
) {
    let tenant = match state.data.store().by_slug(slug).await {
        Ok(Some(t)) => t,
        Ok(None) => return,
        Err(e) => {
            tracing::warn!(error = %e, "could not load the tenant to audit a failed sign-in");
            return;
        }
    };
    // Named only when a member of this tenant.
    let member = match who {
        Some(user) => {
            use tenancy_core::MembershipStore;
            match state
                .data
                .memberships()
                .membership(&UserId::new(user), tenant.id)
                .await
            {
                Ok(found) => found.map(|_| user),
                Err(e) => {
                    tracing::warn!(error = %e, "could not read a membership to audit a failed sign-in");
                    None
                }
            }
        }
        None => None,
    };
    let event = match member {
        Some(user) => AuditEvent::user(tenant.id, user, Action::LOGIN_FAILED, "session"),
        None => AuditEvent::system(tenant.id, "sign-in", Action::LOGIN_FAILED, "session"),
    }
    .with_details(serde_json::json!({ "reason": reason }));
    let event = with_client(event, client);
    let ctx = tenancy_core::TenantContext::new((*tenant).clone());
    let recorded = async {
        let mut tx = state.data.begin_write(&ctx).await?;
        state.data.audit().append(&mut tx, event).await?;
        tx.commit().await?;
        Ok::<(), ApiError>(())
    }
    .await;
    if let Err(e) = recorded {
        tracing::warn!(tenant.id = %tenant.id, error = %e, "could not audit a failed sign-in");
    }
}

/// Signs out: every session of the caller in this tenant ends at once (the
/// access and refresh tokens issued so far are refused from now on).
#[utoipa::path(post, path = "/auth/logout",
    responses((status = 204, description = "Signed out"), (status = 401)), security(("bearer" = [])))]
pub async fn logout(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<http::StatusCode, ApiError> {
    let epochs = state
        .sessions
        .epochs()
        .ok_or_else(|| ApiError::internal("sessions are not revocable in this configuration"))?;
    epochs
        .revoke(caller.ctx.tenant_id(), &caller.user)
        .await
        .map_err(|e| ApiError::from(TenantError::Store(e)))?;
    let mut tx = state.data.begin_write(&caller.ctx).await?;
    state
        .data
        .audit()
        .append(
            &mut tx,
            with_client(
                AuditEvent::from_context(&caller.ctx, Action::LOGOUT, "session"),
                caller.ctx.request(),
            ),
        )
        .await?;
    tx.commit().await?;
    Ok(http::StatusCode::NO_CONTENT)
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
        role: role_name(
            caller.role,
            caller
                .ctx
                .actor()
                .map(|a| &a.grants[..])
                .unwrap_or_default(),
        )
        .to_owned(),
        agent_id,
    }))
}

/// Refuses credentials longer than any account can have (422 naming the
/// field) before they are hashed or counted.
pub fn bounded_credentials(email: &str, password: &str) -> Result<(), ApiError> {
    crate::validate::bounded("email", email, crate::validate::EMAIL)?;
    crate::validate::bounded("password", password, crate::validate::PASSWORD)
}

/// The grants that make a viewer the `finance` role: settling payments
/// and paying out commissions, across the tenant.
pub const FINANCE_GRANTS: [&str; 2] = [super::SETTLE_PAYMENTS, super::PAY_COMMISSIONS];

/// The library's role and extra grants for one of the application's role
/// names (`tenant_admin`, `manager`, `agent`, `viewer`, `finance`).
pub fn role_from_name(name: &str) -> Option<(Role, Vec<tenancy_core::Permission>)> {
    let role = match name {
        "tenant_admin" => Role::Admin,
        "manager" => Role::Manager,
        "agent" => Role::Member,
        "viewer" => Role::Viewer,
        "finance" => {
            let grants = FINANCE_GRANTS
                .iter()
                .filter_map(|g| tenancy_core::Permission::new(g).ok())
                .collect();
            return Some((Role::Viewer, grants));
        }
        _ => return None,
    };
    Some((role, Vec::new()))
}

/// The application's name for a library role with its grants.
pub fn role_name(role: Role, grants: &[tenancy_core::Permission]) -> &'static str {
    match role {
        Role::Admin => "tenant_admin",
        Role::Manager => "manager",
        Role::Member => "agent",
        _ if FINANCE_GRANTS
            .iter()
            .all(|need| grants.iter().any(|g| g.allows(need))) =>
        {
            "finance"
        }
        _ => "viewer",
    }
}
