//! Per-tenant identity providers: OpenID Connect access tokens verified
//! against the keys each tenant's issuer publishes (feature `oidc`).
//!
//! A tenant names the issuers it trusts in its settings
//! ([`IdentitySettings`], setting `identity`): issuer URL, audiences,
//! algorithms. An [`OidcVerifier`] — an [`Authenticate`] step of the
//! request pipeline — verifies a bearer token for the tenant the request
//! resolved to:
//!
//! 1. the token's `iss` must be one of **this tenant's** issuers, else 403
//!    `issuer-not-trusted` (a token of tenant B's provider presented to
//!    tenant A);
//! 2. its `alg` must be one the tenant allows (asymmetric only: `HS*` and
//!    `none` are never accepted, so a public key can never be used as an
//!    HMAC secret);
//! 3. the key named by its `kid` comes from the issuer's JWKS, found by
//!    OIDC discovery (`/.well-known/openid-configuration`, whose `issuer`
//!    must match exactly) and cached;
//! 4. signature, `exp` (required), `nbf`, `iss` and `aud` are checked.
//!
//! The user is `<issuer>#<sub>`: subjects are unique per issuer only, and a
//! tenant's provider must not be able to mint the id of a user of another
//! tenant (or of its parent's administrators).
//!
//! **Keys.** A key set is used for [`OidcConfig::refresh_after`] (5 min),
//! then re-fetched when next needed. A token naming a `kid` the cached set
//! lacks triggers a re-fetch at once — at most once per
//! [`OidcConfig::unknown_kid_interval`] (30 s) per issuer, so random `kid`s
//! cannot make the server hammer the provider — which is how a key rotated
//! at the provider is picked up. When the provider cannot be reached, the
//! keys already fetched keep verifying until [`OidcConfig::expire_after`]
//! (1 h); after that, or with nothing cached, the answer is 503
//! `identity-provider-unavailable` — never 500, never an unverified
//! acceptance. Failed fetches are retried at most every
//! [`OidcConfig::retry_after`] (5 s).
//!
//! **Issuer → tenant.** [`IssuerDirectory`] and [`IssuerStrategy`] resolve
//! the tenant from the token's issuer (one issuer, one tenant; a second
//! tenant claiming an issuer is refused). The issuer is read *before* the
//! signature is verified — resolution only picks the tenant whose keys will
//! then verify the token.
//!
//! ```no_run
//! use std::sync::Arc;
//! use tenancy_core::oidc::{OidcConfig, OidcVerifier};
//! use tenancy_core::pipeline::RequestPipeline;
//! use tenancy_core::resolve::{HeaderStrategy, ResolverChain};
//! use tenancy_core::store::InMemoryTenantStore;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let verifier = Arc::new(OidcVerifier::new(OidcConfig::default())?);
//! let pipeline = RequestPipeline::new(
//!     ResolverChain::new().with(HeaderStrategy::tenant_id()),
//!     Arc::new(InMemoryTenantStore::new()),
//! )
//! .authenticate_with(verifier);
//! # Ok(()) }
//! ```

mod directory;
mod fetch;
mod keys;
mod settings;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde_json::{Map, Value};

pub use directory::{IssuerDirectory, IssuerStrategy};
pub use fetch::{Fetch, FetchError, HttpFetch, MAX_DOCUMENT_BYTES};
pub use settings::{IdentitySettings, IssuerSettings, SETTING};

use crate::identity::{Authenticate, Principal, bearer};
use crate::quota::{Clock, SystemClock};
use crate::resolve::RequestView;
use crate::{StoreError, Tenant, TenantError, UserId};

