//! A scenario every [`InvitationStore`] must pass: a join whose membership
//! cannot be written gives the invitation back instead of spending it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use tenancy_core::invite::{InvitationStore, Invitations, InviteError};
use tenancy_core::{
    InMemoryMembershipStore, Membership, MembershipStore, MembershipWriter, Role, StoreError,
    TenantId, UserId,
};

/// A membership store whose first `failures` writes fail.
#[derive(Debug)]
pub struct FlakyMembers {
    inner: InMemoryMembershipStore,
    failures: AtomicUsize,
}

impl FlakyMembers {
    /// Fails the first `failures` writes, then stores memberships in memory.
    pub fn new(failures: usize) -> Self {
        Self {
            inner: InMemoryMembershipStore::new(),
            failures: AtomicUsize::new(failures),
        }
    }
}

#[async_trait]
impl MembershipStore for FlakyMembers {
    async fn membership(
        &self,
        user: &UserId,
        tenant: TenantId,
    ) -> Result<Option<Membership>, StoreError> {
        self.inner.membership(user, tenant).await
    }

    async fn memberships_of(&self, user: &UserId) -> Result<Vec<Membership>, StoreError> {
        self.inner.memberships_of(user).await
    }

    async fn members_of(&self, tenant: TenantId) -> Result<Vec<Membership>, StoreError> {
        self.inner.members_of(tenant).await
    }
}

#[async_trait]
impl MembershipWriter for FlakyMembers {
    async fn put(&self, membership: &Membership) -> Result<(), StoreError> {
        let left = self.failures.load(Ordering::SeqCst);
        if left > 0 {
            self.failures.store(left - 1, Ordering::SeqCst);
            return Err(StoreError::new(std::io::Error::other(
                "membership store unavailable (injected)",
            )));
        }
        self.inner.put(membership).await
    }

    async fn remove(&self, user: &UserId, tenant: TenantId) -> Result<bool, StoreError> {
        MembershipWriter::remove(&self.inner, user, tenant).await
    }

    async fn touch(
        &self,
        user: &UserId,
        tenant: TenantId,
        at: chrono::DateTime<chrono::Utc>,
    ) -> Result<(), StoreError> {
        self.inner.touch(user, tenant, at).await
    }
}

/// Invites someone to `tenant` through `store`, makes the first join fail
/// at the membership write, and checks: the acceptance is an error, no
/// membership exists, the invitation is not spent (no `accepted` mark), the
/// same token then joins, and after that it is used up.
///
/// # Panics
/// When the store does not behave so (it is a test helper).
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
pub async fn a_failed_join_releases_the_invitation(
    store: Arc<dyn InvitationStore>,
    tenant: TenantId,
) {
    let members = Arc::new(FlakyMembers::new(1));
    let inv = Invitations::new(store.clone(), members.clone());
    let (invitation, token) = inv
        .invite(
            tenant,
            "retry@example.com",
            Role::Member,
            &UserId::new("admin"),
            chrono::Duration::hours(1),
        )
        .await
        .unwrap();
    let user = UserId::new("retry-user");
    match inv.accept(tenant, token.expose(), &user).await {
        Err(InviteError::Store(_)) => {}
        other => panic!("the failed membership write is reported: {other:?}"),
    }
    assert!(members.membership(&user, tenant).await.unwrap().is_none());
    let after = store
        .by_hash(tenant, &invitation.token_hash)
        .await
        .unwrap()
        .unwrap();
    assert!(after.accepted.is_none(), "the invitation is not spent");
    let joined = inv.accept(tenant, token.expose(), &user).await.unwrap();
    assert_eq!(joined.role, Role::Member);
    assert!(members.membership(&user, tenant).await.unwrap().is_some());
    assert!(matches!(
        inv.accept(tenant, token.expose(), &user).await,
        Err(InviteError::AlreadyUsed)
    ));
}
