//! Who is calling: the authenticated [`Principal`] of a request, found by an
//! [`Authenticate`] step of the request pipeline once the tenant is known.
//!
//! Authentication belongs after tenant resolution: whether a credential is
//! valid depends on the tenant — which identity providers it trusts
//! ([`crate::oidc`]), whether its sessions were revoked, which networks it
//! accepts. [`RequestPipeline::authenticate_with`](crate::pipeline::RequestPipeline::authenticate_with)
//! runs an `Authenticate` for every request; its principal becomes the user
//! whose membership the pipeline checks.
//!
//! ```
//! use async_trait::async_trait;
//! use tenancy_core::identity::{Authenticate, Principal};
//! use tenancy_core::resolve::RequestView;
//! use tenancy_core::{Tenant, TenantError, UserId};
//!
//! /// Trusts an `x-user` header: for a test, never for production.
//! struct HeaderUser;
//!
//! #[async_trait]
//! impl Authenticate for HeaderUser {
//!     async fn authenticate(
//!         &self,
//!         req: &(dyn RequestView + Sync),
//!         _tenant: &Tenant,
//!     ) -> Result<Option<Principal>, TenantError> {
//!         Ok(match req.header("x-user") {
//!             tenancy_core::resolve::HeaderLookup::One(v) => {
//!                 Some(Principal::new(UserId::new(String::from_utf8_lossy(v)), "test"))
//!             }
//!             _ => None,
//!         })
//!     }
//! }
//! ```

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::{Map, Value};

use crate::resolve::RequestView;
use crate::{Tenant, TenantError, UserId};

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Principal {
    /// The user, as memberships name it. For an external identity provider
    /// this is `<issuer>#<subject>`: a subject is unique only within its
    /// issuer, and one tenant's provider must never mint another tenant's
    /// user ids.
    pub user: UserId,
    /// Who vouched for the caller (an issuer URL, or the application's own
    /// session issuer).
    pub issuer: Arc<str>,
    /// The verified claims of the credential (empty when it had none).
    pub claims: Map<String, Value>,
    /// The operator acting as `user` through an explicit, time-limited
    /// impersonation grant (`None`: the user in person).
    pub impersonator: Option<Arc<str>>,
}

impl Principal {
    /// A principal without claims.
    pub fn new(user: UserId, issuer: impl Into<Arc<str>>) -> Self {
        Self {
            user,
            issuer: issuer.into(),
            claims: Map::new(),
            impersonator: None,
        }
    }

    /// The same principal, acted by `operator` (an impersonation grant).
    pub fn with_impersonator(mut self, operator: impl Into<Arc<str>>) -> Self {
        self.impersonator = Some(operator.into());
        self
    }

    /// The same principal with `claims`.
    pub fn with_claims(mut self, claims: Map<String, Value>) -> Self {
        self.claims = claims;
        self
    }
}

/// Authenticates a request for a tenant.
#[async_trait]
pub trait Authenticate: Send + Sync {
    /// The principal of `req` in `tenant`: `Ok(None)` when the request
    /// carries no credential this authenticator handles (the next one, or
    /// the adapter's user, is tried); an error when it carries one that does
    /// not hold (401 invalid, 403 untrusted issuer, 503 provider down).
    async fn authenticate(
        &self,
        req: &(dyn RequestView + Sync),
        tenant: &Tenant,
    ) -> Result<Option<Principal>, TenantError>;
}

/// Several authenticators, asked in order; the first that recognises the
/// request's credential decides.
#[derive(Clone, Default)]
pub struct Authenticators {
    each: Vec<Arc<dyn Authenticate>>,
}

impl std::fmt::Debug for Authenticators {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticators")
            .field("count", &self.each.len())
            .finish()
    }
}

impl Authenticators {
    /// None yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `auth` after the others.
    pub fn with(mut self, auth: Arc<dyn Authenticate>) -> Self {
        self.each.push(auth);
        self
    }
}

#[async_trait]
impl Authenticate for Authenticators {
    async fn authenticate(
        &self,
        req: &(dyn RequestView + Sync),
        tenant: &Tenant,
    ) -> Result<Option<Principal>, TenantError> {
        for auth in &self.each {
            if let Some(p) = auth.authenticate(req, tenant).await? {
                return Ok(Some(p));
            }
        }
        Ok(None)
    }
}

/// The claims of a JWT, read **without** verifying it (`None` when it is not
/// a readable JWT): for choosing who verifies it (its issuer), never for
/// trusting it.
///
/// ```
/// let token = "eyJhbGciOiJub25lIn0.eyJpc3MiOiJodHRwczovL2lkcC5leGFtcGxlIn0.";
/// let claims = tenancy_core::identity::unverified_claims(token).unwrap();
/// assert_eq!(claims["iss"], "https://idp.example");
/// ```
pub fn unverified_claims(token: &str) -> Option<Map<String, Value>> {
    use base64::Engine;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The `iss` of a JWT, unverified (see [`unverified_claims`]).
pub fn unverified_issuer(token: &str) -> Option<String> {
    match unverified_claims(token)?.remove("iss") {
        Some(Value::String(iss)) => Some(iss),
        _ => None,
    }
}

/// Refuses an impersonated session: call it first in every handler that
/// changes credentials, MFA or security settings — an operator acting as a
/// user must not be able to keep access, or lock the user out, after the
/// grant ends.
///
/// ```
/// use tenancy_core::{Actor, Role, Tenant, TenantContext, TenantId, UserId};
/// use tenancy_core::identity::forbid_impersonated;
///
/// let tenant = Tenant::new(TenantId::new_v4(), "acme".parse()?, "Acme");
/// let ann = Actor::new(UserId::new("ann"), Role::Admin, Vec::new());
/// let own = TenantContext::new(tenant.clone()).with_actor(ann.clone());
/// assert!(forbid_impersonated(&own).is_ok());
/// let acted = TenantContext::new(tenant).with_actor(ann.impersonated_by("operator:sam"));
/// assert_eq!(forbid_impersonated(&acted).unwrap_err().code(), "impersonation-forbidden");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn forbid_impersonated(ctx: &crate::TenantContext) -> Result<(), TenantError> {
    match ctx.actor().and_then(|a| a.impersonator.as_ref()) {
        Some(_) => Err(TenantError::Impersonated),
        None => Ok(()),
    }
}

/// The bearer token of a request, if it has exactly one `Authorization:
/// Bearer` header. A malformed one is an error.
pub fn bearer(req: &dyn RequestView) -> Result<Option<&str>, TenantError> {
    let Some(value) = crate::resolve::single_header(req, "authorization")? else {
        return Ok(None);
    };
    let Some(token) = value
        .strip_prefix(b"Bearer ")
        .or_else(|| value.strip_prefix(b"bearer "))
    else {
        return Ok(None);
    };
    if token.len() > crate::resolve::MAX_HEADER_LEN {
        return Err(TenantError::InvalidToken {
            reason: "token is too long".into(),
        });
    }
    std::str::from_utf8(token)
        .map(|t| Some(t.trim()))
        .map_err(|_| TenantError::InvalidToken {
            reason: "token is not ASCII".into(),
        })
}
