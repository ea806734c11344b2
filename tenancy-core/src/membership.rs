//! Memberships: which users belong to which tenants, with which role.
//!
//! A user may belong to many tenants, with one [`Membership`] (role plus extra
//! grants) in each. [`MembershipStore`] is the lookup trait the data adapters
//! implement; [`InMemoryMembershipStore`] serves tests and small apps.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{Permission, Role, StoreError, TenantId};

/// An application's user identifier (opaque to the library).
///
/// ```
/// # use tenancy_core::UserId;
/// let user = UserId::new("user-42");
/// assert_eq!(user.as_str(), "user-42");
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UserId(Arc<str>);

impl UserId {
    /// Wraps an application's user id.
    pub fn new(id: impl Into<Arc<str>>) -> Self {
        Self(id.into())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UserId({})", &self.0)
    }
}

/// A user's membership in one tenant.
///
/// ```
/// use tenancy_core::{Membership, Role, TenantId, UserId};
///
/// let m = Membership::new(UserId::new("u1"), TenantId::new_v4(), Role::Member)
///     .with_grant("reports:export".parse()?);
/// assert_eq!(m.grants.len(), 1);
/// # Ok::<(), tenancy_core::PermissionError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Membership {
    /// The member.
    pub user_id: UserId,
    /// The tenant.
    pub tenant_id: TenantId,
    /// The member's role in the tenant.
    pub role: Role,
    /// Grants on top of the role's defaults.
    pub grants: Vec<Permission>,
    /// Whether the member may act ([`MembershipStatus::Suspended`] members
    /// are refused by the [`crate::Authorizer`] until resumed).
    #[serde(default)]
    pub status: MembershipStatus,
    /// When the member last signed in or renewed a session here
    /// ([`MembershipWriter::touch`]).
    #[serde(default)]
    pub last_active_at: Option<DateTime<Utc>>,
}

/// Whether a membership is in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum MembershipStatus {
    /// The member acts with their role.
    #[default]
    Active,
    /// Kept (role, grants, history), but refused: 403 `membership-suspended`.
    Suspended,
}

impl MembershipStatus {
    /// `active` or `suspended`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Suspended => "suspended",
        }
    }
}

impl std::str::FromStr for MembershipStatus {
    type Err = StoreError;

    fn from_str(s: &str) -> Result<Self, StoreError> {
        match s {
            "active" => Ok(Self::Active),
            "suspended" => Ok(Self::Suspended),
            other => Err(StoreError::msg(format!(
                "unknown membership status {other:?} (active or suspended)"
            ))),
        }
    }
}

impl Membership {
    /// An active membership with `role` and no extra grants.
    pub fn new(user_id: UserId, tenant_id: TenantId, role: Role) -> Self {
        Self {
            user_id,
            tenant_id,
            role,
            grants: Vec::new(),
            status: MembershipStatus::Active,
            last_active_at: None,
        }
    }

    /// The same membership with `status`.
    pub fn with_status(mut self, status: MembershipStatus) -> Self {
        self.status = status;
        self
    }

    /// Adds an extra grant.
    pub fn with_grant(mut self, grant: Permission) -> Self {
        self.grants.push(grant);
        self
    }
}

impl crate::TenantScoped for Membership {
    fn tenant_id(&self) -> TenantId {
        self.tenant_id
    }
}

/// Looks up memberships.
#[async_trait]
pub trait MembershipStore: Send + Sync {
    /// The membership of `user` in `tenant`, if any.
    async fn membership(
        &self,
        user: &UserId,
        tenant: TenantId,
    ) -> Result<Option<Membership>, StoreError>;

    /// Every membership of `user` (the tenants a user may switch between).
    async fn memberships_of(&self, user: &UserId) -> Result<Vec<Membership>, StoreError>;

    /// Every membership of `tenant`, by user id (administration).
    async fn members_of(&self, tenant: TenantId) -> Result<Vec<Membership>, StoreError>;
}

#[async_trait]
impl<T: MembershipStore + ?Sized> MembershipStore for Arc<T> {
    async fn membership(
        &self,
        user: &UserId,
        tenant: TenantId,
    ) -> Result<Option<Membership>, StoreError> {
        (**self).membership(user, tenant).await
    }

