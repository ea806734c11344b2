//! Authorization: turning an authenticated user into an [`Actor`] of a tenant
//! ([`Authorizer`]), and checking a permission ([`authorize`]).
//!
//! Access to a tenant normally requires a membership *in that tenant*. Access
//! to a descendant tenant through a role in one of its ancestors (a provider's
//! admin looking into a regional office) is never implicit: it needs a
//! [`HierarchyRule::Inherit`] configured on the [`Authorizer`], and the
//! resulting actor records the ancestor it came through in [`Actor::via`].
//! An ancestor grants nothing unless it is itself admitted to serve
//! ([`crate::gate::check`]): the access of a suspended, offboarding or
//! deleted provider's admins ends in its offices too.

use std::sync::Arc;

use crate::store::TenantStore;
use crate::{
    MembershipStore, Permission, Role, RolePermissions, Tenant, TenantContext, TenantError,
    TenantId, UserId,
};

/// An authenticated user acting in a tenant, with effective permissions.
///
/// ```
/// use tenancy_core::{Actor, Role, UserId};
///
/// let actor = Actor::new(UserId::new("u1"), Role::Member, vec!["*:read".parse()?]);
/// assert!(actor.can("policies:read"));
/// assert!(!actor.can("policies:delete"));
/// # Ok::<(), tenancy_core::PermissionError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Actor {
    /// Who is acting.
    pub user_id: UserId,
    /// The role the user acts with in this tenant.
    pub role: Role,
    /// Effective grants: the role's defaults plus the membership's extras.
    pub grants: Arc<[Permission]>,
    /// When access comes through a membership in an ancestor tenant, that
    /// ancestor's id; `None` for a direct membership.
    pub via: Option<TenantId>,
    /// The operator acting as this user through an impersonation grant
    /// (`None`: the user in person). Audit events record both identities
    /// ([`AuditEvent::from_context`](crate::audit::AuditEvent::from_context)).
    pub impersonator: Option<Arc<str>>,
}

impl Actor {
    /// An actor with explicit grants and a direct membership.
    pub fn new(user_id: UserId, role: Role, grants: Vec<Permission>) -> Self {
        Self {
            user_id,
            role,
            grants: grants.into(),
            via: None,
            impersonator: None,
        }
    }

    /// The same actor, acted by `operator` through an impersonation grant.
    pub fn impersonated_by(mut self, operator: impl Into<Arc<str>>) -> Self {
        self.impersonator = Some(operator.into());
        self
    }

    /// Whether the actor holds the concrete permission `required`.
    pub fn can(&self, required: &str) -> bool {
        self.grants.iter().any(|g| g.allows(required))
    }
}

/// Whether, and how, membership in an ancestor tenant gives access to its
/// descendants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum HierarchyRule {
    /// A membership counts only in its own tenant. The default.
    #[default]
    DirectOnly,
    /// Members of an ancestor holding at least `min_role` may act in tenants up
    /// to `max_depth` levels below it, with their role capped at `cap`. Extra
    /// grants of the ancestor membership do not carry down.
    Inherit {
        /// The least role in the ancestor that carries down.
        min_role: Role,
        /// How many levels below the ancestor the access reaches (1 = children).
        max_depth: u8,
        /// The most privileged role the user gets in the descendant.
        cap: Role,
    },
}

/// Resolves a user's [`Actor`] in a tenant from memberships.
///
/// ```
/// use std::sync::Arc;
/// use tenancy_core::{
///     authorize, Authorizer, InMemoryMembershipStore, Membership, Role, Tenant, TenantContext,
///     TenantId, UserId,
/// };
/// use tenancy_core::store::InMemoryTenantStore;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let tenants = Arc::new(InMemoryTenantStore::new());
/// let acme = Tenant::new(TenantId::new_v4(), "acme".parse()?, "Acme");
/// tenants.insert(acme.clone())?;
/// let members = Arc::new(InMemoryMembershipStore::new());
/// members.upsert(Membership::new(UserId::new("ana"), acme.id, Role::Viewer));
///
/// let authz = Authorizer::new(members, tenants);
/// let ctx = authz.authorize_user(&TenantContext::new(acme), UserId::new("ana")).await?;
/// assert!(authorize(&ctx, "policies:read").is_ok());
/// assert_eq!(authorize(&ctx, "policies:create").unwrap_err().status(), 403);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Authorizer {
    memberships: Arc<dyn MembershipStore>,
    tenants: Arc<dyn TenantStore>,
    roles: RolePermissions,
    hierarchy: HierarchyRule,
}

impl std::fmt::Debug for Authorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authorizer")
            .field("roles", &self.roles)
            .field("hierarchy", &self.hierarchy)
            .finish_non_exhaustive()
    }
}

impl Authorizer {
    /// An authorizer with default role permissions and [`HierarchyRule::DirectOnly`].
    pub fn new(memberships: Arc<dyn MembershipStore>, tenants: Arc<dyn TenantStore>) -> Self {
        Self {
            memberships,
            tenants,
            roles: RolePermissions::default(),
            hierarchy: HierarchyRule::DirectOnly,
        }
    }

    /// Replaces the role permissions.
    pub fn with_roles(mut self, roles: RolePermissions) -> Self {
        self.roles = roles;
        self
    }