/// Why a token could not be verified, or settings not used.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum OidcError {
    /// The tenant's identity settings are malformed.
    #[error("identity settings are invalid: {reason}")]
    Settings {
        /// What is wrong.
        reason: String,
    },
    /// The provider's discovery document or key set could not be fetched.
    #[error(transparent)]
    Fetch(#[from] FetchError),
    /// The provider's discovery document or key set is malformed.
    #[error("identity provider {issuer}: {reason}")]
    Provider {
        /// The issuer.
        issuer: String,
        /// What is wrong.
        reason: String,
    },
    /// An issuer is already mapped to another tenant.
    #[error("issuer {issuer} already belongs to tenant {tenant}: one issuer resolves one tenant")]
    IssuerTaken {
        /// The issuer.
        issuer: String,
        /// The tenant that has it.
        tenant: crate::TenantId,
    },
}

/// Timings of an [`OidcVerifier`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct OidcConfig {
    /// A key set is re-fetched when used after this long (5 min).
    pub refresh_after: Duration,
    /// A key set is not used after this long without a successful fetch:
    /// then the provider being down means 503 (1 h).
    pub expire_after: Duration,
    /// A `kid` the cached set lacks re-fetches at most this often per
    /// issuer (30 s).
    pub unknown_kid_interval: Duration,
    /// After a failed fetch, the next is tried no sooner (5 s).
    pub retry_after: Duration,
    /// HTTP timeout of one fetch (5 s).
    pub timeout: Duration,
    /// Clock skew allowed for `exp` and `nbf` (30 s).
    pub leeway: Duration,
    /// Whether plain `http://` issuers on a loopback host are accepted
    /// (tests and local development only; off by default).
    pub allow_http_loopback: bool,
}

impl Default for OidcConfig {
    fn default() -> Self {
        Self {
            refresh_after: Duration::from_secs(300),
            expire_after: Duration::from_secs(3600),
            unknown_kid_interval: Duration::from_secs(30),
            retry_after: Duration::from_secs(5),
            timeout: Duration::from_secs(5),
            leeway: Duration::from_secs(30),
            allow_http_loopback: false,
        }
    }
}

impl OidcConfig {
    /// The same with plain http allowed to loopback issuers.
    pub fn allow_http_loopback(mut self, allow: bool) -> Self {
        self.allow_http_loopback = allow;
        self
    }

    /// The same with these key-set lifetimes.
    pub fn with_key_lifetimes(mut self, refresh_after: Duration, expire_after: Duration) -> Self {
        self.refresh_after = refresh_after;
        self.expire_after = expire_after;
        self
    }

    /// The same with this minimum interval between `kid`-triggered
    /// re-fetches, and between retries of a failed fetch.
    pub fn with_refetch_intervals(mut self, unknown_kid: Duration, retry: Duration) -> Self {
        self.unknown_kid_interval = unknown_kid;
        self.retry_after = retry;
        self
    }

    /// The same with this HTTP timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The same with this clock skew allowance.
    pub fn with_leeway(mut self, leeway: Duration) -> Self {
        self.leeway = leeway;
        self
    }
}

/// Verifies bearer tokens of per-tenant identity providers. See the
/// [module docs](self).
#[derive(Clone)]
pub struct OidcVerifier {
    keys: Arc<keys::KeyCache>,
    config: OidcConfig,
}

impl std::fmt::Debug for OidcVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcVerifier")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// The token's header and its unverified `iss` (to pick the issuer).
struct Peek {
    alg: Algorithm,
    kid: Option<String>,
    iss: String,
}

fn invalid(reason: impl Into<Arc<str>>) -> TenantError {
    TenantError::InvalidToken {
        reason: reason.into(),
    }
}

fn peek(token: &str) -> Result<Peek, TenantError> {
    let header =
        jsonwebtoken::decode_header(token).map_err(|_| invalid("token header is malformed"))?;
    let iss = crate::identity::unverified_issuer(token)
        .ok_or_else(|| invalid("token names no issuer"))?;
    Ok(Peek {
        alg: header.alg,
        kid: header.kid,
        iss,
    })
}

/// The unverified `iss` of a JWT (for choosing which tenant's keys verify it).
pub fn unverified_issuer(token: &str) -> Result<String, TenantError> {
    peek(token).map(|p| p.iss)
}

