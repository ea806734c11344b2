//! Accounts and sessions: argon2id password hashes (off the async workers),
//! a tenant-configurable password policy, and HS256 JWTs that carry the user
//! and the tenant: short-lived access tokens and refresh tokens.

use std::sync::Arc;

use argon2::Argon2;
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use tenancy_core::identity::{Authenticate, Principal};
use tenancy_core::resolve::RequestView;
use tenancy_core::session::SessionEpochs;
use tenancy_core::{Role, Tenant, TenantError, TenantId, UserId};

use crate::api::ApiError;

/// Hashes a password with argon2id and a random salt (PHC string).
pub fn hash_password(password: &str) -> Result<String, ApiError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| ApiError::internal(format!("hashing a password: {e}")))
}

/// Whether `password` matches the stored `hash`. A malformed stored hash is
/// a mismatch (and logged), never a match.
pub fn verify_password(hash: &str, password: &str) -> bool {
    match PasswordHash::new(hash) {
        Ok(parsed) => Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(e) => {
            tracing::error!(error = %e, "stored password hash is malformed");
            false
        }
    }
}

/// Password hashing off the async workers, a bounded number at a time.
///
/// argon2 is meant to cost CPU; run on the async workers it stalls every
/// other request (every tenant's) while it works. Here each hash runs on the
/// blocking pool, behind a semaphore of `permits` (by default half the
/// CPUs, at least one), so sign-in floods queue for the permits and the
/// other cores keep serving. A caller that waits longer than `wait` for a
/// permit gets 503 with `Retry-After` instead of queueing for ever.
#[derive(Debug, Clone)]
pub struct Hasher {
    permits: Arc<tokio::sync::Semaphore>,
    wait: std::time::Duration,
}

impl Default for Hasher {
    fn default() -> Self {
        Self::new(default_hashing_permits())
    }
}

/// Half the CPUs, at least one.
pub fn default_hashing_permits() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
}

impl Hasher {
    /// At most `permits` hashes at once (at least one).
    pub fn new(permits: usize) -> Self {
        Self {
            permits: Arc::new(tokio::sync::Semaphore::new(permits.max(1))),
            wait: std::time::Duration::from_secs(3),
        }
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        let permit = tokio::time::timeout(self.wait, self.permits.clone().acquire_owned())
            .await
            .map_err(|_| {
                tracing::warn!("password hashing is saturated; a sign-in was turned away");
                ApiError::unavailable("the server is busy signing people in; retry shortly")
            })?
            .map_err(|_| ApiError::internal("the hashing semaphore was closed"))?;
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            work()
        })
        .await
        .map_err(|e| ApiError::internal(format!("password hashing task failed: {e}")))
    }

    /// [`hash_password`], off the async workers.
    pub async fn hash(&self, password: String) -> Result<String, ApiError> {
        self.run(move || hash_password(&password)).await?
    }

    /// [`verify_password`], off the async workers.
    pub async fn verify(&self, hash: String, password: String) -> Result<bool, ApiError> {
        self.run(move || verify_password(&hash, &password)).await
    }
}

/// TOTP (RFC 6238) as authenticator apps use it: SHA-1, 6 digits, 30 s
/// steps, one step of clock skew either way.
pub mod totp {
    use totp_rs::{Algorithm, TOTP};

    /// Seconds per step.
    pub const STEP: u64 = 30;

    fn totp(secret: &[u8], digits: usize, algorithm: Algorithm) -> TOTP {
        TOTP::new_unchecked(algorithm, digits, 1, STEP, secret.to_vec())
    }

    /// A new random 160-bit secret.
    pub fn new_secret() -> Vec<u8> {
        use argon2::password_hash::rand_core::{OsRng, RngCore};
        let mut secret = vec![0u8; 20];
        OsRng.fill_bytes(&mut secret);
        secret
    }

