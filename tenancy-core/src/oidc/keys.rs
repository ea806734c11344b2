//! The key sets of identity providers: discovery, caching, refresh on an
//! unknown `kid`, stale keys while the provider is down.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;

use super::{Fetch, IssuerSettings, OidcConfig, OidcError};
use crate::quota::Clock;
use crate::{StoreError, TenantError};

/// One usable key of a set.
pub(super) struct Key {
    pub(super) decoding: DecodingKey,
    /// The algorithm the key declares, if any.
    alg: Option<Algorithm>,
    family: Family,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Rsa,
    P256,
    P384,
    Ed25519,
    Other,
}

impl Family {
    fn fits(self, alg: Algorithm) -> bool {
        use Algorithm::*;
        match self {
            Family::Rsa => matches!(alg, RS256 | RS384 | RS512 | PS256 | PS384 | PS512),
            Family::P256 => alg == ES256,
            Family::P384 => alg == ES384,
            Family::Ed25519 => alg == EdDSA,
            Family::Other => false,
        }
    }
}

/// An issuer's key set as last fetched.
struct KeySet {
    by_kid: HashMap<String, Arc<Key>>,
    without_kid: Vec<Arc<Key>>,
    fetched_at: Duration,
}

#[derive(Default)]
struct IssuerState {
    keys: Option<Arc<KeySet>>,
    failed_at: Option<Duration>,
    failure: Option<String>,
    forced_at: Option<Duration>,
}

pub(super) struct KeyCache {
    fetch: Arc<dyn Fetch>,
    clock: Arc<dyn Clock>,
    config: OidcConfig,
    /// The current set per issuer, read without locking on the hot path.
    sets: DashMap<String, Arc<KeySet>>,
    /// Fetch state per issuer: one fetch at a time.
    issuers: DashMap<String, Arc<tokio::sync::Mutex<IssuerState>>>,
}

fn unavailable(issuer: &str, reason: &str) -> TenantError {
    TenantError::IdentityProviderUnavailable(StoreError::msg(format!(
        "identity provider {issuer}: {reason}"
    )))
}

fn unknown_key() -> TenantError {
    TenantError::InvalidToken {
        reason: "token is signed by a key the issuer does not publish".into(),
    }
}

impl KeyCache {
    pub(super) fn new(fetch: Arc<dyn Fetch>, clock: Arc<dyn Clock>, config: OidcConfig) -> Self {
        Self {
            fetch,
            clock,
            config,
            sets: DashMap::new(),
            issuers: DashMap::new(),
        }
    }

