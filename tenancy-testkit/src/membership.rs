//! One behaviour table for every [`MembershipWriter`] (memory, PostgreSQL,
//! SQLite): listing a tenant's members, activity times kept across role
//! changes, suspension refused by the [`Authorizer`] and lifted by resuming,
//! removal.
//!
//! ```no_run
//! # async fn f() -> Result<(), String> {
//! use std::sync::Arc;
//! use tenancy_core::{InMemoryMembershipStore, Tenant, TenantId};
//!
//! let tenant = Tenant::new(TenantId::new_v4(), "acme".parse().map_err(|e| format!("{e}"))?, "Acme");
//! tenancy_testkit::membership::administration(Arc::new(InMemoryMembershipStore::new()), &tenant).await?;
//! # Ok(()) }
//! ```

use std::sync::Arc;

use chrono::{Duration, Utc};
use tenancy_core::store::InMemoryTenantStore;
use tenancy_core::{
    Authorizer, Membership, MembershipStatus, MembershipWriter, Role, Tenant, TenantError, UserId,
};

/// Runs the table against `store` for `tenant` (which must exist where the
/// store needs it, e.g. `tenancy.tenants` on PostgreSQL). An `Err` names the
/// rule that broke.
pub async fn administration(
    store: Arc<dyn MembershipWriter>,
    tenant: &Tenant,
) -> Result<(), String> {
    let e = |what: &str| {
        let what = what.to_owned();
        move |err: tenancy_core::StoreError| format!("{what}: {err}")
    };
    let t = tenant.id;
    let (ann, bob, eve) = (UserId::new("ann"), UserId::new("bob"), UserId::new("eve"));
    store
        .put(&Membership::new(ann.clone(), t, Role::Admin))
        .await
        .map_err(e("put ann"))?;
    store
        .put(&Membership::new(bob.clone(), t, Role::Member))
        .await
        .map_err(e("put bob"))?;
    let members = store.members_of(t).await.map_err(e("members_of"))?;
    let names: Vec<&str> = members.iter().map(|m| m.user_id.as_str()).collect();
    if names != ["ann", "bob"] {
        return Err(format!("1. members_of lists {names:?}, not [ann, bob]"));
    }
    if members
        .iter()
        .any(|m| m.status != MembershipStatus::Active || m.last_active_at.is_some())
    {
        return Err(format!(
            "1. new members are not active and unseen: {members:?}"
        ));
    }

    // 2. Activity is recorded, and kept when the role changes.
    let seen = Utc::now() - Duration::minutes(5);
    store.touch(&bob, t, seen).await.map_err(e("touch"))?;
    store
        .put(&Membership::new(bob.clone(), t, Role::Manager))
        .await
        .map_err(e("role change"))?;
    let b = store
        .membership(&bob, t)
        .await
        .map_err(e("read bob"))?
        .ok_or("2. bob vanished")?;
    let kept = b
        .last_active_at
        .is_some_and(|at| (at - seen).num_milliseconds().abs() <= 1);
    if b.role != Role::Manager || !kept {
        return Err(format!(
            "2. after touch and a role change: role {:?}, last active {:?} (want {seen})",
            b.role, b.last_active_at
        ));
    }
    // Touching a non-member creates nothing.
    store.touch(&eve, t, seen).await.map_err(e("touch eve"))?;
    if store
        .membership(&eve, t)
        .await
        .map_err(e("read eve"))?
        .is_some()
    {
        return Err("2. touch created a membership".into());
    }

    // 3. Suspended: refused by the authorizer; resumed: served again.
    let tenants =
        Arc::new(InMemoryTenantStore::with_tenants([tenant.clone()]).map_err(|e| e.to_string())?);
    let authorizer = Authorizer::new(store.clone(), tenants);
    store
        .put(
            &Membership::new(bob.clone(), t, Role::Manager)
                .with_status(MembershipStatus::Suspended),
        )
        .await
        .map_err(e("suspend"))?;
    match authorizer.actor(&bob, tenant).await {
        Err(TenantError::MembershipSuspended) => {}
        other => return Err(format!("3. a suspended member was answered {other:?}")),
    }
    if authorizer.actor(&ann, tenant).await.is_err() {
        return Err("3. suspending bob refused ann".into());
    }
    store
        .put(&Membership::new(bob.clone(), t, Role::Manager))
        .await
        .map_err(e("resume"))?;
    match authorizer.actor(&bob, tenant).await {
        Ok(actor) if actor.role == Role::Manager => {}
        other => return Err(format!("3. a resumed member was answered {other:?}")),
    }

    // 4. Removed: gone, once.
    if !store.remove(&bob, t).await.map_err(e("remove"))? {
        return Err("4. removing bob found nothing".into());
    }
    if store.remove(&bob, t).await.map_err(e("remove again"))? {
        return Err("4. bob was removed twice".into());
    }
    if authorizer.actor(&bob, tenant).await.is_ok() {
        return Err("4. a removed member is still authorized".into());
    }
    let left = store.members_of(t).await.map_err(e("members_of"))?;
    if left.len() != 1 || left[0].user_id != ann {
        return Err(format!("4. after removal: {left:?}"));
    }
    Ok(())
}
