use super::{RequestView, Strategy};
use crate::TenantError;
use crate::store::TenantRef;

/// Always names the same tenant: single-tenant mode.
///
/// As a strategy it takes part in conflict detection: a request that names
/// another tenant by any other strategy is refused. For a *default* tenant
/// that applies only when nothing else matched, use
/// [`super::ResolverChain::fallback`] instead.
///
/// ```
/// use tenancy_core::resolve::{SimpleRequest, StaticStrategy, Strategy};
/// use tenancy_core::store::TenantRef;
/// use tenancy_core::TenantId;
///
/// let id = TenantId::new_v4();
/// let s = StaticStrategy::new(TenantRef::Id(id));
/// assert_eq!(s.identify(&SimpleRequest::new("/"))?, Some(TenantRef::Id(id)));
/// # Ok::<(), tenancy_core::TenantError>(())
/// ```
#[derive(Debug, Clone)]
pub struct StaticStrategy {
    tenant: TenantRef,
}

impl StaticStrategy {
    /// Always names `tenant`.
    pub fn new(tenant: TenantRef) -> Self {
        Self { tenant }
    }
}

impl Strategy for StaticStrategy {
    fn name(&self) -> &'static str {
        "static"
    }

    fn identify(&self, _: &dyn RequestView) -> Result<Option<TenantRef>, TenantError> {
        Ok(Some(self.tenant.clone()))
    }
}
