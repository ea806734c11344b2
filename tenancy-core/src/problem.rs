//! RFC 9457 problem details for every [`TenantError`], with the response
//! headers that go with them — the one place web adapters take their error
//! responses from, so every framework answers the same.
//!
//! The `type` is a stable URN, `urn:tenancy-rs:problem:<code>`, where
//! `<code>` is [`TenantError::code`]. Server errors (5xx) carry no detail
//! beyond "internal error".
//!
//! ```
//! use tenancy_core::problem::Problem;
//! use tenancy_core::TenantError;
//!
//! let p = Problem::from_error(&TenantError::NotFound, None);
//! assert_eq!(p.status, 404);
//! assert_eq!(p.type_uri, "urn:tenancy-rs:problem:tenant-not-found");
//! let body = p.to_json();
//! assert_eq!(body["status"], 404);
//! ```

use std::time::Duration;

use serde_json::{Map, Value, json};

use crate::TenantError;
use crate::plan::ResourceKind;
use crate::quota::RateDecision;

/// The media type of a problem body.
pub const CONTENT_TYPE: &str = "application/problem+json";

/// Response header names, lower case (as `http::HeaderName::from_static`
/// wants them; HTTP header names are case-insensitive).
pub const X_TENANT_ID: &str = "x-tenant-id";
/// `Retry-After`.
pub const RETRY_AFTER: &str = "retry-after";
/// `RateLimit-Limit` (IETF draft `ratelimit-headers`).
pub const RATELIMIT_LIMIT: &str = "ratelimit-limit";
/// `RateLimit-Remaining`.
pub const RATELIMIT_REMAINING: &str = "ratelimit-remaining";
/// `RateLimit-Reset` (seconds).
pub const RATELIMIT_RESET: &str = "ratelimit-reset";

/// The prefix of every problem `type`.
pub const TYPE_PREFIX: &str = "urn:tenancy-rs:problem:";

/// A problem details object and its response headers.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Problem {
    /// `type`: a stable URN per error kind.
    pub type_uri: String,
    /// `title`: the HTTP reason phrase.
    pub title: &'static str,
    /// `status`.
    pub status: u16,
    /// `detail`: what went wrong and what to do (never internals).
    pub detail: String,
    /// The machine-readable code (also the last part of `type`).
    pub code: &'static str,
    /// Extra members (`upgrade`, `retry_after`, …).
    pub extensions: Map<String, Value>,
    /// Response headers besides `Content-Type` (names lower case).
    pub headers: Vec<(&'static str, String)>,
}

fn reason(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        413 => "Content Too Large",
        429 => "Too Many Requests",
        503 => "Service Unavailable",
        _ => "Internal Server Error",
    }
}

pub(crate) fn secs_up(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// The `RateLimit-*` headers of a rate decision (IETF draft
/// `ratelimit-headers`: limit, remaining, seconds until reset).
pub fn rate_headers(rate: &RateDecision) -> Vec<(&'static str, String)> {
    vec![
        (RATELIMIT_LIMIT, rate.limit().to_string()),
        (RATELIMIT_REMAINING, rate.remaining().to_string()),
        (RATELIMIT_RESET, secs_up(rate.reset_after()).to_string()),
    ]
}

impl Problem {
    /// The problem for `error`; `rate` is the rate decision of the request,
    /// if a rate limit was checked (its headers are added).
    pub fn from_error(error: &TenantError, rate: Option<&RateDecision>) -> Self {
        let status = error.status();
        let code = error.code();
        let mut extensions = Map::new();
        let mut headers = Vec::new();
        match error {
            TenantError::FeatureDisabled { flag } => {
                extensions.insert("feature".into(), json!(&**flag));
                extensions.insert(
                    "upgrade".into(),
                    json!("this feature is not in the tenant's plan; upgrade the plan to use it"),
                );
            }
            TenantError::Quota(q) => {
                extensions.insert("resource".into(), json!(&*q.resource));
                extensions.insert("limit".into(), json!(q.limit));
                extensions.insert("used".into(), json!(q.used));
                let wait = match q.retry_after {
                    Some(wait) => {
                        let secs = secs_up(wait);
                        extensions.insert("retry_after".into(), json!(secs));
                        Some(secs)
                    }
                    None if q.kind == ResourceKind::Rate => Some(1),
                    None => None,
                };
                if let Some(secs) = wait {
                    headers.push((RETRY_AFTER, secs.to_string()));
                }
                // A refused rate check: the window's limit, nothing left,
                // and when it frees up (unless the caller passed the decision).
                if q.kind == ResourceKind::Rate && rate.is_none() {
                    headers.push((RATELIMIT_LIMIT, q.limit.to_string()));
                    headers.push((RATELIMIT_REMAINING, "0".to_owned()));
                    headers.push((RATELIMIT_RESET, wait.unwrap_or(1).to_string()));
                }
            }
            TenantError::MissingPermission { permission } => {
                extensions.insert("permission".into(), json!(&**permission));
            }
            TenantError::Maintenance { retry_after, .. } => {
                extensions.insert("retry_after".into(), json!(retry_after));
                headers.push((RETRY_AFTER, retry_after.to_string()));
            }
            // A dependency that did not answer: the client may retry.
            TenantError::Store(_) | TenantError::IdentityProviderUnavailable(_) => {
                headers.push((RETRY_AFTER, "1".to_owned()));
            }
            _ => {}
        }
        if let Some(rate) = rate {
            headers.extend(rate_headers(rate));
        }
        Self {
            type_uri: format!("{TYPE_PREFIX}{code}"),
            title: reason(status),
            status,
            detail: error.public_message(),
            code,
            extensions,
            headers,
        }
    }

    /// A problem of the application's own (a handler's 404, 409, 422...), in
    /// the same shape and with the same media type as the library's, so a
    /// client handles every error one way. `code` is the stable machine
    /// name (the `type` is `urn:tenancy-rs:problem:<code>`); prefix codes of
    /// your own to keep them apart from the library's.
    ///
    /// ```
    /// let p = tenancy_core::problem::Problem::new(404, "app.policy-not-found", "Not found", "no such policy");
    /// assert_eq!(p.to_json()["type"], "urn:tenancy-rs:problem:app.policy-not-found");
    /// ```
    pub fn new(
        status: u16,
        code: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            type_uri: format!("{TYPE_PREFIX}{code}"),
            title,
            status,
            detail: detail.into(),
            code,
            extensions: Map::new(),
            headers: Vec::new(),
        }
    }

    /// The JSON body.
    pub fn to_json(&self) -> Value {
        let mut body = Map::new();
        body.insert("type".into(), json!(self.type_uri));
        body.insert("title".into(), json!(self.title));
        body.insert("status".into(), json!(self.status));
        body.insert("detail".into(), json!(self.detail));
        body.insert("code".into(), json!(self.code));
        for (k, v) in &self.extensions {
            body.insert(k.clone(), v.clone());
        }
        Value::Object(body)
    }
}
