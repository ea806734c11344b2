//! Tenant-namespaced caching.
//!
//! Sharing a cache between tenants is a classic leak: two tenants ask for
//! `"dashboard"` and one gets the other's. [`TenantCache`] makes the tenant
//! part of every key — its methods take a [`TenantContext`], not a bare key —
//! and can drop all of one tenant's entries at once. For external caches
//! (Redis, memcached) use [`namespaced_key`].

use std::hash::Hash;
use std::time::Duration;

use moka::future::Cache;

use crate::{TenantContext, TenantId};

/// `"tenant:{id}:{key}"`: a key for an external cache, namespaced by tenant.
///
/// ```
/// use tenancy_core::cache::namespaced_key;
/// use tenancy_core::{Tenant, TenantContext, TenantId};
///
/// let ctx = TenantContext::new(Tenant::new(TenantId::new_v4(), "acme".parse()?, "Acme"));
/// let key = namespaced_key(&ctx, "dashboard:v2");
/// assert_eq!(key, format!("tenant:{}:dashboard:v2", ctx.tenant_id()));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn namespaced_key(ctx: &TenantContext, key: &str) -> String {
    format!("tenant:{}:{key}", ctx.tenant_id())
}

/// An in-process cache whose entries always belong to one tenant.
///
/// ```
/// use std::time::Duration;
/// use tenancy_core::cache::TenantCache;
/// use tenancy_core::{Tenant, TenantContext, TenantId};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let cache: TenantCache<&'static str, u64> = TenantCache::new(10_000, Duration::from_secs(60));
/// let a = TenantContext::new(Tenant::new(TenantId::new_v4(), "a".parse()?, "A"));
/// let b = TenantContext::new(Tenant::new(TenantId::new_v4(), "b".parse()?, "B"));
///
/// cache.insert(&a, "open-policies", 12).await;
/// assert_eq!(cache.get(&a, &"open-policies").await, Some(12));
/// assert_eq!(cache.get(&b, &"open-policies").await, None); // never another tenant's
///
/// cache.clear_tenant(a.tenant_id());
/// assert_eq!(cache.get(&a, &"open-policies").await, None);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct TenantCache<K, V> {
    cache: Cache<(TenantId, K), V>,
}

impl<K, V> std::fmt::Debug for TenantCache<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantCache")
            .field("entries", &self.cache.entry_count())
            .finish()
    }
}

impl<K, V> TenantCache<K, V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// A cache of at most `max_capacity` entries, each living `ttl`.
    pub fn new(max_capacity: u64, ttl: Duration) -> Self {
        Self {
            cache: Cache::builder()
                .max_capacity(max_capacity)
                .time_to_live(ttl)
                .support_invalidation_closures()
                .build(),
        }
    }

    /// The value for `key` in the context's tenant.
    pub async fn get(&self, ctx: &TenantContext, key: &K) -> Option<V> {
        self.cache.get(&(ctx.tenant_id(), key.clone())).await
    }

    /// Stores `value` for `key` in the context's tenant.
    pub async fn insert(&self, ctx: &TenantContext, key: K, value: V) {
        self.cache.insert((ctx.tenant_id(), key), value).await;
    }

    /// The value for `key`, computing it with `init` on a miss (concurrent
    /// misses for the same key run `init` once).
    pub async fn get_with(
        &self,
        ctx: &TenantContext,
        key: K,
        init: impl std::future::Future<Output = V>,
    ) -> V {
        self.cache.get_with((ctx.tenant_id(), key), init).await
    }

    /// Drops `key` in the context's tenant.
    pub async fn invalidate(&self, ctx: &TenantContext, key: &K) {
        self.cache.invalidate(&(ctx.tenant_id(), key.clone())).await;
    }

    /// Drops every entry of `tenant`, immediately.
    pub fn clear_tenant(&self, tenant: TenantId) {
        // Cannot fail: the cache is built with `support_invalidation_closures`.
        // Should that ever change, clear everything rather than keep stale data.
        if self
            .cache
            .invalidate_entries_if(move |(t, _), _| *t == tenant)
            .is_err()
        {
            self.cache.invalidate_all();
        }
    }

    /// Approximate number of entries across all tenants.
    pub fn entry_count(&self) -> u64 {
        self.cache.entry_count()
    }
}