    /// The secret in base32, as authenticator apps take it.
    pub fn base32(secret: &[u8]) -> String {
        totp(secret, 6, Algorithm::SHA1).get_secret_base32()
    }

    /// A base32 secret as bytes (`None` when malformed).
    pub fn from_base32(text: &str) -> Option<Vec<u8>> {
        totp_rs::Secret::Encoded(text.to_owned()).to_bytes().ok()
    }

    /// The `otpauth://` URI for a QR code.
    pub fn uri(secret: &[u8], account: &str) -> String {
        let label: String = account
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-' | b'_' => {
                    char::from(b).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        format!(
            "otpauth://totp/insurance-agent:{label}?secret={}&issuer=insurance-agent&algorithm=SHA1&digits=6&period={STEP}",
            base32(secret)
        )
    }

    /// The code for `time` (seconds since the epoch).
    pub fn code(secret: &[u8], time: u64) -> String {
        totp(secret, 6, Algorithm::SHA1).generate(time)
    }

    /// The time step `code` belongs to, within one step of `now`; `None`
    /// when it matches none (compared in constant time).
    pub fn step_of(secret: &[u8], code: &str, now: u64) -> Option<u64> {
        if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let t = totp(secret, 6, Algorithm::SHA1);
        let here = now / STEP;
        [here.saturating_sub(1), here, here + 1]
            .into_iter()
            .find(|s| same(t.generate(s * STEP).as_bytes(), code.as_bytes()))
    }

    /// Equal bytes, compared without an early exit.
    fn same(a: &[u8], b: &[u8]) -> bool {
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        /// RFC 6238 appendix B (8 digits, SHA-1 and SHA-256 seeds).
        #[test]
        fn rfc_6238_test_vectors() {
            let sha1 = b"12345678901234567890";
            let sha256 = b"12345678901234567890123456789012";
            for (time, want1, want256) in [
                (59, "94287082", "46119246"),
                (1_111_111_109, "07081804", "68084774"),
                (1_111_111_111, "14050471", "67062674"),
                (1_234_567_890, "89005924", "91819424"),
                (2_000_000_000, "69279037", "90698825"),
                (20_000_000_000, "65353130", "77737706"),
            ] {
                assert_eq!(
                    totp(sha1, 8, Algorithm::SHA1).generate(time),
                    want1,
                    "{time}"
                );
                assert_eq!(
                    totp(sha256, 8, Algorithm::SHA256).generate(time),
                    want256,
                    "{time}"
                );
            }
        }

        #[test]
        fn codes_match_their_step_within_one_step_only() {
            let secret = new_secret();
            let now = 1_700_000_000;
            let c = code(&secret, now);
            assert_eq!(step_of(&secret, &c, now), Some(now / STEP));
            assert_eq!(step_of(&secret, &c, now + STEP), Some(now / STEP));
            assert_eq!(step_of(&secret, &c, now + 3 * STEP), None);
            assert_eq!(step_of(&secret, "12345", now), None);
            assert!(uri(&secret, "ann@x.test").contains("ann%40x.test"));
        }
    }
}

/// A tenant's password rules (tenant setting `password_policy`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct PasswordPolicy {
    /// Minimum length in characters.
    pub min_length: usize,
    /// At least one upper-case letter.
    pub require_upper: bool,
    /// At least one lower-case letter.
    pub require_lower: bool,
    /// At least one digit.
    pub require_digit: bool,
    /// At least one character that is not a letter or digit.
    pub require_symbol: bool,
}

impl Default for PasswordPolicy {
    fn default() -> Self {
        Self {
            min_length: 10,
            require_upper: true,
            require_lower: true,
            require_digit: true,
            require_symbol: false,
        }
    }
}

impl PasswordPolicy {
    /// The policy in a tenant's settings, or the default. A malformed
    /// setting is an error, not a silent default.
    pub fn of(settings: &serde_json::Value) -> Result<Self, ApiError> {
        match settings.get("password_policy") {
            None | Some(serde_json::Value::Null) => Ok(Self::default()),
            Some(v) => serde_json::from_value(v.clone()).map_err(|e| {
                ApiError::internal(format!("tenant setting password_policy is invalid: {e}"))
            }),
        }
    }

