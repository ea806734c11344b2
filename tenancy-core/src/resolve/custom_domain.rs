use super::subdomain::request_domain;
use super::{RequestView, Strategy};
use crate::store::TenantRef;
use crate::{DomainName, TenantError};

/// Names the tenant by a custom domain it registered (`portal.acme-insurance.com`).
///
/// Any host outside the platform's own domains is a candidate; the chain
/// looks it up in the store, and an unregistered domain simply does not match
/// (so `localhost` or a health-check host falls through to other strategies).
/// Hosts within an excluded domain (your platform domain, by default nothing)
/// are never looked up, which keeps subdomain traffic off this path.
///
/// ```
/// use tenancy_core::resolve::{CustomDomainStrategy, SimpleRequest, Strategy};
/// use tenancy_core::store::TenantRef;
///
/// let s = CustomDomainStrategy::new().exclude("example.com".parse()?);
/// let named = s.identify(&SimpleRequest::new("/").with_host("Portal.Acme.test:8443"))?;
/// assert_eq!(named, Some(TenantRef::Domain("portal.acme.test".parse()?)));
/// assert_eq!(s.identify(&SimpleRequest::new("/").with_host("acme.example.com"))?, None);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct CustomDomainStrategy {
    excluded: Vec<DomainName>,
}

impl CustomDomainStrategy {
    /// Looks up every host.
    pub fn new() -> Self {
        Self::default()
    }

    /// Never looks up `domain` or any name below it.
    pub fn exclude(mut self, domain: DomainName) -> Self {
        self.excluded.push(domain);
        self
    }
}

impl Strategy for CustomDomainStrategy {
    fn name(&self) -> &'static str {
        "custom-domain"
    }

    fn identify(&self, req: &dyn RequestView) -> Result<Option<TenantRef>, TenantError> {
        let Some(host) = request_domain(req)? else {
            return Ok(None);
        };
        if self.excluded.iter().any(|base| host.is_within(base)) {
            return Ok(None);
        }
        Ok(Some(TenantRef::Domain(host)))
    }
}
