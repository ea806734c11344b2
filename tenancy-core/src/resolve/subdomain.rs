use std::collections::HashSet;

use super::{RequestView, Strategy};
use crate::store::TenantRef;
use crate::{DomainName, HostError, TenantError, TenantSlug};

/// Names the tenant by the subdomain of a base domain:
/// `acme.example.com` → slug `acme`.
///
/// Only hosts exactly one label below a base domain match; the base domain
/// itself, deeper names and unrelated hosts do not. Reserved labels (`www`,
/// `app`, `api`, `admin` by default) never name a tenant. Hosts are
/// normalised first (case, port, trailing dot); a malformed host is
/// [`TenantError::InvalidHost`], an IP-address host simply does not match.
///
/// ```
/// use tenancy_core::resolve::{SimpleRequest, Strategy, SubdomainStrategy};
/// use tenancy_core::store::TenantRef;
///
/// let s = SubdomainStrategy::new("example.com".parse()?);
/// let named = s.identify(&SimpleRequest::new("/").with_host("ACME.example.com.:443"))?;
/// assert_eq!(named, Some(TenantRef::Slug("acme".parse()?)));
/// assert_eq!(s.identify(&SimpleRequest::new("/").with_host("www.example.com"))?, None);
/// assert_eq!(s.identify(&SimpleRequest::new("/").with_host("example.com"))?, None);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct SubdomainStrategy {
    bases: Vec<DomainName>,
    reserved: HashSet<String>,
}

impl SubdomainStrategy {
    /// Labels that never name a tenant unless [`SubdomainStrategy::reserved`] replaces them.
    pub const DEFAULT_RESERVED: [&'static str; 4] = ["www", "app", "api", "admin"];

    /// Matches subdomains of `base`.
    pub fn new(base: DomainName) -> Self {
        Self {
            bases: vec![base],
            reserved: Self::DEFAULT_RESERVED
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
        }
    }

    /// Also matches subdomains of `base` (for example a staging domain).
    pub fn with_base(mut self, base: DomainName) -> Self {
        self.bases.push(base);
        self
    }

    /// Replaces the reserved labels.
    pub fn reserved<I, S>(mut self, labels: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.reserved = labels
            .into_iter()
            .map(|s| s.into().to_ascii_lowercase())
            .collect();
        self
    }

    /// The base domains.
    pub fn bases(&self) -> &[DomainName] {
        &self.bases
    }
}

/// The request's host as a domain name: `Ok(None)` when absent or an IP address.
pub(crate) fn request_domain(req: &dyn RequestView) -> Result<Option<DomainName>, TenantError> {
    let Some(host) = req.host() else {
        return Ok(None);
    };
    match DomainName::from_host(host) {
        Ok(d) => Ok(Some(d)),
        Err(HostError::IpLiteral) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

impl Strategy for SubdomainStrategy {
    fn name(&self) -> &'static str {
        "subdomain"
    }

    fn identify(&self, req: &dyn RequestView) -> Result<Option<TenantRef>, TenantError> {
        let Some(host) = request_domain(req)? else {
            return Ok(None);
        };
        for base in &self.bases {
            if let Some(label) = host.label_under(base) {
                if self.reserved.contains(label) {
                    return Ok(None);
                }
                return Ok(Some(TenantRef::Slug(TenantSlug::new(label)?)));
            }
        }
        Ok(None)
    }
}