    /// `Ok` when `password` satisfies every rule; otherwise every rule it breaks.
    pub fn check(&self, password: &str) -> Result<(), Vec<String>> {
        let mut broken = Vec::new();
        if password.chars().count() < self.min_length {
            broken.push(format!("at least {} characters", self.min_length));
        }
        let has = |f: fn(&char) -> bool| password.chars().any(|c| f(&c));
        if self.require_upper && !has(char::is_ascii_uppercase) {
            broken.push("an upper-case letter".to_owned());
        }
        if self.require_lower && !has(char::is_ascii_lowercase) {
            broken.push("a lower-case letter".to_owned());
        }
        if self.require_digit && !has(char::is_ascii_digit) {
            broken.push("a digit".to_owned());
        }
        if self.require_symbol && !password.chars().any(|c| !c.is_alphanumeric()) {
            broken.push("a symbol".to_owned());
        }
        if broken.is_empty() {
            Ok(())
        } else {
            Err(broken)
        }
    }
}

/// The `iss` of the application's own tokens.
pub const ISSUER: &str = "insurance-agent";
/// The `aud` of access tokens.
pub const ACCESS_AUDIENCE: &str = "insurance-agent:api";
/// The `aud` of refresh tokens (never accepted as access tokens).
pub const REFRESH_AUDIENCE: &str = "insurance-agent:refresh";
/// How long an access token lives.
pub const TOKEN_TTL_SECS: u64 = 15 * 60;
/// How long a refresh token lives.
pub const REFRESH_TTL_SECS: u64 = 8 * 3600;

/// The claims of a session token. `tenant_id` is what the tenancy pipeline's
/// `JwtStrategy` resolves the tenant from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// The issuer ([`ISSUER`]).
    pub iss: String,
    /// [`ACCESS_AUDIENCE`] or [`REFRESH_AUDIENCE`].
    pub aud: String,
    /// The user id.
    pub sub: String,
    /// The tenant the session is for.
    pub tenant_id: String,
    /// The user's role in that tenant when the token was issued (display
    /// only: every request re-reads the membership).
    pub role: Role,
    /// Expiry (seconds since the epoch).
    pub exp: u64,
    /// Issued at.
    pub iat: u64,
    /// The session epoch when issued (`tenancy_core::session`): the token
    /// is refused once the user's epoch in the tenant has moved on.
    #[serde(default)]
    pub sv: u64,
    /// The operator acting as `sub` (RFC 8693 `act`), on impersonation
    /// tokens only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<ActingParty>,
}

/// Who acts on behalf of the subject of a token (RFC 8693 `act`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ActingParty {
    /// The operator, e.g. `operator:sam`.
    pub sub: String,
}

/// The longest impersonation grant.
pub const MAX_IMPERSONATION_SECS: u64 = 3600;

/// An access token and the refresh token that renews it.
#[derive(Debug, Clone)]
pub struct TokenPair {
    /// For `Authorization: Bearer` ([`TOKEN_TTL_SECS`]).
    pub access: String,
    /// For `POST /auth/refresh` ([`REFRESH_TTL_SECS`]).
    pub refresh: String,
}

/// Signs and verifies session tokens; with session epochs, checks on every
/// request that the session was not revoked since the token was issued.
#[derive(Clone)]
pub struct Sessions {
    secret: Arc<Vec<u8>>,
    epochs: Option<Arc<dyn SessionEpochs>>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sessions { .. }")
    }
}

impl Sessions {
    /// Sessions signed with `secret` (at least 32 bytes), not revocable
    /// before they expire (see [`Sessions::with_epochs`]).
    pub fn new(secret: Vec<u8>) -> Self {
        Self {
            secret: Arc::new(secret),
            epochs: None,
        }
    }

