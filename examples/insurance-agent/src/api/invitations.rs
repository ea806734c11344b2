//! Inviting people into a tenant, and accepting an invitation — which
//! creates the account (under the tenant's password policy) if needed.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use tenancy_core::audit::AuditEvent;
use tenancy_core::invite::{Invitations, InviteError, parse_token};
use tenancy_core::problem::Problem;
use tenancy_core::{Role, TenantContext, UserId};

use super::{ApiError, AppState, Body, Caller, Client, PathOf};
use crate::auth::PasswordPolicy;
use crate::id::Id;

/// Issues and accepts invitations, seats counted with the tenant's members.
pub fn invitations(state: &AppState) -> Invitations {
    Invitations::new(state.data.invitations(), Arc::new(state.data.memberships()))
}

impl From<InviteError> for ApiError {
    fn from(e: InviteError) -> Self {
        let code = match &e {
            InviteError::Malformed | InviteError::Invalid(_) => "app.invitation-invalid",
            InviteError::WrongTenant => "app.invitation-wrong-tenant",
            InviteError::NotFound => "app.invitation-unknown",
            InviteError::AlreadyUsed => "app.invitation-used",
            InviteError::Expired(_) => "app.invitation-expired",
            _ => return ApiError::internal(e.to_string()),
        };
        Self(Box::new(Problem::new(
            e.status(),
            code,
            "Invitation refused",
            e.to_string(),
        )))
    }
}

/// Who to invite.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct NewInvitation {
    /// Their email.
    pub email: String,
    /// Their role: `agent`, `manager`, `tenant_admin` or `viewer`.
    pub role: String,
    /// Hours the invitation stays valid (1–720, default 72).
    pub valid_hours: Option<i64>,
}

/// An issued invitation. The token is shown once (send it by email); only
/// its hash is stored.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct IssuedInvitation {
    /// Invitation id.
    pub id: Id,
    /// The token to send.
    pub token: String,
    /// When it stops working.
    pub expires_at: chrono::DateTime<chrono::Utc>,
}

fn role_from_name(name: &str) -> Result<Role, ApiError> {
    match name {
        "tenant_admin" => Ok(Role::Admin),
        "manager" => Ok(Role::Manager),
        "agent" => Ok(Role::Member),
        "viewer" => Ok(Role::Viewer),
        other => Err(ApiError::invalid(format!(
            "role {other:?}: use agent, manager, tenant_admin or viewer"
        ))),
    }
}

/// Invites someone (tenant admins any role; managers agents and viewers).
#[utoipa::path(post, path = "/invitations", request_body = NewInvitation,
    responses((status = 201, body = IssuedInvitation), (status = 400), (status = 403), (status = 422)),
    security(("bearer" = [])))]
pub async fn invite(
    State(state): State<AppState>,
    caller: Caller,
    Body(req): Body<NewInvitation>,
) -> Result<(http::StatusCode, Json<IssuedInvitation>), ApiError> {
    let role = role_from_name(&req.role)?;
    let allowed = match caller.role {
        Role::Admin => true,
        Role::Manager => matches!(role, Role::Member | Role::Viewer),
        _ => false,
    };
    if !allowed {
        return Err(ApiError::forbidden("you may not invite with this role"));
    }
    let hours = req.valid_hours.unwrap_or(72);
    if !(1..=720).contains(&hours) {
        return Err(ApiError::invalid("valid_hours must be between 1 and 720"));
    }
    // The plan's `users` limit counts seats: members and pending
    // invitations (an invitation reserves one until it expires or is revoked).
    let tenant = caller.ctx.tenant_id();
    let email = crate::validate::email("email", &req.email)?;
    let ttl = chrono::Duration::hours(hours);
    let issued = match caller
        .ctx
        .entitlements()
        .and_then(|e| e.stock_limit("users"))
    {
        Some(seats) => {
            invitations(&state)
                .invite_within(tenant, &email, role, &caller.user, ttl, seats)
                .await
        }
        None => {
            invitations(&state)
                .invite(tenant, &email, role, &caller.user, ttl)
                .await
        }
    };
    let (inv, token) = issued.map_err(|e| match e {
        InviteError::NoSeat { used, limit } => {
            state.observer.tenants.quota_refused(tenant, "users");
            ApiError::from(tenancy_core::TenantError::Quota(
                tenancy_core::quota::QuotaExceeded::new(
                    tenant,
                    "users",
                    tenancy_core::plan::ResourceKind::Stock,
                    used,
                    limit,
                    1,
                ),
            ))
        }
        other => ApiError::from(other),
    })?;
    let mut tx = state.data.begin_write(&caller.ctx).await?;
    state
        .data
        .audit()
        .append(
            &mut tx,
            AuditEvent::from_context(&caller.ctx, "invite", "invitations")
                .with_resource_id(inv.id)
                .with_details(serde_json::json!({"role": super::session::role_name(role, &[])})),
        )
        .await?;
    tx.commit().await?;
    Ok((
        http::StatusCode::CREATED,
        Json(IssuedInvitation {
            id: Id(inv.id),
            token: token.expose().to_owned(),
            expires_at: inv.expires_at,
        }),
    ))
}

