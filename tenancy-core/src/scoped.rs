//! [`TenantScoped`]: entities that belong to one tenant, and the write guard
//! that refuses to let one tenant's context touch another tenant's entity.

use crate::{TenantContext, TenantId};

/// An entity that belongs to exactly one tenant.
///
/// Implement it for every row type that carries a `tenant_id`; data adapters
/// use it to stamp and verify the tenant on writes, so that a value built from
/// tenant B's input can never be written while serving tenant A.
///
/// ```
/// use tenancy_core::{Tenant, TenantContext, TenantId, TenantScoped};
///
/// struct Policy { tenant_id: TenantId, number: String }
///
/// impl TenantScoped for Policy {
///     fn tenant_id(&self) -> TenantId { self.tenant_id }
/// }
///
/// let tenant = Tenant::new(TenantId::new_v4(), "acme".parse()?, "Acme");
/// let ctx = TenantContext::new(tenant);
/// let mine = Policy { tenant_id: ctx.tenant_id(), number: "P-1".into() };
/// let theirs = Policy { tenant_id: TenantId::new_v4(), number: "P-2".into() };
/// assert!(mine.ensure_tenant(&ctx).is_ok());
/// assert!(theirs.ensure_tenant(&ctx).is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub trait TenantScoped {
    /// The tenant this entity belongs to.
    fn tenant_id(&self) -> TenantId;

    /// `Ok` when the entity belongs to the context's tenant.
    fn ensure_tenant(&self, ctx: &TenantContext) -> Result<(), TenantMismatch> {
        let found = self.tenant_id();
        let expected = ctx.tenant_id();
        if found == expected {
            Ok(())
        } else {
            Err(TenantMismatch { expected, found })
        }
    }
}

/// An entity of one tenant was used in the context of another.
///
/// This is always a bug or an attack; the adapters map it to 403 and never
/// reveal the other tenant's id to the client (the ids are for logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("entity belongs to another tenant than the one in context")]
pub struct TenantMismatch {
    /// The context's tenant.
    pub expected: TenantId,
    /// The entity's tenant.
    pub found: TenantId,
}

impl<T: TenantScoped + ?Sized> TenantScoped for &T {
    fn tenant_id(&self) -> TenantId {
        (**self).tenant_id()
    }
}

impl<T: TenantScoped + ?Sized> TenantScoped for Box<T> {
    fn tenant_id(&self) -> TenantId {
        (**self).tenant_id()
    }
}

impl<T: TenantScoped + ?Sized> TenantScoped for std::sync::Arc<T> {
    fn tenant_id(&self) -> TenantId {
        (**self).tenant_id()
    }
}
