//! Invitations: a single-use, expiring token that makes its holder a member
//! of a tenant with a given role.
//!
//! The token is `<tenant id>.<256 random bits, base64url>`. Only its
//! SHA-256 is stored, so a leaked invitations table reveals no usable
//! token. The tenant id in the token lets [`Invitations::accept`] tell a
//! token of another tenant (a clear [`InviteError::WrongTenant`]) from one
//! that does not exist.
//!
//! ```
//! use std::sync::Arc;
//! use chrono::Duration;
//! use tenancy_core::invite::{InMemoryInvitationStore, InviteError, Invitations};
//! use tenancy_core::{InMemoryMembershipStore, MembershipStore, Role, TenantId, UserId};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let members = Arc::new(InMemoryMembershipStore::new());
//! let invites = Invitations::new(Arc::new(InMemoryInvitationStore::default()), members.clone());
//! let tenant = TenantId::new_v4();
//!
//! let (invitation, token) = invites
//!     .invite(tenant, "asha@example.com", Role::Member, &UserId::new("admin-1"), Duration::days(7))
//!     .await?;
//! // Send `token.expose()` by email; it is never stored.
//! let m = invites.accept(tenant, token.expose(), &UserId::new("asha")).await?;
//! assert_eq!(m.role, Role::Member);
//! assert!(members.membership(&UserId::new("asha"), tenant).await?.is_some());
//! // Single use.
//! assert!(matches!(
//!     invites.accept(tenant, token.expose(), &UserId::new("mallory")).await,
//!     Err(InviteError::AlreadyUsed)
//! ));
//! # let _ = invitation;
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use aes_gcm::aead::{OsRng, rand_core::RngCore};
use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Duration, Utc};
use sha2::{Digest, Sha256};
use uuid::Uuid;
use zeroize::Zeroizing;

use crate::{Membership, MembershipStore, MembershipWriter, Role, StoreError, TenantId, UserId};

/// A secret invitation token. Its `Debug` output is redacted.
pub struct InviteToken(Zeroizing<String>);

impl std::fmt::Debug for InviteToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InviteToken(..)")
    }
}

impl InviteToken {
    fn generate(tenant: TenantId) -> Self {
        let mut random = Zeroizing::new([0u8; 32]);
        OsRng.fill_bytes(random.as_mut_slice());
        let mut s = Zeroizing::new(format!("{tenant}."));
        URL_SAFE_NO_PAD.encode_string(random.as_slice(), &mut s);
        Self(s)
    }

    /// The token text, to send to the invitee.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// Parses a token: its tenant and the SHA-256 that is stored.
pub fn parse_token(token: &str) -> Result<(TenantId, [u8; 32]), InviteError> {
    let (tenant, random) = token.trim().split_once('.').ok_or(InviteError::Malformed)?;
    let tenant: TenantId = tenant.parse().map_err(|_| InviteError::Malformed)?;
    let bytes = Zeroizing::new(
        URL_SAFE_NO_PAD
            .decode(random)
            .map_err(|_| InviteError::Malformed)?,
    );
    if bytes.len() != 32 {
        return Err(InviteError::Malformed);
    }
    Ok((tenant, token_hash(token.trim())))
}

fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// A stored invitation.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Invitation {
    /// Its id.
    pub id: Uuid,
    /// The tenant.
    pub tenant: TenantId,
    /// Who is invited (for display and matching; not verified here).
    pub email: String,
    /// The role the membership gets.
    pub role: Role,
    /// SHA-256 of the token.
    pub token_hash: [u8; 32],
    /// Who invited.
    pub invited_by: UserId,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it stops working.
    pub expires_at: DateTime<Utc>,
    /// When and by whom it was accepted.
    pub accepted: Option<(DateTime<Utc>, UserId)>,
}

