//! Which tenant an issuer belongs to: the tenant resolved from a token's
//! issuer.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use super::{IdentitySettings, OidcError};
use crate::resolve::{RequestView, Strategy};
use crate::store::TenantRef;
use crate::{TenantError, TenantId};

/// Issuer → tenant, one tenant per issuer. Fill it from the tenants'
/// [`IdentitySettings`] at start-up and whenever they change
/// ([`IssuerDirectory::set`]).
///
/// ```
/// use tenancy_core::oidc::{IdentitySettings, IssuerDirectory, IssuerSettings};
/// use tenancy_core::TenantId;
///
/// let dir = IssuerDirectory::new();
/// let (a, b) = (TenantId::new_v4(), TenantId::new_v4());
/// let idp = IdentitySettings::new(vec![IssuerSettings::new("https://idp.acme.example", &["api"])]);
/// dir.set(a, Some(&idp))?;
/// assert_eq!(dir.tenant_of("https://idp.acme.example"), Some(a));
/// assert!(dir.set(b, Some(&idp)).is_err()); // taken
/// dir.set(a, None)?; // tenant a drops it
/// dir.set(b, Some(&idp))?;
/// # Ok::<(), tenancy_core::oidc::OidcError>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct IssuerDirectory {
    map: Arc<RwLock<HashMap<String, TenantId>>>,
}

impl IssuerDirectory {
    /// Empty.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes `tenant`'s issuers exactly those of `settings` (none: `None`).
    /// Refused, changing nothing, when another tenant has one of them.
    pub fn set(
        &self,
        tenant: TenantId,
        settings: Option<&IdentitySettings>,
    ) -> Result<(), OidcError> {
        let mut map = self
            .map
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(s) = settings {
            for i in &s.issuers {
                if let Some(other) = map.get(&i.issuer).filter(|t| **t != tenant) {
                    return Err(OidcError::IssuerTaken {
                        issuer: i.issuer.clone(),
                        tenant: *other,
                    });
                }
            }
        }
        map.retain(|_, t| *t != tenant);
        if let Some(s) = settings {
            for i in &s.issuers {
                map.insert(i.issuer.clone(), tenant);
            }
        }
        Ok(())
    }

    /// The tenant of `issuer`.
    pub fn tenant_of(&self, issuer: &str) -> Option<TenantId> {
        self.map
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(issuer)
            .copied()
    }
}

/// Names the tenant by the issuer of the bearer token (read before the
/// signature is checked: the tenant's own keys then verify it, in the
/// pipeline's [`OidcVerifier`](super::OidcVerifier) step). A token whose
/// issuer is in no tenant's settings does not match.
#[derive(Debug, Clone)]
pub struct IssuerStrategy {
    directory: IssuerDirectory,
}

impl IssuerStrategy {
    /// Resolves through `directory`.
    pub fn new(directory: IssuerDirectory) -> Self {
        Self { directory }
    }
}

impl Strategy for IssuerStrategy {
    fn name(&self) -> &'static str {
        "issuer"
    }

    fn identify(&self, req: &dyn RequestView) -> Result<Option<TenantRef>, TenantError> {
        // Not a readable bearer JWT with an issuer: not ours to judge.
        let Some(token) = crate::identity::bearer(req).ok().flatten() else {
            return Ok(None);
        };
        let Some(iss) = crate::identity::unverified_issuer(token) else {
            return Ok(None);
        };
        Ok(self.directory.tenant_of(&iss).map(TenantRef::Id))
    }
}
