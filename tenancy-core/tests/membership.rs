//! Memberships and authorization, including explicit hierarchy rules.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::sync::Arc;

use tenancy_core::store::InMemoryTenantStore;
use tenancy_core::{
    Actor, Authorizer, HierarchyRule, InMemoryMembershipStore, Membership, MembershipStore, Role,
    RolePermissions, Tenant, TenantContext, TenantError, TenantId, UserId, authorize,
};

struct World {
    provider: Tenant,
    region: Tenant,
    office: Tenant,
    other: Tenant,
    tenants: Arc<InMemoryTenantStore>,
    members: Arc<InMemoryMembershipStore>,
}

fn world() -> World {
    let provider = Tenant::new(TenantId::new_v4(), "provider".parse().unwrap(), "P");
    let region =
        Tenant::new(TenantId::new_v4(), "region".parse().unwrap(), "R").with_parent(provider.id);
    let office =
        Tenant::new(TenantId::new_v4(), "office".parse().unwrap(), "O").with_parent(region.id);
    let other = Tenant::new(TenantId::new_v4(), "other".parse().unwrap(), "X");
    let tenants = Arc::new(
        InMemoryTenantStore::with_tenants([
            provider.clone(),
            region.clone(),
            office.clone(),
            other.clone(),
        ])
        .unwrap(),
    );
    let members = Arc::new(InMemoryMembershipStore::new());
    World {
        provider,
        region,
        office,
        other,
        tenants,
        members,
    }
}

#[tokio::test]
async fn authorization_table_by_role() {
    let w = world();
    let authz = Authorizer::new(w.members.clone(), w.tenants.clone());
    let table: [(Role, &str, bool); 12] = [
        (Role::Viewer, "policies:read", true),
        (Role::Viewer, "policies:create", false),
        (Role::Viewer, "policies:delete", false),
        (Role::Member, "policies:read", true),
        (Role::Member, "policies:create", true),
        (Role::Member, "policies:delete", false),
        (Role::Manager, "policies:delete", true),
        (Role::Manager, "members:invite", false),
        (Role::Manager, "customers:export", true),
        (Role::Admin, "members:invite", true),
        (Role::Admin, "settings:update", true),
        (Role::Admin, "malformed", false),
    ];
    for (i, (role, perm, allowed)) in table.into_iter().enumerate() {
        let user = UserId::new(format!("user-{i}"));
        w.members
            .upsert(Membership::new(user.clone(), w.provider.id, role));
        let ctx = authz
            .authorize_user(&TenantContext::new(w.provider.clone()), user)
            .await
            .unwrap();
        let got = authorize(&ctx, perm);
        assert_eq!(got.is_ok(), allowed, "{role} {perm}");
        if let Err(e) = got {
            assert!(matches!(e, TenantError::MissingPermission { .. }));
            assert_eq!(e.status(), 403);
        }
    }
}

#[tokio::test]
async fn extra_grants_and_custom_roles() {
    let w = world();
    let user = UserId::new("ana");
    w.members.upsert(
        Membership::new(user.clone(), w.provider.id, Role::Viewer)
            .with_grant("reports:export".parse().unwrap()),
    );
    let mut roles = RolePermissions::default();
    roles.set(Role::Viewer, vec!["dashboard:read".parse().unwrap()]);
    let authz = Authorizer::new(w.members.clone(), w.tenants.clone()).with_roles(roles);
    let ctx = authz
        .authorize_user(&TenantContext::new(w.provider.clone()), user)
        .await
        .unwrap();
    assert!(authorize(&ctx, "reports:export").is_ok());
    assert!(authorize(&ctx, "dashboard:read").is_ok());
    assert!(authorize(&ctx, "policies:read").is_err());
}

#[tokio::test]
async fn membership_is_per_tenant() {
    let w = world();
    let user = UserId::new("ana");
    w.members
        .upsert(Membership::new(user.clone(), w.provider.id, Role::Admin));
    let authz = Authorizer::new(w.members.clone(), w.tenants.clone());
    let err = authz.actor(&user, &w.other).await.unwrap_err();
    assert!(matches!(err, TenantError::NotAMember));
    assert_eq!(err.status(), 403);
    // No actor at all: 401.
    let anonymous = TenantContext::new(w.other.clone());
    assert_eq!(
        authorize(&anonymous, "policies:read").unwrap_err().status(),
        401
    );
    // A user may list the tenants they belong to.
    w.members
        .upsert(Membership::new(user.clone(), w.other.id, Role::Viewer));
    assert_eq!(w.members.memberships_of(&user).await.unwrap().len(), 2);
}