    /// Revocable sessions: tokens carry the user's session epoch in the
    /// tenant and are refused (401 `session-revoked`) once it moves on.
    pub fn with_epochs(mut self, epochs: Arc<dyn SessionEpochs>) -> Self {
        self.epochs = Some(epochs);
        self
    }

    /// The session epochs, when sessions are revocable.
    pub fn epochs(&self) -> Option<&Arc<dyn SessionEpochs>> {
        self.epochs.as_ref()
    }

    /// Refuses claims whose session was revoked since they were issued.
    pub async fn check_epoch(&self, claims: &Claims, tenant: TenantId) -> Result<(), TenantError> {
        match &self.epochs {
            Some(e) => {
                e.check(tenant, &UserId::new(claims.sub.clone()), claims.sv)
                    .await
            }
            None => Ok(()),
        }
    }

    /// The HS256 secret (for the tenancy pipeline's `JwtStrategy`).
    pub fn secret(&self) -> &[u8] {
        &self.secret
    }

    fn sign(&self, claims: &Claims) -> Result<String, ApiError> {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(&self.secret),
        )
        .map_err(|e| ApiError::internal(format!("signing a token: {e}")))
    }

    /// An access token and a refresh token for `user` in `tenant`.
    pub async fn issue(
        &self,
        user: &str,
        tenant: TenantId,
        role: Role,
    ) -> Result<TokenPair, ApiError> {
        let sv = match &self.epochs {
            Some(e) => e
                .epoch(tenant, &UserId::new(user))
                .await
                .map_err(|e| ApiError::from(TenantError::Store(e)))?,
            None => 0,
        };
        let now = jsonwebtoken::get_current_timestamp();
        let claims = |aud: &str, ttl: u64| Claims {
            iss: ISSUER.to_owned(),
            aud: aud.to_owned(),
            sub: user.to_owned(),
            tenant_id: tenant.to_string(),
            role,
            exp: now + ttl,
            iat: now,
            sv,
            act: None,
        };
        Ok(TokenPair {
            access: self.sign(&claims(ACCESS_AUDIENCE, TOKEN_TTL_SECS))?,
            refresh: self.sign(&claims(REFRESH_AUDIENCE, REFRESH_TTL_SECS))?,
        })
    }

    /// An access token for `operator` acting as `user` in `tenant` for
    /// `ttl_secs` (at most [`MAX_IMPERSONATION_SECS`]), with no refresh
    /// token: the grant ends when the token expires (or with the user's
    /// sessions). Issue it through [`crate::ops::impersonate`], which audits it.
    pub async fn issue_impersonation(
        &self,
        user: &str,
        tenant: TenantId,
        role: Role,
        operator: &str,
        ttl_secs: u64,
    ) -> Result<String, ApiError> {
        let pair = self.issue(user, tenant, role).await?;
        let mut claims = self
            .decode(&pair.access, ACCESS_AUDIENCE)
            .map_err(|e| ApiError::internal(format!("re-reading a token: {e}")))?;
        claims.exp = claims.iat + ttl_secs.clamp(1, MAX_IMPERSONATION_SECS);
        claims.act = Some(ActingParty {
            sub: operator.to_owned(),
        });
        self.sign(&claims)
    }

    fn decode(&self, token: &str, audience: &str) -> Result<Claims, jsonwebtoken::errors::Error> {
        let mut v = Validation::new(Algorithm::HS256);
        v.set_required_spec_claims(&["exp", "sub", "iss", "aud"]);
        v.set_issuer(&[ISSUER]);
        v.set_audience(&[audience]);
        v.leeway = 5;
        jsonwebtoken::decode::<Claims>(token, &DecodingKey::from_secret(&self.secret), &v)
            .map(|d| d.claims)
    }

    /// The verified claims of an access token (HS256 only; issuer, audience
    /// and expiry checked).
    pub fn verify(&self, token: &str) -> Result<Claims, ApiError> {
        self.decode(token, ACCESS_AUDIENCE).map_err(|e| {
            tracing::debug!(error = %e, "session token refused");
            ApiError::unauthorized("the session token is not valid: sign in again")
        })
    }

    /// The verified claims of a refresh token (never an impersonation's).
    pub fn verify_refresh(&self, token: &str) -> Result<Claims, ApiError> {
        let refused = || ApiError::unauthorized("the refresh token is not valid: sign in again");
        let claims = self.decode(token, REFRESH_AUDIENCE).map_err(|e| {
            tracing::debug!(error = %e, "refresh token refused");
            refused()
        })?;
        if claims.act.is_some() {
            return Err(refused());
        }
        Ok(claims)
    }
}