    /// Sets the hierarchy rule.
    pub fn with_hierarchy(mut self, rule: HierarchyRule) -> Self {
        self.hierarchy = rule;
        self
    }

    /// The role permissions in use.
    pub fn roles(&self) -> &RolePermissions {
        &self.roles
    }

    /// The actor `user` is in `tenant`, or [`TenantError::NotAMember`].
    pub async fn actor(&self, user: &UserId, tenant: &Tenant) -> Result<Actor, TenantError> {
        if let Some(m) = self.memberships.membership(user, tenant.id).await? {
            if m.status == crate::MembershipStatus::Suspended {
                return Err(TenantError::MembershipSuspended);
            }
            let mut grants = self.roles.grants(m.role).to_vec();
            grants.extend(m.grants);
            return Ok(Actor {
                user_id: m.user_id,
                role: m.role,
                grants: grants.into(),
                via: None,
                impersonator: None,
            });
        }
        let HierarchyRule::Inherit {
            min_role,
            max_depth,
            cap,
        } = self.hierarchy
        else {
            return Err(TenantError::NotAMember);
        };
        // Walk up the ancestors. Each one on the way — the one that grants
        // the role and every one between it and `tenant` — must itself be
        // admitted to serve: a suspended, offboarding or deleted provider
        // grants nothing in its offices, and neither does one above it.
        let now = chrono::Utc::now();
        let mut parent = tenant.parent;
        let mut depth = 0u8;
        while let Some(ancestor_id) = parent {
            depth = depth.saturating_add(1);
            if depth > max_depth || ancestor_id == tenant.id {
                break;
            }
            let Some(ancestor) = self.tenants.by_id(ancestor_id).await? else {
                break;
            };
            if crate::gate::check(&ancestor, now).is_err() {
                tracing::debug!(
                    tenant.id = %tenant.id,
                    ancestor = %ancestor_id,
                    "inherited access refused: the ancestor is not admitted"
                );
                break;
            }
            if let Some(m) = self.memberships.membership(user, ancestor_id).await?
                && m.role >= min_role
                && m.status == crate::MembershipStatus::Active
            {
                let role = m.role.min(cap);
                return Ok(Actor {
                    user_id: m.user_id,
                    role,
                    grants: self.roles.grants(role).to_vec().into(),
                    via: Some(ancestor_id),
                    impersonator: None,
                });
            }
            parent = ancestor.parent;
        }
        Err(TenantError::NotAMember)
    }

    /// The actor `user` signs in as in `tenant`, for issuing a session: the
    /// user's access is checked first (a non-member learns nothing about
    /// the tenant: [`TenantError::NotAMember`]), then the tenant must be
    /// admitted to serve ([`crate::gate::check`]) — a suspended, offboarding,
    /// expired or deleted tenant issues no session
    /// ([`TenantError::Suspended`], [`TenantError::Offboarding`],
    /// [`TenantError::TrialExpired`], [`TenantError::NotFound`]).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use tenancy_core::store::InMemoryTenantStore;
    /// use tenancy_core::{
    ///     Authorizer, InMemoryMembershipStore, Membership, Role, Tenant, TenantError, TenantId,
    ///     TenantStatus, UserId,
    /// };
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let acme = Tenant::new(TenantId::new_v4(), "acme".parse()?, "Acme")
    ///     .with_status(TenantStatus::Suspended { reason: "unpaid".into() });
    /// let members = Arc::new(InMemoryMembershipStore::new());
    /// members.upsert(Membership::new(UserId::new("ana"), acme.id, Role::Admin));
    /// let authz = Authorizer::new(members, Arc::new(InMemoryTenantStore::new()));
    ///
    /// let refused = authz.sign_in(&UserId::new("ana"), &acme).await.unwrap_err();
    /// assert!(matches!(refused, TenantError::Suspended { .. }));
    /// // A stranger is told only that they are not a member.
    /// let stranger = authz.sign_in(&UserId::new("eve"), &acme).await.unwrap_err();
    /// assert!(matches!(stranger, TenantError::NotAMember));
    /// # Ok(()) }
    /// ```
    pub async fn sign_in(&self, user: &UserId, tenant: &Tenant) -> Result<Actor, TenantError> {
        let actor = self.actor(user, tenant).await?;
        crate::gate::check(tenant, chrono::Utc::now())?;
        Ok(actor)
    }

    /// `ctx` with the actor `user` is in its tenant attached.
    pub async fn authorize_user(
        &self,
        ctx: &TenantContext,
        user: UserId,
    ) -> Result<TenantContext, TenantError> {
        let actor = self.actor(&user, ctx.tenant()).await?;
        Ok(ctx.with_actor(actor))
    }
}

/// Checks that the context's actor holds `permission`.
///
/// [`TenantError::Unauthenticated`] when the context has no actor,
/// [`TenantError::MissingPermission`] when the actor lacks the permission.
pub fn authorize(ctx: &TenantContext, permission: &str) -> Result<(), TenantError> {
    let actor = ctx.actor().ok_or(TenantError::Unauthenticated)?;
    if actor.can(permission) {
        Ok(())
    } else {
        Err(TenantError::MissingPermission {
            permission: permission.into(),
        })
    }
}