    async fn memberships_of(&self, user: &UserId) -> Result<Vec<Membership>, StoreError> {
        (**self).memberships_of(user).await
    }

    async fn members_of(&self, tenant: TenantId) -> Result<Vec<Membership>, StoreError> {
        (**self).members_of(tenant).await
    }
}

/// Creates and changes memberships (invitations, administration).
#[async_trait]
pub trait MembershipWriter: MembershipStore {
    /// Inserts or replaces a membership (role, grants and status; the
    /// activity time is kept when the membership exists).
    async fn put(&self, membership: &Membership) -> Result<(), StoreError>;

    /// Removes `user`'s membership in `tenant`; `true` if there was one.
    async fn remove(&self, user: &UserId, tenant: TenantId) -> Result<bool, StoreError>;

    /// Records that `user` was active in `tenant` at `at` (a sign-in, a
    /// session renewed); nothing when there is no such membership.
    async fn touch(
        &self,
        user: &UserId,
        tenant: TenantId,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError>;
}

#[async_trait]
impl MembershipWriter for InMemoryMembershipStore {
    async fn put(&self, membership: &Membership) -> Result<(), StoreError> {
        let mut m = membership.clone();
        if let Some(old) = self.membership(&m.user_id, m.tenant_id).await? {
            m.last_active_at = m.last_active_at.or(old.last_active_at);
        }
        self.upsert(m);
        Ok(())
    }

    async fn remove(&self, user: &UserId, tenant: TenantId) -> Result<bool, StoreError> {
        Ok(InMemoryMembershipStore::remove(self, user, tenant).is_some())
    }

    async fn touch(
        &self,
        user: &UserId,
        tenant: TenantId,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        if let Some(m) = self
            .inner
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .get_mut(&(user.clone(), tenant))
        {
            m.last_active_at = Some(at);
        }
        Ok(())
    }
}

/// A [`MembershipStore`] held in memory.
///
/// ```
/// use tenancy_core::{InMemoryMembershipStore, Membership, MembershipStore, Role, TenantId, UserId};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let store = InMemoryMembershipStore::new();
/// let tenant = TenantId::new_v4();
/// store.upsert(Membership::new(UserId::new("u1"), tenant, Role::Admin));
/// let m = store.membership(&UserId::new("u1"), tenant).await?;
/// assert_eq!(m.map(|m| m.role), Some(Role::Admin));
/// # Ok(()) }
/// ```
#[derive(Debug, Default)]
pub struct InMemoryMembershipStore {
    inner: RwLock<HashMap<(UserId, TenantId), Membership>>,
}

impl InMemoryMembershipStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Inserts or replaces a membership.
    pub fn upsert(&self, membership: Membership) {
        let key = (membership.user_id.clone(), membership.tenant_id);
        self.inner
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key, membership);
    }

    /// Removes a membership; returns it if it existed.
    pub fn remove(&self, user: &UserId, tenant: TenantId) -> Option<Membership> {
        self.inner
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&(user.clone(), tenant))
    }
}

#[async_trait]
impl MembershipStore for InMemoryMembershipStore {
    async fn membership(
        &self,
        user: &UserId,
        tenant: TenantId,
    ) -> Result<Option<Membership>, StoreError> {
        Ok(self
            .inner
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&(user.clone(), tenant))
            .cloned())
    }

    async fn memberships_of(&self, user: &UserId) -> Result<Vec<Membership>, StoreError> {
        let mut out: Vec<Membership> = self
            .inner
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .filter(|m| &m.user_id == user)
            .cloned()
            .collect();
        out.sort_by_key(|m| m.tenant_id);
        Ok(out)
    }

    async fn members_of(&self, tenant: TenantId) -> Result<Vec<Membership>, StoreError> {
        let mut out: Vec<Membership> = self
            .inner
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .filter(|m| m.tenant_id == tenant)
            .cloned()
            .collect();
        out.sort_by(|a, b| a.user_id.cmp(&b.user_id));
        Ok(out)
    }
}