/// The application's own access tokens, as the pipeline's first
/// authenticator: tokens of another issuer are left to the next one (the
/// tenant's identity provider).
#[async_trait::async_trait]
impl Authenticate for Sessions {
    async fn authenticate(
        &self,
        req: &(dyn RequestView + Sync),
        tenant: &Tenant,
    ) -> Result<Option<Principal>, TenantError> {
        let Some(token) = tenancy_core::identity::bearer(req)? else {
            return Ok(None);
        };
        if tenancy_core::identity::unverified_issuer(token).as_deref() != Some(ISSUER) {
            return Ok(None);
        }
        let claims =
            self.decode(token, ACCESS_AUDIENCE)
                .map_err(|e| TenantError::InvalidToken {
                    reason: e.to_string().into(),
                })?;
        // The resolver read the tenant from this token; a mismatch is a bug
        // or an attack, never a reason to serve another tenant.
        if claims.tenant_id != tenant.id.to_string() {
            return Err(TenantError::InvalidToken {
                reason: "the token is for another tenant".into(),
            });
        }
        self.check_epoch(&claims, tenant.id).await?;
        let principal = Principal::new(UserId::new(claims.sub), ISSUER);
        Ok(Some(match claims.act {
            Some(act) => principal.with_impersonator(act.sub),
            None => principal,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_hash_and_verify() {
        let h = hash_password("Correct-Horse-9").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password(&h, "Correct-Horse-9"));
        assert!(!verify_password(&h, "correct-horse-9"));
        assert!(!verify_password("not a hash", "anything"));
    }

    #[test]
    fn the_policy_lists_every_broken_rule() {
        let p = PasswordPolicy {
            min_length: 12,
            require_symbol: true,
            ..PasswordPolicy::default()
        };
        let broken = p.check("short").unwrap_err();
        assert_eq!(broken.len(), 4, "{broken:?}"); // length, upper, digit, symbol
        assert!(p.check("Long-enough-passw0rd").is_ok());
        let custom =
            PasswordPolicy::of(&serde_json::json!({"password_policy": {"min_length": 4}})).unwrap();
        assert_eq!(custom.min_length, 4);
        assert!(
            PasswordPolicy::of(&serde_json::json!({"password_policy": {"min_lenght": 4}})).is_err()
        );
    }

    #[tokio::test]
    async fn tokens_round_trip_and_tampering_is_refused() {
        let s = Sessions::new(vec![7; 32]);
        let t = TenantId::new_v4();
        let tokens = s.issue("u1", t, Role::Admin).await.unwrap();
        let c = s.verify(&tokens.access).unwrap();
        assert_eq!(
            (c.sub.as_str(), c.tenant_id.as_str()),
            ("u1", t.to_string().as_str())
        );
        let other = Sessions::new(vec![8; 32]);
        assert!(other.verify(&tokens.access).is_err());
        // A refresh token is not an access token, nor the other way round.
        assert!(s.verify(&tokens.refresh).is_err());
        assert!(s.verify_refresh(&tokens.access).is_err());
        assert_eq!(s.verify_refresh(&tokens.refresh).unwrap().sub, "u1");
    }
}
