//! Scenarios every [`InvitationStore`] must pass: a join whose membership
//! cannot be written gives the invitation back instead of spending it; seats
//! are exact under concurrent invitations and acceptances
//! ([`seats_are_exact`]), which a store counting without a lock
//! ([`UnlockedSeats`], the broken twin) fails.

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

/// What [`seats_are_exact`] observed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeatsReport {
    /// Of [`SEAT_RACERS`] concurrent invitations for the last free seats,
    /// how many were issued.
    pub issued: usize,
    /// How many were refused for want of a seat.
    pub refused: usize,
}

/// Concurrent invitations in [`seats_are_exact`].
pub const SEAT_RACERS: usize = 64;

/// Seats under contention, on `store` with memberships in `members` (the
/// same database for the SQL stores), for `tenant` (which must exist where
/// the stores need it) with a plan of 5 seats and one admin member:
///
/// 1. [`SEAT_RACERS`] concurrent invitations: exactly 4 issued;
/// 2. a revoked invitation returns its seat; an accepted one keeps it as a
///    membership, also while 32 invitations race the acceptances;
/// 3. an expired invitation holds no seat.
///
/// `Err` names the rule that broke, with the report of rule 1.
///
/// # Panics
/// Never on a store that behaves; it is a test helper.
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
pub async fn seats_are_exact(
    store: Arc<dyn InvitationStore>,
    members: Arc<dyn MembershipWriter>,
    tenant: TenantId,
) -> Result<SeatsReport, String> {
    use chrono::Duration;
    use tenancy_core::invite::InviteError;
    use tenancy_core::{Membership, Role};

    const LIMIT: u64 = 5;
    let admin = UserId::new("seat-admin");
    members
        .put(&Membership::new(admin.clone(), tenant, Role::Admin))
        .await
        .map_err(|e| format!("put admin: {e}"))?;
    let invitations = Invitations::new(store.clone(), members.clone());
    let race = |n: usize, prefix: &'static str| {
        let invitations = invitations.clone();
        let admin = admin.clone();
        async move {
            let tasks: Vec<_> = (0..n)
                .map(|i| {
                    let (invitations, admin) = (invitations.clone(), admin.clone());
                    tokio::spawn(async move {
                        invitations
                            .invite_within(
                                tenant,
                                &format!("{prefix}{i}@example.com"),
                                Role::Member,
                                &admin,
                                Duration::days(3),
                                LIMIT,
                            )
                            .await
                    })
                })
                .collect();
            let mut issued = Vec::new();
            let mut refused = 0;
            for t in tasks {
                match t.await.map_err(|e| e.to_string())? {
                    Ok(ok) => issued.push(ok),
                    Err(InviteError::NoSeat { limit: LIMIT, .. }) => refused += 1,
                    Err(e) => return Err(format!("an invitation failed otherwise: {e}")),
                }
            }
            Ok::<_, String>((issued, refused))
        }
    };
    let (issued, refused) = race(SEAT_RACERS, "racer").await?;
    let report = SeatsReport {
        issued: issued.len(),
        refused,
    };
    let used = invitations
        .seats_used(tenant)
        .await
        .map_err(|e| e.to_string())?;
    if issued.len() != 4 || used != LIMIT {
        return Err(format!(
            "1. {} of {SEAT_RACERS} issued for 4 free seats, {used} seats used: {report:?}",
            issued.len()
        ));
    }

    // 2. Revocation returns the seat; acceptance turns it into a membership.
    let (first, _) = &issued[0];
    invitations
        .revoke(tenant, first.id)
        .await
        .map_err(|e| e.to_string())?;
    let used = invitations
        .seats_used(tenant)
        .await
        .map_err(|e| e.to_string())?;
    if used != LIMIT - 1 {
        return Err(format!("2. after a revocation {used} seats used, not 4"));
    }
    let (again, refused_again) = race(8, "again").await?;
    if again.len() != 1 || refused_again != 7 {
        return Err(format!(
            "2. the returned seat went to {} of 8 invitations",
            again.len()
        ));
    }
    // Acceptances race 32 new invitations: none of those gets a seat.
    let joiners: Vec<_> = issued[1..]
        .iter()
        .enumerate()
        .map(|(i, (_, token))| {
            let (invitations, token) = (invitations.clone(), token.expose().to_owned());
            tokio::spawn(async move {
                invitations
                    .accept(tenant, &token, &UserId::new(format!("joiner{i}")))
                    .await
            })
        })
        .collect();
    let (late, _) = race(32, "late").await?;
    for j in joiners {
        j.await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("2. an acceptance failed: {e}"))?;
    }
    let used = invitations
        .seats_used(tenant)
        .await
        .map_err(|e| e.to_string())?;
    if !late.is_empty() || used != LIMIT {
        return Err(format!(
            "2. with acceptances racing, {} late invitations were issued and {used} seats are used",
            late.len()
        ));
    }
    let joined = members
        .members_of(tenant)
        .await
        .map_err(|e| e.to_string())?
        .len();
    if joined != 4 {
        return Err(format!("2. {joined} members, not the admin and 3 joiners"));
    }

    // 3. Expired invitations hold nothing: four days on, only members count.
    let later = chrono::Utc::now() + Duration::days(4);
    let used_later = store
        .seats_used(tenant, &*members, later)
        .await
        .map_err(|e| e.to_string())?;
    if used_later != 4 {
        return Err(format!(
            "3. four days on, {used_later} seats used, not the 4 members"
        ));
    }
    Ok(report)
}

/// The broken twin of seat counting: wraps a store but counts and inserts
/// in two steps, without a lock, as a hand-written check would.
pub struct UnlockedSeats(pub Arc<dyn InvitationStore>);

#[async_trait]
impl InvitationStore for UnlockedSeats {
    async fn insert(&self, i: &tenancy_core::invite::Invitation) -> Result<(), StoreError> {
        self.0.insert(i).await
    }
    async fn by_hash(
        &self,
        tenant: TenantId,
        hash: &[u8; 32],
    ) -> Result<Option<tenancy_core::invite::Invitation>, StoreError> {
        self.0.by_hash(tenant, hash).await
    }
    async fn mark_accepted(
        &self,
        tenant: TenantId,
        hash: &[u8; 32],
        user: &UserId,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<bool, StoreError> {
        self.0.mark_accepted(tenant, hash, user, now).await
    }
    async fn release(
        &self,
        tenant: TenantId,
        hash: &[u8; 32],
        user: &UserId,
    ) -> Result<bool, StoreError> {
        self.0.release(tenant, hash, user).await
    }
    async fn revoke(&self, tenant: TenantId, id: uuid::Uuid) -> Result<bool, StoreError> {
        self.0.revoke(tenant, id).await
    }
    async fn insert_within(
        &self,
        i: &tenancy_core::invite::Invitation,
        limit: u64,
        members: &dyn MembershipStore,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Result<(), u64>, StoreError> {
        let used = self.0.seats_used(i.tenant, members, now).await?;
        if used >= limit {
            return Ok(Err(used));
        }
        tokio::task::yield_now().await;
        self.0.insert(i).await.map(Ok)
    }
    async fn seats_used(
        &self,
        tenant: TenantId,
        members: &dyn MembershipStore,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<u64, StoreError> {
        self.0.seats_used(tenant, members, now).await
    }
}
