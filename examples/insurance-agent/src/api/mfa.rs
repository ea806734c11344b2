//! Multi-factor authentication: TOTP enrolment and confirmation (with the
//! password, throttled like a sign-in), and the tenant's "MFA required"
//! security setting.

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use tenancy_core::audit::{Action, AuditEvent};
use tenancy_core::store::TenantUpdate;
use tenancy_core::{Role, Tenant};

use super::{ApiError, AppState, Body, Caller, Client};
use crate::auth::totp;

/// An account's credentials, and a TOTP code where one is asked for.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct MfaRequest {
    /// The account's email.
    pub email: String,
    /// Its password.
    pub password: String,
    /// A code from the authenticator (confirmation only).
    #[serde(default)]
    pub code: Option<String>,
}

/// A new, unconfirmed TOTP enrolment.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Enrolment {
    /// The secret (base32) for the authenticator app.
    pub secret: String,
    /// The same as an `otpauth://` URI (for a QR code).
    pub otpauth_uri: String,
}

/// The tenant's security policy (tenant setting `security`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct SecurityPolicy {
    /// Every sign-in to this tenant needs a TOTP code.
    pub mfa_required: bool,
}

impl SecurityPolicy {
    /// The policy in a tenant's settings (the default when absent); a
    /// malformed setting is an error.
    pub fn of(tenant: &Tenant) -> Result<Self, ApiError> {
        match tenant.settings.get("security") {
            None | Some(serde_json::Value::Null) => Ok(Self::default()),
            Some(v) => serde_json::from_value(v.clone()).map_err(|e| {
                ApiError::internal(format!("tenant setting security is invalid: {e}"))
            }),
        }
    }
}

fn refused() -> ApiError {
    ApiError::unauthorized("email, password or code is wrong")
}

/// The account of `req` when its password is right, charged to the sign-in
/// limits: `Ok(None)` is a wrong email or password (already counted).
async fn account(
    state: &AppState,
    client: &tenancy_core::RequestMeta,
    req: &MfaRequest,
) -> Result<(String, tenancy_core::signin::SignInAttempt), ApiError> {
    super::session::bounded_credentials(&req.email, &req.password)?;
    let email = req.email.trim().to_lowercase();
    let attempt = state.signin.begin(&email, client.ip).await?;
    let row = state.data.user_by_email(&email).await?;
    let known = row.is_some();
    let (user, hash) = row.unwrap_or_else(|| (String::new(), super::session::dummy_hash()));
    let ok = match state.hasher.verify(hash, req.password.clone()).await {
        Ok(ok) => ok,
        Err(busy) => {
            attempt
                .abandon()
                .await
                .map_err(super::session::signin_store)?;
            return Err(busy);
        }
    };
    if !(known && ok) {
        attempt
            .failed()
            .await
            .map_err(super::session::signin_store)?;
        return Err(refused());
    }
    Ok((user, attempt))
}

/// Starts a TOTP enrolment: returns the secret to put in an authenticator
/// app. It takes effect once confirmed with a code. An account with a
/// confirmed enrolment gets 409.
#[utoipa::path(post, path = "/auth/mfa/enroll", request_body = MfaRequest,
    responses((status = 200, body = Enrolment), (status = 401), (status = 409), (status = 429)))]
pub async fn enroll(
    State(state): State<AppState>,
    Client(client): Client,
    Body(req): Body<MfaRequest>,
) -> Result<Json<Enrolment>, ApiError> {
    let (user, attempt) = account(&state, &client, &req).await?;
    attempt
        .succeeded()
        .await
        .map_err(super::session::signin_store)?;
    let secret = totp::new_secret();
    if !state.data.enrol_totp(&user, &secret).await? {
        return Err(ApiError::conflict(
            "this account already has an authenticator; it cannot be replaced here",
        ));
    }
    Ok(Json(Enrolment {
        secret: totp::base32(&secret),
        otpauth_uri: totp::uri(&secret, &req.email.trim().to_lowercase()),
    }))
}

/// Confirms a pending enrolment with a current code.
#[utoipa::path(post, path = "/auth/mfa/confirm", request_body = MfaRequest,
    responses((status = 204, description = "Confirmed"), (status = 401), (status = 429)))]
pub async fn confirm(
    State(state): State<AppState>,
    Client(client): Client,
    Body(req): Body<MfaRequest>,
) -> Result<http::StatusCode, ApiError> {
    let (user, attempt) = account(&state, &client, &req).await?;
    let pending = match state.data.totp_of(&user).await? {
        Some((secret, false)) => Some(secret),
        _ => None,
    };
    let now = jsonwebtoken::get_current_timestamp();
    let step = pending
        .as_deref()
        .zip(req.code.as_deref())
        .and_then(|(secret, code)| totp::step_of(secret, code, now));
    match step {
        Some(step) if state.data.use_totp_step(&user, step, false).await? => {
            attempt
                .succeeded()
                .await
                .map_err(super::session::signin_store)?;
            Ok(http::StatusCode::NO_CONTENT)
        }
        _ => {
            attempt
                .failed()
                .await
                .map_err(super::session::signin_store)?;
            Err(refused())
        }
    }
}

/// The tenant's security policy.
#[utoipa::path(get, path = "/settings/security",
    responses((status = 200, body = SecurityPolicy)), security(("bearer" = [])))]
pub async fn security(caller: Caller) -> Result<Json<SecurityPolicy>, ApiError> {
    Ok(Json(SecurityPolicy::of(caller.ctx.tenant())?))
}

/// Sets the tenant's security policy (tenant admins, in person: not through
/// an impersonation).
#[utoipa::path(put, path = "/settings/security", request_body = SecurityPolicy,
    responses((status = 200, body = SecurityPolicy), (status = 403)), security(("bearer" = [])))]
pub async fn set_security(
    State(state): State<AppState>,
    caller: Caller,
    Body(policy): Body<SecurityPolicy>,
) -> Result<Json<SecurityPolicy>, ApiError> {
    let value = serde_json::to_value(&policy).map_err(|e| ApiError::internal(e.to_string()))?;
    set_security_setting(&state, &caller, "security", value, true).await?;
    Ok(Json(policy))
}

/// Sets one security setting of the caller's tenant: tenant admins only, in
/// person (never through an impersonation); audited (`update` of
/// `settings`, with the new value when `with_value`), then merged into the
/// record as stored — a concurrent plan or settings change is kept.
pub(crate) async fn set_security_setting(
    state: &AppState,
    caller: &Caller,
    key: &'static str,
    value: serde_json::Value,
    with_value: bool,
) -> Result<(), ApiError> {
    tenancy_core::identity::forbid_impersonated(&caller.ctx)?;
    if caller.role != Role::Admin {
        return Err(ApiError::forbidden(format!(
            "only tenant admins change {key}"
        )));
    }
    let mut event =
        AuditEvent::from_context(&caller.ctx, Action::UPDATE, "settings").with_fields([key]);
    if with_value {
        event = event.with_details(serde_json::json!({ key: value }));
    }
    let mut tx = state.data.begin_write(&caller.ctx).await?;
    state.data.audit().append(&mut tx, event).await?;
    tx.commit().await?;
    state
        .data
        .update_tenant(
            caller.ctx.tenant_id(),
            &TenantUpdate::new().settings_patch(serde_json::json!({ key: value })),
        )
        .await?;
    Ok(())
}
