//! Invitations: single use, expiry, foreign and malformed tokens.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::sync::Arc;

use chrono::{Duration, Utc};
use tenancy_core::invite::{
    InMemoryInvitationStore, InvitationStore, Invitations, InviteError, parse_token,
};
use tenancy_core::{InMemoryMembershipStore, MembershipStore, Role, TenantId, UserId};

fn setup() -> (
    Invitations,
    Arc<InMemoryMembershipStore>,
    Arc<InMemoryInvitationStore>,
) {
    let members = Arc::new(InMemoryMembershipStore::new());
    let store = Arc::new(InMemoryInvitationStore::default());
    (
        Invitations::new(store.clone(), members.clone()),
        members,
        store,
    )
}

#[tokio::test]
async fn a_token_is_single_use_and_only_its_hash_is_stored() {
    let (inv, members, store) = setup();
    let t = TenantId::new_v4();
    let admin = UserId::new("admin");
    let (invitation, token) = inv
        .invite(
            t,
            " Asha@Example.com ",
            Role::Manager,
            &admin,
            Duration::days(7),
        )
        .await
        .unwrap();
    assert_eq!(invitation.email, "asha@example.com");
    assert!(
        !format!("{token:?}").contains(token.expose()),
        "debug output is redacted"
    );
    let (tenant, hash) = parse_token(token.expose()).unwrap();
    assert_eq!(tenant, t);
    let stored = store.by_hash(t, &hash).await.unwrap().unwrap();
    assert_ne!(stored.token_hash.as_slice(), token.expose().as_bytes());

    let m = inv
        .accept(t, token.expose(), &UserId::new("asha"))
        .await
        .unwrap();
    assert_eq!(m.role, Role::Manager);
    assert_eq!(
        members
            .membership(&UserId::new("asha"), t)
            .await
            .unwrap()
            .unwrap()
            .role,
        Role::Manager
    );
    let err = inv
        .accept(t, token.expose(), &UserId::new("mallory"))
        .await
        .unwrap_err();
    assert!(matches!(err, InviteError::AlreadyUsed));
    assert_eq!(err.status(), 409);
    assert!(
        members
            .membership(&UserId::new("mallory"), t)
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn concurrent_acceptances_let_exactly_one_through() {
    let (inv, members, _) = setup();
    let t = TenantId::new_v4();
    let (_, token) = inv
        .invite(
            t,
            "a@b.c",
            Role::Member,
            &UserId::new("admin"),
            Duration::hours(1),
        )
        .await
        .unwrap();
    let token = Arc::new(token.expose().to_owned());
    let mut tasks = Vec::new();
    for i in 0..16 {
        let (inv, token) = (inv.clone(), token.clone());
        tasks.push(tokio::spawn(async move {
            inv.accept(t, &token, &UserId::new(format!("u{i}"))).await
        }));
    }
    let mut ok = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => ok += 1,
            Err(e) => assert!(matches!(e, InviteError::AlreadyUsed), "{e}"),
        }
    }
    assert_eq!(ok, 1);
    let mut joined = 0;
    for i in 0..16 {
        joined += usize::from(
            members
                .membership(&UserId::new(format!("u{i}")), t)
                .await
                .unwrap()
                .is_some(),
        );
    }
    assert_eq!(joined, 1);
}

#[tokio::test]
async fn expired_foreign_unknown_and_malformed_tokens_are_refused_clearly() {
    let (inv, _, _) = setup();
    let (a, b) = (TenantId::new_v4(), TenantId::new_v4());
    let admin = UserId::new("admin");
    let (_, token) = inv
        .invite(a, "x@y.z", Role::Viewer, &admin, Duration::hours(1))
        .await
        .unwrap();

    let later = Utc::now() + Duration::hours(2);
    let err = inv
        .accept_at(a, token.expose(), &UserId::new("u"), later)
        .await
        .unwrap_err();
    assert!(matches!(err, InviteError::Expired(_)));
    assert_eq!(err.status(), 410);

    let err = inv
        .accept(b, token.expose(), &UserId::new("u"))
        .await
        .unwrap_err();
    assert!(matches!(err, InviteError::WrongTenant));
    assert_eq!(err.status(), 403);

    // Well formed, right tenant, never issued.
    let (_, other) = setup()
        .0
        .invite(a, "x@y.z", Role::Viewer, &admin, Duration::hours(1))
        .await
        .unwrap();
    let err = inv
        .accept(a, other.expose(), &UserId::new("u"))
        .await
        .unwrap_err();
    assert!(matches!(err, InviteError::NotFound));
    assert_eq!(err.status(), 404);

    for bad in [
        "",
        "abc",
        &format!("{a}."),
        &format!("{a}.!!!"),
        &format!("{a}.AAAA"),
        "not-a-uuid.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "../../etc/passwd",
    ] {
        let err = inv.accept(a, bad, &UserId::new("u")).await.unwrap_err();
        assert!(matches!(err, InviteError::Malformed), "{bad}: {err}");
        assert_eq!(err.status(), 400);
    }
    for email in ["", "nobody", "@x", "x@"] {
        assert!(matches!(
            inv.invite(a, email, Role::Viewer, &admin, Duration::hours(1))
                .await,
            Err(InviteError::Invalid(_))
        ));
    }
    assert!(matches!(
        inv.invite(a, "x@y.z", Role::Viewer, &admin, Duration::zero())
            .await,
        Err(InviteError::Invalid(_))
    ));

    // Revoked: gone.
    let (invitation, token) = inv
        .invite(a, "r@y.z", Role::Viewer, &admin, Duration::hours(1))
        .await
        .unwrap();
    assert!(inv.revoke(a, invitation.id).await.unwrap());
    assert!(matches!(
        inv.accept(a, token.expose(), &UserId::new("u")).await,
        Err(InviteError::NotFound)
    ));
}

