//! Revocable sessions: a session epoch carried in every token and checked
//! against a store on every request, so that a role change, a removal, a
//! password change, a sign-out or a tenant's suspension refuses the tokens
//! issued before it — at once, not when they expire.
//!
//! The epoch of a user's sessions in a tenant is the sum of three counters,
//! each only ever increased:
//!
//! | counter | increased by | ends |
//! |---|---|---|
//! | the membership's | [`SessionEpochs::revoke`] | the user's sessions in that tenant (role change, removal, sign-out) |
//! | the user's | [`SessionEpochs::revoke_user`] | the user's sessions everywhere (password change) |
//! | the tenant's | [`SessionEpochs::revoke_tenant`] | every session in the tenant (suspension) |
//!
//! Because each counter only grows, a token is current exactly when the
//! epoch it carries equals the sum now ([`SessionEpochs::check`]).
//!
//! ```
//! use tenancy_core::session::{MemorySessionEpochs, SessionEpochs};
//! use tenancy_core::{TenantError, TenantId, UserId};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let epochs = MemorySessionEpochs::new();
//! let (tenant, ann) = (TenantId::new_v4(), UserId::new("ann"));
//! let issued = epochs.epoch(tenant, &ann).await?; // goes into the token
//! epochs.check(tenant, &ann, issued).await?;
//! epochs.revoke(tenant, &ann).await?; // ann's role changed
//! assert!(matches!(epochs.check(tenant, &ann, issued).await, Err(TenantError::SessionRevoked)));
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::sync::{PoisonError, RwLock};

use async_trait::async_trait;

use crate::{StoreError, TenantError, TenantId, UserId};

/// Where session epochs are kept.
#[async_trait]
pub trait SessionEpochs: Send + Sync {
    /// The current epoch of `user`'s sessions in `tenant` (0 until anything
    /// was revoked): put it in the tokens issued now.
    async fn epoch(&self, tenant: TenantId, user: &UserId) -> Result<u64, StoreError>;

    /// Ends `user`'s sessions in `tenant` issued so far (role change,
    /// removal, sign-out).
    async fn revoke(&self, tenant: TenantId, user: &UserId) -> Result<(), StoreError>;

    /// Ends `user`'s sessions in every tenant (password change).
    async fn revoke_user(&self, user: &UserId) -> Result<(), StoreError>;

    /// Ends every session in `tenant` (suspension).
    async fn revoke_tenant(&self, tenant: TenantId) -> Result<(), StoreError>;

    /// `Ok` when a token carrying `issued` is still current; 401
    /// `session-revoked` when anything was revoked since; 503 when the
    /// store cannot answer (never "current" by default).
    async fn check(&self, tenant: TenantId, user: &UserId, issued: u64) -> Result<(), TenantError> {
        let now = self.epoch(tenant, user).await?;
        if now == issued {
            Ok(())
        } else {
            Err(TenantError::SessionRevoked)
        }
    }
}

/// Session epochs in this process's memory (one instance, tests).
#[derive(Debug, Default)]
pub struct MemorySessionEpochs {
    counters: RwLock<HashMap<String, u64>>,
}

fn membership_key(tenant: TenantId, user: &UserId) -> String {
    format!("m:{tenant}:{}", user.as_str())
}

fn user_key(user: &UserId) -> String {
    format!("u:{}", user.as_str())
}

fn tenant_key(tenant: TenantId) -> String {
    format!("t:{tenant}")
}

impl MemorySessionEpochs {
    /// Nothing revoked yet.
    pub fn new() -> Self {
        Self::default()
    }

    fn bump(&self, key: String) {
        let mut counters = self
            .counters
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let c = counters.entry(key).or_insert(0);
        *c = c.saturating_add(1);
    }
}

#[async_trait]
impl SessionEpochs for MemorySessionEpochs {
    async fn epoch(&self, tenant: TenantId, user: &UserId) -> Result<u64, StoreError> {
        let counters = self.counters.read().unwrap_or_else(PoisonError::into_inner);
        let get = |k: &str| counters.get(k).copied().unwrap_or(0);
        Ok(get(&membership_key(tenant, user))
            .saturating_add(get(&user_key(user)))
            .saturating_add(get(&tenant_key(tenant))))
    }

    async fn revoke(&self, tenant: TenantId, user: &UserId) -> Result<(), StoreError> {
        self.bump(membership_key(tenant, user));
        Ok(())
    }

    async fn revoke_user(&self, user: &UserId) -> Result<(), StoreError> {
        self.bump(user_key(user));
        Ok(())
    }

    async fn revoke_tenant(&self, tenant: TenantId) -> Result<(), StoreError> {
        self.bump(tenant_key(tenant));
        Ok(())
    }
}

/// The keys a store keeps counters under, for implementations of
/// [`SessionEpochs`] on other backends: `(membership, user, tenant)`.
pub fn counter_keys(tenant: TenantId, user: &UserId) -> [String; 3] {
    [
        membership_key(tenant, user),
        user_key(user),
        tenant_key(tenant),
    ]
}

/// The key of the tenant's own counter.
pub fn tenant_counter_key(tenant: TenantId) -> String {
    tenant_key(tenant)
}

/// The key of the user's own counter.
pub fn user_counter_key(user: &UserId) -> String {
    user_key(user)
}

/// The key of the membership's counter.
pub fn membership_counter_key(tenant: TenantId, user: &UserId) -> String {
    membership_key(tenant, user)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_kind_of_revocation_ends_older_tokens_and_only_the_right_ones() {
        let e = MemorySessionEpochs::new();
        let (t1, t2) = (TenantId::new_v4(), TenantId::new_v4());
        let (ann, bob) = (UserId::new("ann"), UserId::new("bob"));
        let issue = |t, u: &UserId| {
            let e = &e;
            let u = u.clone();
            async move { e.epoch(t, &u).await.unwrap() }
        };
        let revoked = |r: Result<(), TenantError>| matches!(r, Err(TenantError::SessionRevoked));

        // Role change / removal / sign-out: ann in t1 only.
        let (a1, a2, b1) = (
            issue(t1, &ann).await,
            issue(t2, &ann).await,
            issue(t1, &bob).await,
        );
        e.revoke(t1, &ann).await.unwrap();
        assert!(revoked(e.check(t1, &ann, a1).await));
        assert!(e.check(t2, &ann, a2).await.is_ok());
        assert!(e.check(t1, &bob, b1).await.is_ok());
        let a1 = issue(t1, &ann).await; // signed in again
        assert!(e.check(t1, &ann, a1).await.is_ok());

        // Password change: ann everywhere.
        e.revoke_user(&ann).await.unwrap();
        assert!(revoked(e.check(t1, &ann, a1).await));
        assert!(revoked(e.check(t2, &ann, a2).await));
        assert!(e.check(t1, &bob, b1).await.is_ok());

        // Suspension: everyone in t1.
        let a2 = issue(t2, &ann).await;
        e.revoke_tenant(t1).await.unwrap();
        assert!(revoked(e.check(t1, &bob, b1).await));
        assert!(e.check(t2, &ann, a2).await.is_ok());
    }
}
