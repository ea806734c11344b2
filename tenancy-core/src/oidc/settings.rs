//! A tenant's identity providers, as its settings name them.

use jsonwebtoken::Algorithm;
use serde::{Deserialize, Serialize};

use super::OidcError;
use crate::Tenant;

/// The tenant setting that holds [`IdentitySettings`].
pub const SETTING: &str = "identity";

/// The identity providers a tenant trusts (tenant setting `identity`).
///
/// ```
/// use tenancy_core::oidc::IdentitySettings;
///
/// let s: IdentitySettings = serde_json::from_value(serde_json::json!({
///     "issuers": [{
///         "issuer": "https://login.acme.example",
///         "audiences": ["https://api.insure.example"],
///         "algorithms": ["RS256", "ES256"]
///     }]
/// }))?;
/// s.validate(false)?;
/// assert_eq!(s.issuers[0].algorithms.len(), 2);
/// // Symmetric algorithms cannot be trusted from a public key set.
/// let hs: IdentitySettings = serde_json::from_value(serde_json::json!({
///     "issuers": [{"issuer": "https://login.acme.example", "audiences": ["a"], "algorithms": ["HS256"]}]
/// }))?;
/// assert!(hs.validate(false).is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct IdentitySettings {
    /// The trusted issuers.
    pub issuers: Vec<IssuerSettings>,
}

/// One trusted issuer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct IssuerSettings {
    /// The issuer identifier, compared exactly with the token's `iss` and
    /// with the `issuer` of its discovery document.
    pub issuer: String,
    /// Accepted audiences: the token's `aud` must contain one.
    pub audiences: Vec<String>,
    /// Accepted signature algorithms (default `["RS256"]`): RS256/384/512,
    /// PS256/384/512, ES256/384 or EdDSA. Never HS* or `none`.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// The key set's URL, when the issuer publishes no discovery document.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_uri: Option<String>,
    /// The claim naming the user (default `sub`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_claim: Option<String>,
}

fn default_algorithms() -> Vec<String> {
    vec!["RS256".to_owned()]
}

impl IssuerSettings {
    /// An issuer accepting RS256 tokens for `audiences`.
    pub fn new(issuer: impl Into<String>, audiences: &[&str]) -> Self {
        Self {
            issuer: issuer.into(),
            audiences: audiences.iter().map(|a| (*a).to_owned()).collect(),
            algorithms: default_algorithms(),
            jwks_uri: None,
            subject_claim: None,
        }
    }

    /// The same issuer accepting these algorithms.
    pub fn with_algorithms(mut self, algorithms: &[&str]) -> Self {
        self.algorithms = algorithms.iter().map(|a| (*a).to_owned()).collect();
        self
    }

    /// The parsed algorithms (validated: asymmetric only).
    pub fn parsed_algorithms(&self) -> Result<Vec<Algorithm>, OidcError> {
        self.algorithms
            .iter()
            .map(|name| {
                let alg: Algorithm = name.parse().map_err(|_| OidcError::Settings {
                    reason: format!("unknown algorithm {name:?}"),
                })?;
                if matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
                    return Err(OidcError::Settings {
                        reason: format!(
                            "{name} is a shared-secret algorithm: an identity provider's tokens must be verified with its public keys"
                        ),
                    });
                }
                Ok(alg)
            })
            .collect()
    }

    /// The claim naming the user.
    pub fn subject_claim(&self) -> &str {
        self.subject_claim.as_deref().unwrap_or("sub")
    }
}

impl IdentitySettings {
    /// These issuers.
    pub fn new(issuers: Vec<IssuerSettings>) -> Self {
        Self { issuers }
    }

    /// The settings in `tenant`'s settings, if any; malformed ones are an
    /// error, never "no identity provider".
    pub fn of(tenant: &Tenant) -> Result<Option<Self>, OidcError> {
        match tenant.settings.get(SETTING) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(value) => {
                let s: Self =
                    serde_json::from_value(value.clone()).map_err(|e| OidcError::Settings {
                        reason: e.to_string(),
                    })?;
                Ok(Some(s))
            }
        }
    }

    /// Checks every issuer: a URL (https; plain http only on a loopback
    /// host when `allow_http_loopback`), at least one audience, asymmetric
    /// algorithms only, no issuer twice.
    pub fn validate(&self, allow_http_loopback: bool) -> Result<(), OidcError> {
        let mut seen = std::collections::BTreeSet::new();
        for i in &self.issuers {
            check_url(&i.issuer, allow_http_loopback)?;
            if let Some(uri) = &i.jwks_uri {
                check_url(uri, allow_http_loopback)?;
            }
            if i.audiences.is_empty() || i.audiences.iter().any(String::is_empty) {
                return Err(OidcError::Settings {
                    reason: format!("issuer {} needs at least one non-empty audience", i.issuer),
                });
            }
            if i.parsed_algorithms()?.is_empty() {
                return Err(OidcError::Settings {
                    reason: format!("issuer {} needs at least one algorithm", i.issuer),
                });
            }
            if !seen.insert(i.issuer.as_str()) {
                return Err(OidcError::Settings {
                    reason: format!("issuer {} is listed twice", i.issuer),
                });
            }
        }
        Ok(())
    }

    /// The settings of the issuer named `iss`, if the tenant trusts it.
    pub fn issuer(&self, iss: &str) -> Option<&IssuerSettings> {
        self.issuers.iter().find(|i| i.issuer == iss)
    }
}

/// `https://…`, or `http://` to a loopback address when allowed.
pub(crate) fn check_url(url: &str, allow_http_loopback: bool) -> Result<(), OidcError> {
    let bad = |reason: &str| OidcError::Settings {
        reason: format!("{url:?}: {reason}"),
    };
    let rest = if let Some(rest) = url.strip_prefix("https://") {
        rest
    } else if let Some(rest) = url.strip_prefix("http://") {
        if !allow_http_loopback {
            return Err(bad("must be https"));
        }
        let host = host_of(rest);
        if !(host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback()))
        {
            return Err(bad("plain http is allowed only to a loopback address"));
        }
        rest
    } else {
        return Err(bad("must be an https URL"));
    };
    let host = host_of(rest);
    if host.is_empty()
        || url.len() > 2048
        || url.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(bad("not a valid URL"));
    }
    Ok(())
}

fn host_of(rest: &str) -> &str {
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let authority = authority.rsplit('@').next().unwrap_or(authority);
    if let Some(v6) = authority.strip_prefix('[') {
        return v6.split(']').next().unwrap_or("");
    }
    authority.split(':').next().unwrap_or("")
}