impl Invitation {
    /// An invitation record (for stores outside this crate).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: Uuid,
        tenant: TenantId,
        email: String,
        role: Role,
        token_hash: [u8; 32],
        invited_by: UserId,
        created_at: DateTime<Utc>,
        expires_at: DateTime<Utc>,
        accepted: Option<(DateTime<Utc>, UserId)>,
    ) -> Self {
        Self {
            id,
            tenant,
            email,
            role,
            token_hash,
            invited_by,
            created_at,
            expires_at,
            accepted,
        }
    }
}

/// Why an invitation could not be created or accepted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InviteError {
    /// The text is not an invitation token.
    #[error("not an invitation token; copy the whole link from the invitation email")]
    Malformed,
    /// The token belongs to another tenant than the one being joined.
    #[error("this invitation is for another organisation; open it from the link in the email")]
    WrongTenant,
    /// No such invitation (never issued, or revoked).
    #[error("unknown invitation; ask for a new one")]
    NotFound,
    /// The invitation expired.
    #[error("this invitation expired at {0}; ask for a new one")]
    Expired(DateTime<Utc>),
    /// The invitation was already used.
    #[error("this invitation was already used")]
    AlreadyUsed,
    /// The email address is empty or not plausible, or the lifetime is not positive.
    #[error("invalid invitation: {0}")]
    Invalid(&'static str),
    /// Every seat of the plan is taken by members and pending invitations.
    #[error(
        "all {limit} seats are taken ({used} members and pending invitations): remove a member, \
         revoke an invitation, or upgrade the plan"
    )]
    NoSeat {
        /// Seats taken.
        used: u64,
        /// Seats in the plan.
        limit: u64,
    },
    /// A store failed.
    #[error("invitation store failed: {0}")]
    Store(#[from] StoreError),
}

impl InviteError {
    /// The HTTP status for this error.
    pub fn status(&self) -> u16 {
        match self {
            Self::Malformed | Self::Invalid(_) => 400,
            Self::WrongTenant | Self::NoSeat { .. } => 403,
            Self::NotFound => 404,
            Self::AlreadyUsed => 409,
            Self::Expired(_) => 410,
            Self::Store(_) => 500,
        }
    }
}