impl OidcVerifier {
    /// A verifier fetching over HTTPS with [`HttpFetch`].
    pub fn new(config: OidcConfig) -> Result<Self, OidcError> {
        Ok(Self::with_fetch(
            config,
            Arc::new(HttpFetch::new(config.timeout)?),
        ))
    }

    /// A verifier fetching documents with `fetch`.
    pub fn with_fetch(config: OidcConfig, fetch: Arc<dyn Fetch>) -> Self {
        Self::with_fetch_and_clock(config, fetch, Arc::new(SystemClock))
    }

    /// [`Self::with_fetch`] reading time from `clock` (tests).
    pub fn with_fetch_and_clock(
        config: OidcConfig,
        fetch: Arc<dyn Fetch>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            keys: Arc::new(keys::KeyCache::new(fetch, clock, config)),
            config,
        }
    }

    /// Verifies `token` for `tenant`: the principal, or why not (401
    /// invalid, 403 issuer not trusted by this tenant, 503 provider
    /// unreachable with nothing usable cached).
    pub async fn verify(&self, tenant: &Tenant, token: &str) -> Result<Principal, TenantError> {
        let peeked = peek(token)?;
        let settings = IdentitySettings::of(tenant)
            .map_err(|e| TenantError::Store(StoreError::new(e)))?
            .ok_or(TenantError::IssuerNotTrusted)?;
        let issuer = settings
            .issuer(&peeked.iss)
            .ok_or(TenantError::IssuerNotTrusted)?;
        settings::check_url(&issuer.issuer, self.config.allow_http_loopback)
            .map_err(|e| TenantError::Store(StoreError::new(e)))?;
        let allowed = issuer
            .parsed_algorithms()
            .map_err(|e| TenantError::Store(StoreError::new(e)))?;
        if !allowed.contains(&peeked.alg) {
            return Err(invalid(
                "token uses an algorithm this tenant does not accept",
            ));
        }
        let key = self
            .keys
            .key(issuer, peeked.kid.as_deref(), peeked.alg)
            .await?;
        let mut validation = Validation::new(peeked.alg);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.set_issuer(&[issuer.issuer.as_str()]);
        validation.set_audience(&issuer.audiences);
        validation.validate_nbf = true;
        validation.leeway = self.config.leeway.as_secs();
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key.decoding, &validation)
            .map_err(|e| invalid(describe(e.kind())))?;
        let claims = data.claims;
        let subject = match claims.get(issuer.subject_claim()) {
            Some(Value::String(s)) if !s.is_empty() && s.len() <= 255 => s.clone(),
            _ => return Err(invalid("token names no subject")),
        };
        let user = UserId::new(format!("{}#{}", issuer.issuer, subject));
        Ok(Principal::new(user, issuer.issuer.as_str()).with_claims(claims))
    }
}

fn describe(kind: &ErrorKind) -> &'static str {
    match kind {
        ErrorKind::ExpiredSignature => "token has expired",
        ErrorKind::InvalidSignature => "token signature does not verify",
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
            "token algorithm does not match its key"
        }
        ErrorKind::MissingRequiredClaim(_) => "token lacks a required claim (exp, iss, aud)",
        ErrorKind::InvalidIssuer => "token issuer is not accepted",
        ErrorKind::InvalidAudience => "token audience is not accepted",
        ErrorKind::ImmatureSignature => "token is not valid yet",
        _ => "token is malformed",
    }
}

#[async_trait]
impl Authenticate for OidcVerifier {
    /// Judges every bearer token: a token of an issuer the tenant does not
    /// trust is 403. Put authenticators of your own tokens (the
    /// application's sessions) before it in an
    /// [`Authenticators`](crate::identity::Authenticators) chain.
    async fn authenticate(
        &self,
        req: &(dyn RequestView + Sync),
        tenant: &Tenant,
    ) -> Result<Option<Principal>, TenantError> {
        let Some(token) = bearer(req)? else {
            return Ok(None);
        };
        let verified = self.verify(tenant, token).await;
        if let Err(e) = &verified {
            tracing::info!(tenant.id = %tenant.id, error = %e, "bearer token refused");
        }
        verified.map(Some)
    }
}