/// Accepting an invitation.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct Acceptance {
    /// The token from the invitation.
    pub token: String,
    /// The invited email (must match the invitation).
    pub email: String,
    /// Display name (for a new account).
    pub name: String,
    /// A new account's password (checked against the tenant's policy), or
    /// an existing account's current password.
    pub password: String,
}

/// The membership created.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Accepted {
    /// The tenant joined.
    pub tenant: String,
    /// The role.
    pub role: String,
    /// Whether a new account was created.
    pub new_account: bool,
}

/// Accepts an invitation (public: the token names the tenant).
#[utoipa::path(post, path = "/invitations/accept", request_body = Acceptance,
    responses((status = 200, body = Accepted), (status = 400), (status = 401), (status = 404),
              (status = 409), (status = 410), (status = 422)))]
pub async fn accept(
    State(state): State<AppState>,
    Client(client): Client,
    Body(req): Body<Acceptance>,
) -> Result<Json<Accepted>, ApiError> {
    super::session::bounded_credentials(&req.email, &req.password)?;
    crate::validate::bounded("name", &req.name, crate::validate::NAME)?;
    crate::validate::bounded("token", &req.token, crate::validate::NAME)?;
    let email = req.email.trim().to_lowercase();
    // A wrong token or a wrong password of an existing account is a guess:
    // charged like a sign-in, to the email and the client address.
    let attempt = state.signin.begin(&email, client.ip).await?;
    match accept_checked(&state, &client, req, email).await {
        Ok(accepted) => {
            attempt.succeeded().await.map_err(signin_store)?;
            Ok(accepted)
        }
        Err((Judged::Guess, e)) => {
            attempt.failed().await.map_err(signin_store)?;
            Err(e)
        }
        Err((Judged::NotAGuess, e)) => {
            attempt.abandon().await.map_err(signin_store)?;
            Err(e)
        }
    }
}

/// Whether a refused acceptance was a wrong secret (token or password).
enum Judged {
    Guess,
    NotAGuess,
}

fn guess(e: impl Into<ApiError>) -> (Judged, ApiError) {
    (Judged::Guess, e.into())
}

fn other(e: impl Into<ApiError>) -> (Judged, ApiError) {
    (Judged::NotAGuess, e.into())
}

fn signin_store(e: tenancy_core::StoreError) -> ApiError {
    ApiError::from(tenancy_core::signin::SignInError::Unavailable(e))
}