#[tokio::test]
async fn ancestors_give_no_access_unless_a_rule_says_so() {
    let w = world();
    let boss = UserId::new("boss");
    w.members
        .upsert(Membership::new(boss.clone(), w.provider.id, Role::Admin));

    let direct = Authorizer::new(w.members.clone(), w.tenants.clone());
    assert!(matches!(
        direct.actor(&boss, &w.region).await,
        Err(TenantError::NotAMember)
    ));

    let inherit = direct.clone().with_hierarchy(HierarchyRule::Inherit {
        min_role: Role::Manager,
        max_depth: 1,
        cap: Role::Viewer,
    });
    let actor: Actor = inherit.actor(&boss, &w.region).await.unwrap();
    assert_eq!(actor.role, Role::Viewer, "role is capped");
    assert_eq!(actor.via, Some(w.provider.id), "the route is recorded");
    assert!(actor.can("policies:read") && !actor.can("policies:create"));
    // Depth 2 is beyond max_depth 1.
    assert!(matches!(
        inherit.actor(&boss, &w.office).await,
        Err(TenantError::NotAMember)
    ));
    let deeper = direct.clone().with_hierarchy(HierarchyRule::Inherit {
        min_role: Role::Manager,
        max_depth: 2,
        cap: Role::Admin,
    });
    let actor = deeper.actor(&boss, &w.office).await.unwrap();
    assert_eq!((actor.role, actor.via), (Role::Admin, Some(w.provider.id)));
    // A role below min_role does not carry down.
    let clerk = UserId::new("clerk");
    w.members
        .upsert(Membership::new(clerk.clone(), w.provider.id, Role::Member));
    assert!(deeper.actor(&clerk, &w.region).await.is_err());
    // Unrelated tenants stay out of reach.
    assert!(deeper.actor(&boss, &w.other).await.is_err());
}

#[tokio::test]
async fn a_direct_membership_wins_over_an_inherited_one() {
    let w = world();
    let user = UserId::new("u");
    w.members
        .upsert(Membership::new(user.clone(), w.provider.id, Role::Admin));
    w.members
        .upsert(Membership::new(user.clone(), w.region.id, Role::Viewer));
    let authz = Authorizer::new(w.members.clone(), w.tenants.clone()).with_hierarchy(
        HierarchyRule::Inherit {
            min_role: Role::Admin,
            max_depth: 3,
            cap: Role::Admin,
        },
    );
    let actor = authz.actor(&user, &w.region).await.unwrap();
    assert_eq!((actor.role, actor.via), (Role::Viewer, None));
}

/// Inherited access passes the status gate at every ancestor on the way:
/// the granting provider, and the region between it and the office.
#[tokio::test]
async fn an_ancestor_that_may_not_serve_grants_nothing() {
    use chrono::{Duration, Utc};
    use tenancy_core::TenantStatus;
    use tenancy_core::lifecycle::{Lifecycle, Transition};

    let now = Utc::now();
    let statuses: [(&str, Option<TenantStatus>); 6] = [
        ("active", None),
        (
            "running trial",
            Some(TenantStatus::Trial {
                ends_at: now + Duration::days(3),
            }),
        ),
        (
            "ended trial",
            Some(TenantStatus::Trial {
                ends_at: now - Duration::days(1),
            }),
        ),
        (
            "suspended",
            Some(TenantStatus::Suspended {
                reason: "unpaid".into(),
            }),
        ),
        (
            "offboarding",
            Some(TenantStatus::Offboarding {
                purge_after: now + Duration::days(30),
            }),
        ),
        ("deleted", Some(TenantStatus::Deleted)),
    ];
    for (which, status) in statuses {
        let granted = status
            .as_ref()
            .is_none_or(|s| matches!(s, TenantStatus::Trial { ends_at } if *ends_at > now));
        // The granting ancestor in that status; then the one in between.
        for at_region in [false, true] {
            let w = world();
            let boss = UserId::new("boss");
            w.members
                .upsert(Membership::new(boss.clone(), w.provider.id, Role::Admin));
            let target = if at_region { &w.region } else { &w.provider };
            if let Some(s) = &status {
                // Set directly: the table is about what the authorizer reads.
                w.tenants.remove(target.id);
                w.tenants
                    .insert(target.clone().with_status(s.clone()))
                    .unwrap();
            }
            let authz = Authorizer::new(w.members.clone(), w.tenants.clone()).with_hierarchy(
                HierarchyRule::Inherit {
                    min_role: Role::Admin,
                    max_depth: 2,
                    cap: Role::Admin,
                },
            );
            let got = authz.actor(&boss, &w.office).await;
            assert_eq!(
                got.is_ok(),
                granted,
                "{which} {}: {got:?}",
                if at_region {
                    "region in between"
                } else {
                    "granting provider"
                }
            );
        }
    }

    // And the change takes effect on the next authorization: suspend the
    // provider through the lifecycle, the inherited admin is out.
    let w = world();
    let boss = UserId::new("boss");
    w.members
        .upsert(Membership::new(boss.clone(), w.provider.id, Role::Admin));
    let authz = Authorizer::new(w.members.clone(), w.tenants.clone()).with_hierarchy(
        HierarchyRule::Inherit {
            min_role: Role::Admin,
            max_depth: 1,
            cap: Role::Admin,
        },
    );
    assert!(authz.actor(&boss, &w.region).await.is_ok());
    Lifecycle::new(w.tenants.clone())
        .apply(
            &w.provider,
            Transition::Suspend {
                reason: "fraud".into(),
            },
            "ops",
        )
        .await
        .unwrap();
    assert!(matches!(
        authz.actor(&boss, &w.region).await,
        Err(TenantError::NotAMember)
    ));
}

