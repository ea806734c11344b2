//! [`TenantError`]: every way a request can fail to reach a tenant, with a
//! stable HTTP status and problem type that the web adapters reuse.

use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::{HostError, SlugError, TenantIdError};

/// A failure of a tenant store's backend (database down, query failed, …).
///
/// Cheap to clone, so one failed load can be reported to every request that
/// was waiting on it (see [`crate::store::CachedStore`]).
///
/// ```
/// use tenancy_core::StoreError;
///
/// let io = std::io::Error::new(std::io::ErrorKind::Other, "connection refused");
/// let err = StoreError::new(io);
/// assert!(err.to_string().contains("connection refused"));
/// ```
#[derive(Debug, Clone, thiserror::Error)]
#[error("tenant store failed: {source}")]
pub struct StoreError {
    source: Arc<dyn std::error::Error + Send + Sync + 'static>,
}

impl StoreError {
    /// Wraps a backend error.
    pub fn new(source: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self {
            source: Arc::new(source),
        }
    }

    /// A store error from a message, for backends without an error type.
    pub fn msg(message: impl Into<String>) -> Self {
        #[derive(Debug, thiserror::Error)]
        #[error("{0}")]
        struct Msg(String);
        Self::new(Msg(message.into()))
    }
}

/// Every way resolving, loading, gating or authorizing a tenant can fail.
///
/// Each variant maps to a stable HTTP status ([`TenantError::status`]) and a
/// stable machine-readable code ([`TenantError::code`]) that adapters put in
/// RFC 9457 problem documents. The `Display` text is safe to show to clients
/// except for [`TenantError::Store`], whose details stay in logs; adapters
/// use [`TenantError::public_message`] for bodies.
///
/// ```
/// use tenancy_core::TenantError;
///
/// let err = TenantError::NotFound;
/// assert_eq!(err.status(), 404);
/// assert_eq!(err.code(), "tenant-not-found");
/// ```
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum TenantError {
    /// No strategy identified a tenant and no default is configured.
    #[error("no tenant given: identify the tenant by header, host, path or token")]
    Missing,
    /// A tenant id in the request was malformed.
    #[error("malformed tenant id: {0}")]
    InvalidId(#[from] TenantIdError),
    /// A tenant slug in the request was malformed.
    #[error("malformed tenant slug: {0}")]
    InvalidSlug(#[from] SlugError),
    /// The request's host was malformed.
    #[error("malformed host: {0}")]
    InvalidHost(#[from] HostError),
    /// A tenant header appeared more than once (a spoofing attempt or a proxy bug).
    #[error("header {header} appears more than once: send exactly one")]
    DuplicateHeader {
        /// The header's name.
        header: Arc<str>,
    },
    /// A bearer token was missing its tenant, malformed, badly signed or expired.
    #[error("invalid token: {reason}")]
    InvalidToken {
        /// What was wrong with the token.
        reason: Arc<str>,
    },
    /// Two strategies named different tenants.
    #[error("the request names two different tenants (by {first} and by {second})")]
    Conflict {
        /// The strategy that matched first.
        first: &'static str,
        /// The strategy that disagreed.
        second: &'static str,
    },
    /// The tenant does not exist or was deleted (the two are indistinguishable).
    #[error("tenant not found")]
    NotFound,
    /// The tenant is suspended.
    #[error("tenant is suspended: {reason}")]
    Suspended {
        /// The reason recorded when the tenant was suspended.
        reason: Arc<str>,
    },
    /// The tenant's trial has ended and it has no paid plan yet.
    #[error("the tenant's trial ended at {ended_at}: choose a plan to continue")]
    TrialExpired {
        /// When the trial ended.
        ended_at: DateTime<Utc>,
    },
    /// The tenant is being offboarded and no longer serves requests.
    #[error("tenant is being offboarded")]
    Offboarding,
    /// The request carries no authenticated user but the operation needs one.
    #[error("authentication required")]
    Unauthenticated,
    /// The user is not a member of the tenant.
    #[error("you are not a member of this tenant")]
    NotAMember,
    /// The user lacks a permission.
    #[error("missing permission {permission}")]
    MissingPermission {
        /// The permission that was required.
        permission: Arc<str>,
    },
    /// A feature the tenant's plan does not include (or that is switched off).
    #[error("feature {flag} is not available on this tenant's plan: upgrade to use it")]
    FeatureDisabled {
        /// The flag.
        flag: Arc<str>,
    },
    /// A quota was exceeded.
    #[error(transparent)]
    Quota(#[from] crate::quota::QuotaExceeded),
    /// An entity belongs to another tenant than the context's.
    #[error(transparent)]
    Mismatch(#[from] crate::TenantMismatch),
    /// Code asked for the current tenant outside any tenant scope.
    #[error(
        "no tenant context in scope: run this code inside tenancy_core::scope or pass the context explicitly"
    )]
    NoContext,
    /// The tenant store failed; details are logged, never sent to clients.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A trusted proxy forwarded a client address this server cannot read.
    #[error(transparent)]
    Forwarded(#[from] crate::client::ClientAddrError),
    /// A verified token was issued by an identity provider this tenant does
    /// not trust (another tenant's, or none configured for it).
    #[error(
        "the token's issuer is not trusted by this tenant: sign in with the tenant's identity provider"
    )]
    IssuerNotTrusted,
    /// The tenant's identity provider could not be reached and no cached key
    /// can verify the token; details are logged.
    #[error("the identity provider is unavailable: {0}")]
    IdentityProviderUnavailable(StoreError),
    /// The session was ended (signed out, role or password changed, tenant
    /// suspended) after this token was issued.
    #[error("the session has ended: sign in again")]
    SessionRevoked,
    /// An impersonated session tried what only the user in person may do
    /// (change credentials, MFA or security settings).
    #[error("an impersonated session cannot do this: the user must do it in person")]
    Impersonated,
    /// The user's membership in the tenant is suspended by its admins.
    #[error("your membership in this tenant is suspended: ask a tenant admin to resume it")]
    MembershipSuspended,
    /// The tenant accepts requests only from certain networks.
    #[error("requests from this address are not allowed by the tenant's network policy")]
    AddressNotAllowed,
    /// The tenant is in a maintenance window
    /// ([`crate::maintenance::Maintenance`]); retry after `retry_after` seconds.
    #[error("{}", message.as_deref().unwrap_or("the tenant is under maintenance: retry later"))]
    Maintenance {
        /// Seconds until the window is expected to end.
        retry_after: u64,
        /// The operator's message, if any.
        message: Option<std::sync::Arc<str>>,
    },
}

impl TenantError {
    /// The HTTP status code for this error.
    ///
    /// | error | status |
    /// |---|---|
    /// | `Missing`, `InvalidId`, `InvalidSlug`, `InvalidHost`, `DuplicateHeader` | 400 |
    /// | `Forwarded` | 400 |
    /// | `InvalidToken`, `Unauthenticated`, `SessionRevoked` | 401 |
    /// | `TrialExpired` | 402 |
    /// | `Conflict`, `Suspended`, `Offboarding`, `NotAMember`, `MissingPermission`, `Mismatch`, `FeatureDisabled`, `IssuerNotTrusted`, `AddressNotAllowed`, `Impersonated`, `MembershipSuspended` | 403 |
    /// | `Quota` | 429 (rate, concurrency), 413 (`*_bytes` stock), 403 (other stock) |
    /// | `NotFound` | 404 |
    /// | `Store`, `IdentityProviderUnavailable` (with `Retry-After: 1`) | 503 |
    /// | `Maintenance` (with `Retry-After` until the window ends) | 503 |
    /// | `NoContext` | 500 |
    pub fn status(&self) -> u16 {
        match self {
            Self::Missing
            | Self::InvalidId(_)
            | Self::InvalidSlug(_)
            | Self::InvalidHost(_)
            | Self::DuplicateHeader { .. }
            | Self::Forwarded(_) => 400,
            Self::InvalidToken { .. } | Self::Unauthenticated | Self::SessionRevoked => 401,
            Self::TrialExpired { .. } => 402,
            Self::Quota(q) => q.status(),
            Self::Conflict { .. }
            | Self::FeatureDisabled { .. }
            | Self::Suspended { .. }
            | Self::Offboarding
            | Self::NotAMember
            | Self::MissingPermission { .. }
            | Self::IssuerNotTrusted
            | Self::AddressNotAllowed
            | Self::Impersonated
            | Self::MembershipSuspended
            | Self::Mismatch(_) => 403,
            Self::NotFound => 404,
            Self::Store(_) | Self::IdentityProviderUnavailable(_) | Self::Maintenance { .. } => 503,
            Self::NoContext => 500,
        }
    }

    /// A stable, machine-readable code (the last segment of a problem `type`).
    pub fn code(&self) -> &'static str {
        match self {
            Self::Missing => "tenant-missing",
            Self::InvalidId(_) => "tenant-id-malformed",
            Self::InvalidSlug(_) => "tenant-slug-malformed",
            Self::InvalidHost(_) => "host-malformed",
            Self::DuplicateHeader { .. } => "tenant-header-duplicated",
            Self::InvalidToken { .. } => "token-invalid",
            Self::Conflict { .. } => "tenant-conflict",
            Self::NotFound => "tenant-not-found",
            Self::Suspended { .. } => "tenant-suspended",
            Self::TrialExpired { .. } => "trial-expired",
            Self::Offboarding => "tenant-offboarding",
            Self::Unauthenticated => "unauthenticated",
            Self::NotAMember => "not-a-member",
            Self::MissingPermission { .. } => "permission-missing",
            Self::Mismatch(_) => "tenant-mismatch",
            Self::FeatureDisabled { .. } => "feature-not-in-plan",
            Self::Quota(q) if q.kind == crate::plan::ResourceKind::Rate => "rate-limited",
            Self::Quota(_) => "quota-exceeded",
            Self::NoContext => "internal",
            Self::Store(_) => "tenant-store-unavailable",
            Self::Forwarded(_) => "forwarded-invalid",
            Self::IssuerNotTrusted => "issuer-not-trusted",
            Self::IdentityProviderUnavailable(_) => "identity-provider-unavailable",
            Self::SessionRevoked => "session-revoked",
            Self::AddressNotAllowed => "address-not-allowed",
            Self::Impersonated => "impersonation-forbidden",
            Self::Maintenance { .. } => "tenant-maintenance",
            Self::MembershipSuspended => "membership-suspended",
        }
    }

    /// A message safe to send to a client: the `Display` text for client
    /// errors, a generic sentence for server errors.
    ///
    /// ```
    /// use tenancy_core::{StoreError, TenantError};
    ///
    /// let err = TenantError::Store(StoreError::msg("password authentication failed for user app"));
    /// assert!(!err.public_message().contains("password"));
    /// ```
    pub fn public_message(&self) -> String {
        if let Self::Store(_) = self {
            "the tenant store is unavailable; retry shortly".to_owned()
        } else if let Self::IdentityProviderUnavailable(_) = self {
            "the identity provider cannot be reached; retry shortly".to_owned()
        } else if let Self::InvalidToken { .. } = self {
            // The reason is logged; clients learn only that the token failed.
            "the bearer token is not valid: sign in again".to_owned()
        } else if let Self::Maintenance { .. } = self {
            // The operator's message is meant for clients.
            self.to_string()
        } else if self.status() >= 500 {
            "internal error".to_owned()
        } else {
            self.to_string()
        }
    }
}

/// Shorthand for results whose error is [`TenantError`].
pub type Result<T, E = TenantError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_and_deleted_look_the_same() {
        // The gate maps Deleted to NotFound; here we pin the wire form.
        let e = TenantError::NotFound;
        assert_eq!((e.status(), e.code()), (404, "tenant-not-found"));
    }

    #[test]
    fn server_errors_hide_details() {
        let e = TenantError::Store(StoreError::msg("db at 10.1.2.3 refused"));
        assert_eq!(e.status(), 503);
        assert!(!e.public_message().contains("10.1.2.3"));
        assert_eq!(TenantError::NoContext.public_message(), "internal error");
        assert!(e.to_string().contains("10.1.2.3"));
    }
}
