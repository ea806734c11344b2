use std::sync::Arc;

use super::{NameKind, RequestView, Strategy, single_header};
use crate::TenantError;
use crate::store::TenantRef;

/// Names the tenant in a request header (`X-Tenant-ID` by default).
///
/// The header must appear at most once: a repeated tenant header is
/// [`TenantError::DuplicateHeader`], because two values mean a spoofing
/// attempt or a misbehaving proxy, and picking one would be a guess.
///
/// ```
/// use tenancy_core::resolve::{HeaderStrategy, SimpleRequest, Strategy};
/// use tenancy_core::store::TenantRef;
///
/// let s = HeaderStrategy::tenant_id();
/// let req = SimpleRequest::new("/").with_header("X-Tenant-ID", "67e55044-10b1-426f-9247-bb680e5fe0c8");
/// assert!(matches!(s.identify(&req)?, Some(TenantRef::Id(_))));
///
/// let bad = SimpleRequest::new("/").with_header("X-Tenant-ID", "' OR 1=1 --");
/// assert_eq!(s.identify(&bad).unwrap_err().status(), 400);
///
/// let by_slug = HeaderStrategy::slug("X-Tenant");
/// let req = SimpleRequest::new("/").with_header("x-tenant", "acme");
/// assert!(matches!(by_slug.identify(&req)?, Some(TenantRef::Slug(_))));
/// # Ok::<(), tenancy_core::TenantError>(())
/// ```
#[derive(Debug, Clone)]
pub struct HeaderStrategy {
    header: Arc<str>,
    kind: NameKind,
}

impl HeaderStrategy {
    /// The default header name.
    pub const DEFAULT_HEADER: &'static str = "x-tenant-id";

    /// Reads a tenant id from `X-Tenant-ID`.
    pub fn tenant_id() -> Self {
        Self::id(Self::DEFAULT_HEADER)
    }

    /// Reads a tenant id from `header`.
    pub fn id(header: &str) -> Self {
        Self {
            header: header.to_ascii_lowercase().into(),
            kind: NameKind::Id,
        }
    }

    /// Reads a tenant slug from `header`.
    pub fn slug(header: &str) -> Self {
        Self {
            header: header.to_ascii_lowercase().into(),
            kind: NameKind::Slug,
        }
    }

    /// The header this strategy reads (lowercase).
    pub fn header_name(&self) -> &str {
        &self.header
    }
}

impl Strategy for HeaderStrategy {
    fn name(&self) -> &'static str {
        "header"
    }

    fn identify(&self, req: &dyn RequestView) -> Result<Option<TenantRef>, TenantError> {
        match single_header(req, &self.header)? {
            None => Ok(None),
            Some(value) => self.kind.parse(value).map(Some),
        }
    }
}