/// Where invitations are kept.
#[async_trait]
pub trait InvitationStore: Send + Sync {
    /// Stores a new invitation.
    async fn insert(&self, invitation: &Invitation) -> Result<(), StoreError>;
    /// The invitation of `tenant` with this token hash.
    async fn by_hash(
        &self,
        tenant: TenantId,
        hash: &[u8; 32],
    ) -> Result<Option<Invitation>, StoreError>;
    /// Marks it accepted if it is neither accepted nor expired at `now`,
    /// atomically; whether this call did it.
    async fn mark_accepted(
        &self,
        tenant: TenantId,
        hash: &[u8; 32],
        user: &UserId,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError>;
    /// Undoes [`mark_accepted`](Self::mark_accepted) by `user` — what
    /// [`Invitations::accept`] calls when the membership could not be
    /// created, so the invitation is not spent on a join that did not
    /// happen. Only an acceptance by `user` is undone; whether one was.
    ///
    /// The default undoes nothing (`Ok(false)`): the invitation then stays
    /// used and the failure is logged with "invite again". The stores of
    /// this workspace implement it.
    async fn release(
        &self,
        tenant: TenantId,
        hash: &[u8; 32],
        user: &UserId,
    ) -> Result<bool, StoreError> {
        let _ = (tenant, hash, user);
        Ok(false)
    }
    /// Removes an unaccepted invitation; whether it existed.
    async fn revoke(&self, tenant: TenantId, id: Uuid) -> Result<bool, StoreError>;

    /// Inserts `invitation` only if a seat is free: counts the tenant's
    /// seats ([`seats_used`](Self::seats_used)) and inserts, atomically
    /// against other calls for the same tenant. `Ok(Err(used))` when all
    /// `limit` seats are taken (nothing inserted).
    ///
    /// The default refuses: a store must say it can count seats.
    async fn insert_within(
        &self,
        invitation: &Invitation,
        limit: u64,
        members: &dyn MembershipStore,
        now: DateTime<Utc>,
    ) -> Result<Result<(), u64>, StoreError> {
        let _ = (invitation, limit, members, now);
        Err(StoreError::msg(
            "this invitation store cannot count seats; use one of the workspace's stores",
        ))
    }

    /// Seats taken in `tenant` at `now`: its members (active or suspended),
    /// plus its pending invitations — unexpired and unaccepted, or accepted
    /// within [`ACCEPT_GRACE`] by someone not (yet) a member (the moment
    /// between using the invitation and writing the membership).
    async fn seats_used(
        &self,
        tenant: TenantId,
        members: &dyn MembershipStore,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let _ = (tenant, members, now);
        Err(StoreError::msg(
            "this invitation store cannot count seats; use one of the workspace's stores",
        ))
    }
}

/// How long an accepted invitation keeps its seat for a membership not yet
/// written (seat counting; see [`InvitationStore::seats_used`]).
pub const ACCEPT_GRACE: Duration = Duration::seconds(60);

/// Whether `i` holds a seat at `now` ([`InvitationStore::seats_used`]),
/// given whether its acceptor is already a member.
pub fn holds_seat(i: &Invitation, now: DateTime<Utc>, acceptor_is_member: bool) -> bool {
    if now >= i.expires_at {
        return false;
    }
    match &i.accepted {
        None => true,
        Some((at, _)) => !acceptor_is_member && now - *at < ACCEPT_GRACE,
    }
}

/// An [`InvitationStore`] in memory.
#[derive(Debug, Default)]
pub struct InMemoryInvitationStore {
    map: RwLock<HashMap<[u8; 32], Invitation>>,
    seats: tokio::sync::Mutex<()>,
}

impl InMemoryInvitationStore {
    async fn count_seats(
        &self,
        tenant: TenantId,
        members: &dyn MembershipStore,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let current: Vec<Membership> = members.members_of(tenant).await?;
        let invitations: Vec<Invitation> = self
            .map
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .filter(|i| i.tenant == tenant)
            .cloned()
            .collect();
        let pending = invitations
            .iter()
            .filter(|i| {
                let member = i
                    .accepted
                    .as_ref()
                    .is_some_and(|(_, u)| current.iter().any(|m| &m.user_id == u));
                holds_seat(i, now, member)
            })
            .count();
        Ok(u64::try_from(current.len() + pending).unwrap_or(u64::MAX))
    }
}

#[async_trait]
impl InvitationStore for InMemoryInvitationStore {
    async fn insert(&self, inv: &Invitation) -> Result<(), StoreError> {
        self.map
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(inv.token_hash, inv.clone());
        Ok(())
    }

    async fn by_hash(
        &self,
        tenant: TenantId,
        hash: &[u8; 32],
    ) -> Result<Option<Invitation>, StoreError> {
        Ok(self
            .map
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(hash)
            .filter(|i| i.tenant == tenant)
            .cloned())
    }