/// Refuses every membership write.
struct Unwritable;

#[async_trait::async_trait]
impl MembershipStore for Unwritable {
    async fn membership(
        &self,
        _: &UserId,
        _: TenantId,
    ) -> Result<Option<tenancy_core::Membership>, tenancy_core::StoreError> {
        Ok(None)
    }

    async fn memberships_of(
        &self,
        _: &UserId,
    ) -> Result<Vec<tenancy_core::Membership>, tenancy_core::StoreError> {
        Ok(Vec::new())
    }

    async fn members_of(
        &self,
        _: TenantId,
    ) -> Result<Vec<tenancy_core::Membership>, tenancy_core::StoreError> {
        Ok(Vec::new())
    }
}

#[async_trait::async_trait]
impl tenancy_core::MembershipWriter for Unwritable {
    async fn put(&self, _: &tenancy_core::Membership) -> Result<(), tenancy_core::StoreError> {
        Err(tenancy_core::StoreError::new(std::io::Error::other(
            "injected",
        )))
    }

    async fn remove(&self, _: &UserId, _: TenantId) -> Result<bool, tenancy_core::StoreError> {
        Err(tenancy_core::StoreError::msg("injected"))
    }

    async fn touch(
        &self,
        _: &UserId,
        _: TenantId,
        _: chrono::DateTime<chrono::Utc>,
    ) -> Result<(), tenancy_core::StoreError> {
        Err(tenancy_core::StoreError::msg("injected"))
    }
}

#[tokio::test]
async fn a_join_that_cannot_be_written_does_not_spend_the_invitation() {
    let store = Arc::new(InMemoryInvitationStore::default());
    let t = TenantId::new_v4();
    let failing = Invitations::new(store.clone(), Arc::new(Unwritable));
    let (invitation, token) = failing
        .invite(
            t,
            "a@example.com",
            Role::Member,
            &UserId::new("admin"),
            Duration::days(1),
        )
        .await
        .unwrap();
    assert!(matches!(
        failing.accept(t, token.expose(), &UserId::new("a")).await,
        Err(InviteError::Store(_))
    ));
    let kept = store
        .by_hash(t, &invitation.token_hash)
        .await
        .unwrap()
        .unwrap();
    assert!(kept.accepted.is_none(), "released after the failed write");
    // Another user cannot release someone else's acceptance.
    let inv = Invitations::new(store.clone(), Arc::new(InMemoryMembershipStore::new()));
    inv.accept(t, token.expose(), &UserId::new("a"))
        .await
        .unwrap();
    assert!(
        !store
            .release(t, &invitation.token_hash, &UserId::new("b"))
            .await
            .unwrap()
    );
    assert!(
        store
            .by_hash(t, &invitation.token_hash)
            .await
            .unwrap()
            .unwrap()
            .accepted
            .is_some()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn seats_in_memory_are_exact_and_the_unlocked_twin_is_not() {
    let report = tenancy_testkit::invite::seats_are_exact(
        Arc::new(InMemoryInvitationStore::default()),
        Arc::new(tenancy_core::InMemoryMembershipStore::new()),
        TenantId::new_v4(),
    )
    .await
    .unwrap();
    assert_eq!((report.issued, report.refused), (4, 60));
    let err = tenancy_testkit::invite::seats_are_exact(
        Arc::new(tenancy_testkit::invite::UnlockedSeats(Arc::new(
            InMemoryInvitationStore::default(),
        ))),
        Arc::new(tenancy_core::InMemoryMembershipStore::new()),
        TenantId::new_v4(),
    )
    .await
    .unwrap_err();
    assert!(err.starts_with("1."), "{err}");
}
