use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use moka::Expiry;
use moka::future::Cache;

use super::{TenantRef, TenantStore};
use crate::{DomainName, StoreError, Tenant, TenantId, TenantSlug};

type Entry = Option<Arc<Tenant>>;

/// A moka cache in front of any [`TenantStore`].
///
/// - **TTL and capacity**: found tenants live for `ttl` (default 60 s); at most
///   `max_capacity` entries (default 10 000) are kept.
/// - **Negative caching**: a miss is remembered for `negative_ttl` (default
///   5 s), so a flood of requests for made-up tenants reaches the backend at
///   most once per name per `negative_ttl`.
/// - **Single flight**: N concurrent requests for the same uncached name cause
///   exactly one backend load; the others wait for it. Backend errors are not
///   cached.
/// - **Invalidation**: [`CachedStore::invalidate`] drops every entry that
///   refers to a tenant (by id, slug or domain), immediately.
///
/// A change made through another process is seen after `ttl` at the latest;
/// `tenancy-sqlx` pushes invalidations between processes.
///
/// ```
/// use std::time::Duration;
/// use tenancy_core::store::{CachedStore, InMemoryTenantStore, TenantStore};
/// use tenancy_core::{Tenant, TenantId};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let backend = InMemoryTenantStore::new();
/// let acme = Tenant::new(TenantId::new_v4(), "acme".parse()?, "Acme");
/// backend.insert(acme.clone())?;
///
/// let store = CachedStore::builder(backend)
///     .ttl(Duration::from_secs(30))
///     .negative_ttl(Duration::from_secs(2))
///     .max_capacity(50_000)
///     .build();
/// assert!(store.by_id(acme.id).await?.is_some());
/// store.invalidate(acme.id).await;
/// # Ok(()) }
/// ```
pub struct CachedStore<S> {
    inner: S,
    cache: Cache<TenantRef, Entry>,
}

impl<S> std::fmt::Debug for CachedStore<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedStore")
            .field("entries", &self.cache.entry_count())
            .finish_non_exhaustive()
    }
}

/// Configures a [`CachedStore`].
#[derive(Debug)]
#[must_use]
pub struct CachedStoreBuilder<S> {
    inner: S,
    ttl: Duration,
    negative_ttl: Duration,
    max_capacity: u64,
}

struct TtlByOutcome {
    ttl: Duration,
    negative_ttl: Duration,
}

impl Expiry<TenantRef, Entry> for TtlByOutcome {
    fn expire_after_create(&self, _: &TenantRef, value: &Entry, _: Instant) -> Option<Duration> {
        Some(if value.is_some() {
            self.ttl
        } else {
            self.negative_ttl
        })
    }

    fn expire_after_update(
        &self,
        key: &TenantRef,
        value: &Entry,
        now: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        self.expire_after_create(key, value, now)
    }
}

impl<S> CachedStoreBuilder<S> {
    /// How long a found tenant stays cached.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// How long a miss stays cached. `Duration::ZERO` disables negative caching.
    pub fn negative_ttl(mut self, ttl: Duration) -> Self {
        self.negative_ttl = ttl;
        self
    }

    /// The most entries kept (each tenant may take one entry per id, slug and domain).
    pub fn max_capacity(mut self, n: u64) -> Self {
        self.max_capacity = n;
        self
    }

    /// Builds the cache.
    pub fn build(self) -> CachedStore<S> {
        let cache = Cache::builder()
            .max_capacity(self.max_capacity)
            .expire_after(TtlByOutcome {
                ttl: self.ttl,
                negative_ttl: self.negative_ttl,
            })
            .support_invalidation_closures()
            .build();
        CachedStore {
            inner: self.inner,
            cache,
        }
    }
}

impl<S: TenantStore> CachedStore<S> {
    /// A cache over `inner` with default settings.
    pub fn new(inner: S) -> Self {
        Self::builder(inner).build()
    }

    /// A builder for a cache over `inner`.
    pub fn builder(inner: S) -> CachedStoreBuilder<S> {
        CachedStoreBuilder {
            inner,
            ttl: Duration::from_secs(60),
            negative_ttl: Duration::from_secs(5),
            max_capacity: 10_000,
        }
    }

    /// The store behind the cache.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    async fn get(&self, key: TenantRef) -> Result<Entry, StoreError> {
        // Fast path: a plain read is much cheaper than setting up a loader.
        if let Some(hit) = self.cache.get(&key).await {
            return Ok(hit);
        }
        let loader_key = key.clone();
        self.cache
            .try_get_with(key, async move { loader_key.load(&self.inner).await })
            .await
            .map_err(|e: Arc<StoreError>| (*e).clone())
    }

    /// Drops every cached entry that refers to tenant `id`, whether it was
    /// cached by id, slug or domain.
    ///
    /// Call it after changing a tenant. Negative entries (misses) for a slug
    /// or domain the tenant has *just acquired* are dropped by
    /// [`CachedStore::invalidate_tenant`], which knows the new names.
    pub async fn invalidate(&self, id: TenantId) {
        self.cache.invalidate(&TenantRef::Id(id)).await;
        // Cannot fail: the cache is built with `support_invalidation_closures`.
        // Should that ever change, drop everything rather than serve stale data.
        if self
            .cache
            .invalidate_entries_if(move |_, v| v.as_ref().is_some_and(|t| t.id == id))
            .is_err()
        {
            self.cache.invalidate_all();
        }
    }

    /// Drops every entry for `tenant`: its id, its current slug and domains
    /// (including cached misses for them), and any entry holding an older
    /// snapshot of it.
    pub async fn invalidate_tenant(&self, tenant: &Tenant) {
        self.cache
            .invalidate(&TenantRef::Slug(tenant.slug.clone()))
            .await;
        for d in &tenant.domains {
            self.cache.invalidate(&TenantRef::Domain(d.clone())).await;
        }
        self.invalidate(tenant.id).await;
    }

    /// Drops the entry (hit or miss) for a slug.
    pub async fn invalidate_slug(&self, slug: &TenantSlug) {
        self.cache.invalidate(&TenantRef::Slug(slug.clone())).await;
    }

    /// Drops the entry (hit or miss) for a domain.
    pub async fn invalidate_domain(&self, domain: &DomainName) {
        self.cache
            .invalidate(&TenantRef::Domain(domain.clone()))
            .await;
    }

    /// Drops everything.
    pub fn invalidate_all(&self) {
        self.cache.invalidate_all();
    }

    /// Runs the cache's pending maintenance (evictions, expirations) now.
    ///
    /// The cache does this by itself as it is used; call it when you need
    /// [`CachedStore::entry_count`] to be exact, as in tests.
    pub async fn run_pending_tasks(&self) {
        self.cache.run_pending_tasks().await;
    }

    /// Approximate number of cached entries (hits and misses).
    pub fn entry_count(&self) -> u64 {
        self.cache.entry_count()
    }
}

#[async_trait]
impl<S: TenantStore> TenantStore for CachedStore<S> {
    async fn by_id(&self, id: TenantId) -> Result<Option<Arc<Tenant>>, StoreError> {
        self.get(TenantRef::Id(id)).await
    }

    async fn by_slug(&self, slug: &TenantSlug) -> Result<Option<Arc<Tenant>>, StoreError> {
        self.get(TenantRef::Slug(slug.clone())).await
    }

    async fn by_domain(&self, domain: &DomainName) -> Result<Option<Arc<Tenant>>, StoreError> {
        self.get(TenantRef::Domain(domain.clone())).await
    }
}