    async fn mark_accepted(
        &self,
        tenant: TenantId,
        hash: &[u8; 32],
        user: &UserId,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let mut map = self.map.write().unwrap_or_else(PoisonError::into_inner);
        match map.get_mut(hash) {
            Some(i) if i.tenant == tenant && i.accepted.is_none() && now < i.expires_at => {
                i.accepted = Some((now, user.clone()));
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn release(
        &self,
        tenant: TenantId,
        hash: &[u8; 32],
        user: &UserId,
    ) -> Result<bool, StoreError> {
        let mut map = self.map.write().unwrap_or_else(PoisonError::into_inner);
        match map.get_mut(hash) {
            Some(i)
                if i.tenant == tenant && i.accepted.as_ref().is_some_and(|(_, u)| u == user) =>
            {
                i.accepted = None;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn revoke(&self, tenant: TenantId, id: Uuid) -> Result<bool, StoreError> {
        let mut map = self.map.write().unwrap_or_else(PoisonError::into_inner);
        let key = map
            .iter()
            .find(|(_, i)| i.tenant == tenant && i.id == id && i.accepted.is_none())
            .map(|(k, _)| *k);
        Ok(key.and_then(|k| map.remove(&k)).is_some())
    }

    async fn insert_within(
        &self,
        invitation: &Invitation,
        limit: u64,
        members: &dyn MembershipStore,
        now: DateTime<Utc>,
    ) -> Result<Result<(), u64>, StoreError> {
        let _seats = self.seats.lock().await;
        let used = self.count_seats(invitation.tenant, members, now).await?;
        if used >= limit {
            return Ok(Err(used));
        }
        self.insert(invitation).await?;
        Ok(Ok(()))
    }

    async fn seats_used(
        &self,
        tenant: TenantId,
        members: &dyn MembershipStore,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        self.count_seats(tenant, members, now).await
    }
}

/// Issues and accepts invitations. See the [module docs](self).
#[derive(Clone)]
pub struct Invitations {
    store: Arc<dyn InvitationStore>,
    members: Arc<dyn MembershipWriter>,
}

impl std::fmt::Debug for Invitations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Invitations").finish_non_exhaustive()
    }
}

impl Invitations {
    /// Invitations kept in `store`, creating memberships in `members`.
    pub fn new(store: Arc<dyn InvitationStore>, members: Arc<dyn MembershipWriter>) -> Self {
        Self { store, members }
    }

    /// Invites `email` into `tenant` with `role`, valid for `ttl`. Returns the
    /// stored invitation and the token to send (shown once, never stored).
    pub async fn invite(
        &self,
        tenant: TenantId,
        email: &str,
        role: Role,
        invited_by: &UserId,
        ttl: Duration,
    ) -> Result<(Invitation, InviteToken), InviteError> {
        self.issue(tenant, email, role, invited_by, ttl, None).await
    }

    /// [`Invitations::invite`] within the plan's seats: the invitation
    /// reserves one of `seats` (members and pending invitations count;
    /// expiry or revocation returns it), counted and inserted atomically, so
    /// concurrent invitations never exceed the limit
    /// ([`InviteError::NoSeat`], 403, otherwise).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use chrono::Duration;
    /// use tenancy_core::invite::{InMemoryInvitationStore, InviteError, Invitations};
    /// use tenancy_core::{InMemoryMembershipStore, Membership, Role, TenantId, UserId};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let members = Arc::new(InMemoryMembershipStore::new());
    /// let invitations = Invitations::new(Arc::new(InMemoryInvitationStore::default()), members.clone());
    /// let t = TenantId::new_v4();
    /// let admin = UserId::new("ann");
    /// members.upsert(Membership::new(admin.clone(), t, Role::Admin));
    ///
    /// // Two seats: Ann, and one invitation.
    /// invitations.invite_within(t, "bo@example.com", Role::Member, &admin, Duration::days(3), 2).await?;
    /// let full = invitations.invite_within(t, "cy@example.com", Role::Member, &admin, Duration::days(3), 2).await;
    /// assert!(matches!(full, Err(InviteError::NoSeat { used: 2, limit: 2 })));
    /// # Ok(()) }
    /// ```
    pub async fn invite_within(
        &self,
        tenant: TenantId,
        email: &str,
        role: Role,
        invited_by: &UserId,
        ttl: Duration,
        seats: u64,
    ) -> Result<(Invitation, InviteToken), InviteError> {
        self.issue(tenant, email, role, invited_by, ttl, Some(seats))
            .await
    }

    /// Seats taken in `tenant` now (members and pending invitations).
    pub async fn seats_used(&self, tenant: TenantId) -> Result<u64, InviteError> {
        Ok(self
            .store
            .seats_used(tenant, &*self.members, Utc::now())
            .await?)
    }

    async fn issue(
        &self,
        tenant: TenantId,
        email: &str,
        role: Role,
        invited_by: &UserId,
        ttl: Duration,
        seats: Option<u64>,
    ) -> Result<(Invitation, InviteToken), InviteError> {
        let email = email.trim();
        if email.len() > 254
            || !email.contains('@')
            || email.starts_with('@')
            || email.ends_with('@')
        {
            return Err(InviteError::Invalid("the email address is not valid"));
        }
        if ttl <= Duration::zero() {
            return Err(InviteError::Invalid("the lifetime must be positive"));
        }
        let token = InviteToken::generate(tenant);
        let now = Utc::now();
        let invitation = Invitation::new(
            Uuid::new_v4(),
            tenant,
            email.to_lowercase(),
            role,
            token_hash(token.expose()),
            invited_by.clone(),
            now,
            now + ttl,
            None,
        );
        match seats {
            None => self.store.insert(&invitation).await?,
            Some(limit) => {
                if let Err(used) = self
                    .store
                    .insert_within(&invitation, limit, &*self.members, now)
                    .await?
                {
                    return Err(InviteError::NoSeat { used, limit });
                }
            }
        }
        tracing::info!(tenant.id = %tenant, invitation = %invitation.id, role = role.as_str(), "invitation issued");
        Ok((invitation, token))
    }

    /// Accepts `token` while joining `tenant` as `user`: creates the
    /// membership and uses the invitation up.
    pub async fn accept(
        &self,
        tenant: TenantId,
        token: &str,
        user: &UserId,
    ) -> Result<Membership, InviteError> {
        self.accept_at(tenant, token, user, Utc::now()).await
    }

    /// [`Invitations::accept`] at a given time (tests, replays).
    pub async fn accept_at(
        &self,
        tenant: TenantId,
        token: &str,
        user: &UserId,
        now: DateTime<Utc>,
    ) -> Result<Membership, InviteError> {
        let (token_tenant, hash) = parse_token(token)?;
        if token_tenant != tenant {
            return Err(InviteError::WrongTenant);
        }
        let invitation = self
            .store
            .by_hash(tenant, &hash)
            .await?
            .ok_or(InviteError::NotFound)?;
        if invitation.accepted.is_some() {
            return Err(InviteError::AlreadyUsed);
        }
        if now >= invitation.expires_at {
            return Err(InviteError::Expired(invitation.expires_at));
        }
        if !self.store.mark_accepted(tenant, &hash, user, now).await? {
            // Lost a race with another acceptance (or it just expired).
            return Err(InviteError::AlreadyUsed);
        }
        let membership = Membership::new(user.clone(), tenant, invitation.role);
        if let Err(e) = self.members.put(&membership).await {
            // Not joined: give the invitation back rather than spend it.
            match self.store.release(tenant, &hash, user).await {
                Ok(true) => {
                    tracing::warn!(tenant.id = %tenant, invitation = %invitation.id, error = %e, "membership not created; invitation released for another try");
                }
                Ok(false) => {
                    tracing::error!(tenant.id = %tenant, invitation = %invitation.id, error = %e, "membership not created and the invitation was no longer ours to release; invite again");
                }
                Err(release) => {
                    tracing::error!(tenant.id = %tenant, invitation = %invitation.id, error = %e, release = %release, "membership not created and the invitation could not be released; invite again");
                }
            }
            return Err(e.into());
        }
        tracing::info!(tenant.id = %tenant, invitation = %invitation.id, user = %user.as_str(), "invitation accepted");
        Ok(membership)
    }

    /// Revokes an unaccepted invitation.
    pub async fn revoke(&self, tenant: TenantId, id: Uuid) -> Result<bool, InviteError> {
        Ok(self.store.revoke(tenant, id).await?)
    }
}