async fn accept_checked(
    state: &AppState,
    client: &tenancy_core::RequestMeta,
    req: Acceptance,
    email: String,
) -> Result<Json<Accepted>, (Judged, ApiError)> {
    let (tenant_id, hash) = parse_token(&req.token).map_err(guess)?;
    let tenant = state
        .data
        .tenant(tenant_id)
        .await
        .map_err(other)?
        .ok_or(InviteError::NotFound)
        .map_err(guess)?;
    let invitation = state
        .data
        .invitation(tenant_id, &hash)
        .await
        .map_err(other)?
        .ok_or(InviteError::NotFound)
        .map_err(guess)?;
    if invitation.email != email {
        return Err(guess(ApiError::forbidden(
            "this invitation was sent to another email address",
        )));
    }
    if req.name.trim().is_empty() {
        return Err(other(ApiError::invalid("name must not be empty")));
    }
    let existing = state.data.user_by_email(&email).await.map_err(other)?;
    let (user, new_account) = match existing {
        Some((id, hash)) => {
            if !state
                .hasher
                .verify(hash, req.password)
                .await
                .map_err(other)?
            {
                return Err(guess(ApiError::unauthorized(
                    "wrong password for the existing account",
                )));
            }
            (id, false)
        }
        None => {
            PasswordPolicy::of(&tenant.settings)
                .map_err(other)?
                .check(&req.password)
                .map_err(|broken| {
                    other(ApiError::invalid(format!(
                        "the password needs {}",
                        broken.join(", ")
                    )))
                })?;
            let hash = state.hasher.hash(req.password).await.map_err(other)?;
            (
                crate::seed::ensure_user_hashed(&state.data, &email, req.name.trim(), &hash)
                    .await
                    .map_err(other)?,
                true,
            )
        }
    };
    let membership = invitations(state)
        .accept(tenant_id, &req.token, &UserId::new(user.clone()))
        .await
        .map_err(other)?;
    let ctx = TenantContext::new((*tenant).clone());
    let recorded = async {
        let mut tx = state.data.begin_write(&ctx).await?;
        state
            .data
            .audit()
            .append(
                &mut tx,
                super::session::with_client(
                    AuditEvent::user(tenant_id, &user, "accept", "invitations")
                        .with_resource_id(invitation.id),
                    client,
                ),
            )
            .await?;
        tx.commit().await?;
        Ok::<(), ApiError>(())
    };
    recorded.await.map_err(other)?;
    Ok(Json(Accepted {
        tenant: tenant.slug.to_string(),
        role: super::session::role_name(membership.role, &membership.grants).to_owned(),
        new_account,
    }))
}

/// The tenant's password policy (its own, or the default).
#[utoipa::path(get, path = "/settings/password-policy",
    responses((status = 200, body = PasswordPolicy)), security(("bearer" = [])))]
pub async fn password_policy(caller: Caller) -> Result<Json<PasswordPolicy>, ApiError> {
    Ok(Json(PasswordPolicy::of(&caller.ctx.tenant().settings)?))
}

/// Sets the tenant's password policy (tenant admins).
#[utoipa::path(put, path = "/settings/password-policy", request_body = PasswordPolicy,
    responses((status = 200, body = PasswordPolicy), (status = 403), (status = 422)), security(("bearer" = [])))]
pub async fn set_password_policy(
    State(state): State<AppState>,
    caller: Caller,
    Body(policy): Body<PasswordPolicy>,
) -> Result<Json<PasswordPolicy>, ApiError> {
    if !(8..=128).contains(&policy.min_length) {
        return Err(ApiError::invalid("min_length must be between 8 and 128"));
    }
    let value = serde_json::to_value(&policy).map_err(|e| ApiError::internal(e.to_string()))?;
    super::mfa::set_security_setting(&state, &caller, "password_policy", value, false).await?;
    Ok(Json(policy))
}

/// Revokes a pending invitation (tenant admins): its seat is free again.
#[utoipa::path(delete, path = "/invitations/{id}", params(("id" = Id, Path)),
    responses((status = 204), (status = 403), (status = 404)), security(("bearer" = [])))]
pub async fn revoke(
    State(state): State<AppState>,
    caller: Caller,
    PathOf(id): PathOf<Id>,
) -> Result<http::StatusCode, ApiError> {
    if caller.role != Role::Admin {
        return Err(ApiError::forbidden("only tenant admins revoke invitations"));
    }
    if !invitations(&state)
        .revoke(caller.ctx.tenant_id(), id.0)
        .await?
    {
        return Err(ApiError::not_found("pending invitation"));
    }
    let mut tx = state.data.begin_write(&caller.ctx).await?;
    state
        .data
        .audit()
        .append(
            &mut tx,
            AuditEvent::from_context(&caller.ctx, "revoke", "invitations").with_resource_id(id),
        )
        .await?;
    tx.commit().await?;
    Ok(http::StatusCode::NO_CONTENT)
}
