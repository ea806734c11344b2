use std::sync::Arc;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use super::{NameKind, RequestView, Strategy};
use crate::TenantError;
use crate::store::TenantRef;

/// Names the tenant by a claim of a verified bearer token (feature `jwt`).
///
/// The token is read from `Authorization: Bearer <token>`, its signature is
/// verified with the configured key and **only** the configured algorithm
/// (HS256 or RS256; `alg: none` and algorithm switching are refused), and
/// `exp` is required and checked. The tenant is read from the `tenant_id`
/// claim by default. A request without a bearer token does not match; a
/// bearer token that fails any check is [`TenantError::InvalidToken`] (401).
///
/// ```
/// use jsonwebtoken::{encode, EncodingKey, Header};
/// use tenancy_core::resolve::{JwtStrategy, SimpleRequest, Strategy};
/// use tenancy_core::store::TenantRef;
/// use tenancy_core::TenantId;
///
/// let secret = b"a-long-random-secret-from-configuration";
/// let tenant = TenantId::new_v4();
/// let claims = serde_json::json!({
///     "sub": "user-1",
///     "tenant_id": tenant.to_string(),
///     "exp": jsonwebtoken::get_current_timestamp() + 600,
/// });
/// let token = encode(&Header::default(), &claims, &EncodingKey::from_secret(secret))?;
///
/// let s = JwtStrategy::hs256(secret);
/// let req = SimpleRequest::new("/").with_header("authorization", format!("Bearer {token}"));
/// assert_eq!(s.identify(&req)?, Some(TenantRef::Id(tenant)));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct JwtStrategy {
    key: Arc<DecodingKey>,
    validation: Arc<Validation>,
    claim: Arc<str>,
    kind: NameKind,
    /// When set: tokens naming another issuer are not this strategy's.
    own_issuer: Option<Arc<str>>,
}

impl std::fmt::Debug for JwtStrategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtStrategy")
            .field("algorithms", &self.validation.algorithms)
            .field("claim", &self.claim)
            .finish_non_exhaustive()
    }
}

/// A verification key could not be read.
#[derive(Debug, thiserror::Error)]
#[error("invalid JWT verification key: {0}")]
pub struct JwtKeyError(#[from] jsonwebtoken::errors::Error);

impl JwtStrategy {
    fn with_key(key: DecodingKey, alg: Algorithm) -> Self {
        let mut validation = Validation::new(alg);
        validation.set_required_spec_claims(&["exp"]);
        validation.validate_exp = true;
        validation.leeway = 30;
        Self {
            key: Arc::new(key),
            validation: Arc::new(validation),
            claim: "tenant_id".into(),
            kind: NameKind::Id,
            own_issuer: None,
        }
    }

    /// Verifies HS256 tokens with a shared secret.
    pub fn hs256(secret: &[u8]) -> Self {
        Self::with_key(DecodingKey::from_secret(secret), Algorithm::HS256)
    }

    /// Verifies RS256 tokens with an RSA public key in PEM form.
    pub fn rs256_pem(public_key_pem: &[u8]) -> Result<Self, JwtKeyError> {
        Ok(Self::with_key(
            DecodingKey::from_rsa_pem(public_key_pem)?,
            Algorithm::RS256,
        ))
    }

    /// Reads the tenant from `claim` instead of `tenant_id`.
    pub fn claim(mut self, claim: &str) -> Self {
        self.claim = claim.into();
        self
    }

    /// The claim holds a slug rather than an id.
    pub fn claim_is_slug(mut self) -> Self {
        self.kind = NameKind::Slug;
        self
    }

    /// Requires the `iss` claim to be one of `issuers`.
    pub fn issuer(mut self, issuers: &[&str]) -> Self {
        Arc::make_mut(&mut self.validation).set_issuer(issuers);
        self
    }

    /// Judges only the tokens of `issuer` (the application's own sessions):
    /// a token whose — unverified — `iss` names another issuer does not
    /// match, and is left to other strategies and authenticators (an
    /// identity provider's tokens, see `tenancy_core::oidc`). Tokens of
    /// `issuer` must verify and carry exactly that `iss`.
    ///
    /// ```
    /// use jsonwebtoken::{encode, EncodingKey, Header};
    /// use tenancy_core::resolve::{JwtStrategy, SimpleRequest, Strategy};
    ///
    /// let s = JwtStrategy::hs256(b"a-long-random-secret-from-configuration").only_issuer("my-app");
    /// let foreign = serde_json::json!({"iss": "https://idp.example", "exp": jsonwebtoken::get_current_timestamp() + 60});
    /// let token = encode(&Header::default(), &foreign, &EncodingKey::from_secret(b"whatever"))?;
    /// let req = SimpleRequest::new("/").with_header("authorization", format!("Bearer {token}"));
    /// assert_eq!(s.identify(&req)?, None);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn only_issuer(mut self, issuer: &str) -> Self {
        self.own_issuer = Some(issuer.into());
        Arc::make_mut(&mut self.validation).set_issuer(&[issuer]);
        Arc::make_mut(&mut self.validation).set_required_spec_claims(&["exp", "iss"]);
        self
    }

    /// Requires the `aud` claim to contain one of `audiences`.
    pub fn audience(mut self, audiences: &[&str]) -> Self {
        Arc::make_mut(&mut self.validation).set_audience(audiences);
        self
    }

    /// Allowed clock skew in seconds for `exp` and `nbf` (default 30).
    pub fn leeway(mut self, seconds: u64) -> Self {
        Arc::make_mut(&mut self.validation).leeway = seconds;
        self
    }

    /// Verifies `token` and returns its claims.
    ///
    /// Use it to read other claims (the user) from the same token.
    pub fn verify(&self, token: &str) -> Result<Map<String, Value>, TenantError> {
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &self.key, &self.validation)
            .map_err(|e| invalid(describe(e.kind())))?;
        Ok(data.claims)
    }
}

fn invalid(reason: &str) -> TenantError {
    TenantError::InvalidToken {
        reason: reason.into(),
    }
}

fn describe(kind: &ErrorKind) -> &'static str {
    match kind {
        ErrorKind::ExpiredSignature => "token has expired",
        ErrorKind::InvalidSignature => "token signature does not verify",
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
            "token uses an algorithm this server does not accept"
        }
        ErrorKind::MissingRequiredClaim(_) => "token lacks a required claim (exp)",
        ErrorKind::InvalidIssuer => "token issuer is not accepted",
        ErrorKind::InvalidAudience => "token audience is not accepted",
        ErrorKind::ImmatureSignature => "token is not valid yet",
        _ => "token is malformed",
    }
}

impl Strategy for JwtStrategy {
    fn name(&self) -> &'static str {
        "jwt"
    }

    fn identify(&self, req: &dyn RequestView) -> Result<Option<TenantRef>, TenantError> {
        // Another scheme (Basic, …) is not ours to judge.
        let Some(token) = crate::identity::bearer(req)? else {
            return Ok(None);
        };
        if let Some(own) = &self.own_issuer
            && crate::identity::unverified_issuer(token).as_deref() != Some(&**own)
        {
            return Ok(None);
        }
        let claims = self.verify(token)?;
        let Some(Value::String(named)) = claims.get(&*self.claim) else {
            return Err(TenantError::InvalidToken {
                reason: format!("token has no string claim {:?}", &*self.claim).into(),
            });
        };
        self.kind.parse(named.as_bytes()).map(Some)
    }
}