#[tokio::test]
async fn membership_administration_table_in_memory() {
    let t = Tenant::new(TenantId::new_v4(), "adm".parse().unwrap(), "Adm");
    tenancy_testkit::membership::administration(Arc::new(InMemoryMembershipStore::new()), &t)
        .await
        .unwrap();
}

/// A store that writes whole records as given (forgetting activity) and
/// drops the status: the table must catch both.
struct Careless {
    inner: InMemoryMembershipStore,
    drop_status: bool,
}

#[async_trait::async_trait]
impl MembershipStore for Careless {
    async fn membership(
        &self,
        user: &UserId,
        tenant: TenantId,
    ) -> Result<Option<Membership>, tenancy_core::StoreError> {
        self.inner.membership(user, tenant).await
    }
    async fn memberships_of(
        &self,
        user: &UserId,
    ) -> Result<Vec<Membership>, tenancy_core::StoreError> {
        self.inner.memberships_of(user).await
    }
    async fn members_of(&self, t: TenantId) -> Result<Vec<Membership>, tenancy_core::StoreError> {
        self.inner.members_of(t).await
    }
}

#[async_trait::async_trait]
impl tenancy_core::MembershipWriter for Careless {
    async fn put(&self, m: &Membership) -> Result<(), tenancy_core::StoreError> {
        let mut m = m.clone();
        if self.drop_status {
            m.status = tenancy_core::MembershipStatus::Active;
            m.last_active_at = self
                .inner
                .membership(&m.user_id, m.tenant_id)
                .await?
                .and_then(|o| o.last_active_at);
        }
        self.inner.upsert(m);
        Ok(())
    }
    async fn remove(&self, u: &UserId, t: TenantId) -> Result<bool, tenancy_core::StoreError> {
        Ok(self.inner.remove(u, t).is_some())
    }
    async fn touch(
        &self,
        u: &UserId,
        t: TenantId,
        at: chrono::DateTime<chrono::Utc>,
    ) -> Result<(), tenancy_core::StoreError> {
        tenancy_core::MembershipWriter::touch(&self.inner, u, t, at).await
    }
}

#[tokio::test]
async fn the_administration_table_catches_a_store_that_forgets() {
    let t = Tenant::new(TenantId::new_v4(), "adm".parse().unwrap(), "Adm");
    let forgets_activity = Careless {
        inner: InMemoryMembershipStore::new(),
        drop_status: false,
    };
    let err = tenancy_testkit::membership::administration(Arc::new(forgets_activity), &t)
        .await
        .unwrap_err();
    assert!(err.starts_with("2."), "{err}");
    let drops_status = Careless {
        inner: InMemoryMembershipStore::new(),
        drop_status: true,
    };
    let err = tenancy_testkit::membership::administration(Arc::new(drops_status), &t)
        .await
        .unwrap_err();
    assert!(err.starts_with("3."), "{err}");
}