    /// The key verifying a token of `issuer` with `kid` and `alg`.
    pub(super) async fn key(
        &self,
        issuer: &IssuerSettings,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<Arc<Key>, TenantError> {
        // Hot path: a fresh set holding the key.
        let now = self.clock.now();
        let cached = self.sets.get(&issuer.issuer).map(|s| s.clone());
        if let Some(key) = cached
            .filter(|set| now.saturating_sub(set.fetched_at) < self.config.refresh_after)
            .and_then(|set| pick(&set, kid, alg))
        {
            return Ok(key);
        }
        let state = self
            .issuers
            .entry(issuer.issuer.clone())
            .or_default()
            .clone();
        // One fetch per issuer at a time; waiters find the fresh set.
        let mut state = state.lock().await;
        let now = self.clock.now();
        let age = |set: &KeySet| now.saturating_sub(set.fetched_at);
        let fresh = state
            .keys
            .as_ref()
            .is_some_and(|k| age(k) < self.config.refresh_after);
        if !fresh {
            self.refresh(issuer, &mut state, now).await;
        }
        let usable = state
            .keys
            .clone()
            .filter(|k| age(k) < self.config.expire_after);
        let Some(set) = usable else {
            let why = state
                .failure
                .clone()
                .unwrap_or_else(|| "no keys".to_owned());
            return Err(unavailable(&issuer.issuer, &why));
        };
        if let Some(key) = pick(&set, kid, alg) {
            return Ok(key);
        }
        // Not in the cached set: perhaps rotated at the provider. Re-fetch,
        // at most once per interval per issuer.
        let recently = state
            .forced_at
            .is_some_and(|t| now.saturating_sub(t) < self.config.unknown_kid_interval);
        if recently || kid.is_none() {
            return Err(unknown_key());
        }
        state.forced_at = Some(now);
        state.failed_at = None; // an unknown kid is worth one try now
        if !self.refresh(issuer, &mut state, now).await {
            let why = state.failure.clone().unwrap_or_default();
            return Err(unavailable(&issuer.issuer, &why));
        }
        let set = state.keys.clone().ok_or_else(unknown_key)?;
        pick(&set, kid, alg).ok_or_else(unknown_key)
    }

    /// Fetches the set unless a fetch failed less than `retry_after` ago;
    /// whether a new set was stored.
    async fn refresh(
        &self,
        issuer: &IssuerSettings,
        state: &mut IssuerState,
        now: Duration,
    ) -> bool {
        if state
            .failed_at
            .is_some_and(|t| now.saturating_sub(t) < self.config.retry_after)
        {
            return false;
        }
        match self.fetch_set(issuer, now).await {
            Ok(set) => {
                tracing::debug!(issuer = %issuer.issuer, keys = set.by_kid.len() + set.without_kid.len(), "fetched an issuer's keys");
                let set = Arc::new(set);
                self.sets.insert(issuer.issuer.clone(), set.clone());
                state.keys = Some(set);
                state.failed_at = None;
                state.failure = None;
                true
            }
            Err(e) => {
                tracing::warn!(issuer = %issuer.issuer, error = %e, "could not fetch an issuer's keys");
                state.failed_at = Some(now);
                state.failure = Some(e.to_string());
                false
            }
        }
    }

    async fn fetch_set(&self, issuer: &IssuerSettings, now: Duration) -> Result<KeySet, OidcError> {
        let provider = |reason: String| OidcError::Provider {
            issuer: issuer.issuer.clone(),
            reason,
        };
        let jwks_uri = match &issuer.jwks_uri {
            Some(uri) => uri.clone(),
            None => {
                let url = format!(
                    "{}/.well-known/openid-configuration",
                    issuer.issuer.trim_end_matches('/')
                );
                let doc: Value = serde_json::from_slice(&self.fetch.get(&url).await?)
                    .map_err(|e| provider(format!("discovery document is not JSON: {e}")))?;
                if doc.get("issuer").and_then(Value::as_str) != Some(issuer.issuer.as_str()) {
                    return Err(provider(
                        "the discovery document names another issuer".to_owned(),
                    ));
                }
                let uri = doc
                    .get("jwks_uri")
                    .and_then(Value::as_str)
                    .ok_or_else(|| provider("the discovery document has no jwks_uri".to_owned()))?;
                super::settings::check_url(uri, self.config.allow_http_loopback)?;
                uri.to_owned()
            }
        };
        let set: JwkSet = serde_json::from_slice(&self.fetch.get(&jwks_uri).await?)
            .map_err(|e| provider(format!("the key set is not a JWKS: {e}")))?;
        let mut by_kid = HashMap::new();
        let mut without_kid = Vec::new();
        for jwk in &set.keys {
            if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
                continue;
            }
            let family = match &jwk.algorithm {
                AlgorithmParameters::RSA(_) => Family::Rsa,
                AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
                    EllipticCurve::P256 => Family::P256,
                    EllipticCurve::P384 => Family::P384,
                    _ => Family::Other,
                },
                AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => {
                    Family::Ed25519
                }
                // Symmetric ("oct") keys have no place in a public key set.
                _ => Family::Other,
            };
            if family == Family::Other {
                continue;
            }
            let Ok(decoding) = DecodingKey::from_jwk(jwk) else {
                continue;
            };
            let alg = jwk.common.key_algorithm.and_then(signing_alg);
            let key = Arc::new(Key {
                decoding,
                alg,
                family,
            });
            match &jwk.common.key_id {
                Some(kid) => {
                    by_kid.insert(kid.clone(), key);
                }
                None => without_kid.push(key),
            }
        }
        Ok(KeySet {
            by_kid,
            without_kid,
            fetched_at: now,
        })
    }
}

/// A key for `alg`: the one named `kid`, or — for tokens without a `kid` —
/// the only key of the set that fits `alg`.
fn pick(set: &KeySet, kid: Option<&str>, alg: Algorithm) -> Option<Arc<Key>> {
    let fits = |k: &Arc<Key>| k.family.fits(alg) && k.alg.is_none_or(|a| a == alg);
    match kid {
        Some(kid) => set.by_kid.get(kid).filter(|k| fits(k)).cloned(),
        None => {
            let mut all = set
                .by_kid
                .values()
                .chain(set.without_kid.iter())
                .filter(|k| fits(k));
            match (all.next(), all.next()) {
                (Some(k), None) => Some(k.clone()),
                _ => None,
            }
        }
    }
}

fn signing_alg(k: KeyAlgorithm) -> Option<Algorithm> {
    Some(match k {
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}
