//! Accounts and sessions: argon2id password hashes, a tenant-configurable
//! password policy, and HS256 JWTs that carry the user and the tenant.

use std::sync::Arc;

use argon2::Argon2;
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use tenancy_core::{Role, TenantId, UserId};

use crate::api::ApiError;

/// How long a session token lives.
pub const TOKEN_TTL_SECS: u64 = 8 * 3600;

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

/// The claims of a session token. `tenant_id` is what the tenancy pipeline's
/// `JwtStrategy` resolves the tenant from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
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
}

/// Signs and verifies session tokens.
#[derive(Clone)]
pub struct Sessions {
    secret: Arc<Vec<u8>>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sessions { .. }")
    }
}

/// The authenticated user of a request, put in the request extensions by
/// [`authenticate`].
#[derive(Debug, Clone)]
pub struct AuthUser {
    /// The user.
    pub id: UserId,
    /// The tenant the token is for.
    pub tenant: TenantId,
}

impl Sessions {
    /// Sessions signed with `secret` (at least 32 bytes).
    pub fn new(secret: Vec<u8>) -> Self {
        Self {
            secret: Arc::new(secret),
        }
    }

    /// The HS256 secret (for the tenancy pipeline's `JwtStrategy`).
    pub fn secret(&self) -> &[u8] {
        &self.secret
    }

    /// A token for `user` in `tenant`.
    pub fn issue(&self, user: &str, tenant: TenantId, role: Role) -> Result<String, ApiError> {
        let now = jsonwebtoken::get_current_timestamp();
        let claims = Claims {
            sub: user.to_owned(),
            tenant_id: tenant.to_string(),
            role,
            exp: now + TOKEN_TTL_SECS,
            iat: now,
        };
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(&self.secret),
        )
        .map_err(|e| ApiError::internal(format!("signing a token: {e}")))
    }

    /// The verified claims of `token` (HS256 only, `exp` required).
    pub fn verify(&self, token: &str) -> Result<Claims, ApiError> {
        let mut v = Validation::new(Algorithm::HS256);
        v.set_required_spec_claims(&["exp", "sub"]);
        jsonwebtoken::decode::<Claims>(token, &DecodingKey::from_secret(&self.secret), &v)
            .map(|d| d.claims)
            .map_err(|e| ApiError::unauthorized(format!("invalid session token: {e}")))
    }
}

/// Middleware: a request with `Authorization: Bearer <token>` gets its
/// [`AuthUser`] in the extensions; a token that does not verify is refused
/// with 401. Requests without a token pass through unauthenticated (the
/// tenant pipeline then refuses them on tenant routes).
pub async fn authenticate(
    State(sessions): State<Sessions>,
    mut req: Request,
    next: Next,
) -> Response {
    let bearer = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    if let Some(token) = bearer {
        let claims = match sessions.verify(&token) {
            Ok(c) => c,
            Err(e) => return e.into_response(),
        };
        let Ok(tenant) = claims.tenant_id.parse::<TenantId>() else {
            return ApiError::unauthorized("session token names no valid tenant").into_response();
        };
        req.extensions_mut().insert(AuthUser {
            id: UserId::new(claims.sub),
            tenant,
        });
    }
    next.run(req).await
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

    #[test]
    fn tokens_round_trip_and_tampering_is_refused() {
        let s = Sessions::new(vec![7; 32]);
        let t = TenantId::new_v4();
        let token = s.issue("u1", t, Role::Admin).unwrap();
        let c = s.verify(&token).unwrap();
        assert_eq!(
            (c.sub.as_str(), c.tenant_id.as_str()),
            ("u1", t.to_string().as_str())
        );
        let other = Sessions::new(vec![8; 32]);
        assert!(other.verify(&token).is_err());
    }
}
