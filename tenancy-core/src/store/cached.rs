use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use dashmap::DashMap;
use foldhash::fast::RandomState;
use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};
use moka::sync::Cache;

use super::{TenantRef, TenantStore};
use crate::{DomainName, StoreError, Tenant, TenantId, TenantSlug};

type Entry = Option<Arc<Tenant>>;
type Flight = Shared<BoxFuture<'static, Result<Entry, StoreError>>>;

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
///
/// # Design
///
/// A hit is one lookup in a synchronous moka cache (no future, no
/// allocation; foldhash instead of SipHash since keys are not
/// attacker-chosen beyond names the resolver has already validated), which
/// is what every request pays. Found tenants and misses live in two caches
/// with their own TTL rather than one cache with per-entry expiry, which
/// is measurably slower to read. Loads are coalesced by an in-flight map of
/// shared futures; an invalidation bumps an epoch so that a load that
/// started before it never publishes its (possibly stale) result.
pub struct CachedStore<S> {
    inner: Arc<S>,
    found: Cache<TenantRef, Arc<Tenant>, RandomState>,
    missing: Cache<TenantRef, (), RandomState>,
    negative: bool,
    inflight: DashMap<TenantRef, (u64, Flight), RandomState>,
    epoch: AtomicU64,
}

impl<S> std::fmt::Debug for CachedStore<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedStore")
            .field("found", &self.found.entry_count())
            .field("missing", &self.missing.entry_count())
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

    /// The most found entries kept (each tenant may take one entry per id,
    /// slug and domain); misses are bounded by the same number separately.
    pub fn max_capacity(mut self, n: u64) -> Self {
        self.max_capacity = n;
        self
    }

    /// Builds the cache.
    pub fn build(self) -> CachedStore<S> {
        let found = Cache::builder()
            .max_capacity(self.max_capacity)
            .time_to_live(self.ttl)
            .support_invalidation_closures()
            .build_with_hasher(RandomState::default());
        let missing = Cache::builder()
            .max_capacity(self.max_capacity)
            .time_to_live(self.negative_ttl.max(Duration::from_nanos(1)))
            .build_with_hasher(RandomState::default());
        CachedStore {
            inner: Arc::new(self.inner),
            found,
            missing,
            negative: !self.negative_ttl.is_zero(),
            inflight: DashMap::with_hasher(RandomState::default()),
            epoch: AtomicU64::new(0),
        }
    }
}

impl<S: TenantStore + 'static> CachedStore<S> {
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
        if let Some(hit) = self.found.get(&key) {
            return Ok(Some(hit));
        }
        if self.negative && self.missing.contains_key(&key) {
            return Ok(None);
        }
        self.load(key).await
    }

    /// Loads `key` once however many callers ask at the same time.
    async fn load(&self, key: TenantRef) -> Result<Entry, StoreError> {
        let (epoch, flight) = match self.inflight.entry(key.clone()) {
            dashmap::Entry::Occupied(e) => e.get().clone(),
            dashmap::Entry::Vacant(v) => {
                let inner = self.inner.clone();
                let load_key = key.clone();
                let flight = async move { load_key.load(&*inner).await }.boxed().shared();
                v.insert((self.epoch.load(Ordering::Acquire), flight.clone()))
                    .clone()
            }
        };
        // Any waiter may drive the load: a cancelled caller does not stall the others.
        let result = flight.clone().await;
        // The first waiter back publishes the result and ends the flight,
        // unless an invalidation happened meanwhile. Errors are not cached.
        if self
            .inflight
            .remove_if(&key, |_, (_, f)| f.ptr_eq(&flight))
            .is_some()
            && self.epoch.load(Ordering::Acquire) == epoch
        {
            match &result {
                Ok(Some(tenant)) => self.found.insert(key, tenant.clone()),
                Ok(None) if self.negative => self.missing.insert(key, ()),
                _ => {}
            }
        }
        result
    }

    /// Makes loads in flight unpublishable and forgets them.
    fn new_epoch(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.inflight.clear();
    }

    /// Drops every cached entry that refers to tenant `id`, whether it was
    /// cached by id, slug or domain.
    ///
    /// Call it after changing a tenant. Negative entries (misses) for a slug
    /// or domain the tenant has *just acquired* are dropped by
    /// [`CachedStore::invalidate_tenant`], which knows the new names.
    pub async fn invalidate(&self, id: TenantId) {
        self.new_epoch();
        self.found.invalidate(&TenantRef::Id(id));
        self.missing.invalidate(&TenantRef::Id(id));
        // Cannot fail: the cache is built with `support_invalidation_closures`.
        // Should that ever change, drop everything rather than serve stale data.
        if self
            .found
            .invalidate_entries_if(move |_, t| t.id == id)
            .is_err()
        {
            self.found.invalidate_all();
        }
    }

    /// Drops every entry for `tenant`: its id, its current slug and domains
    /// (including cached misses for them), and any entry holding an older
    /// snapshot of it.
    pub async fn invalidate_tenant(&self, tenant: &Tenant) {
        self.drop_key(&TenantRef::Slug(tenant.slug.clone()));
        for d in &tenant.domains {
            self.drop_key(&TenantRef::Domain(d.clone()));
        }
        self.invalidate(tenant.id).await;
    }

    /// Drops the entry (hit or miss) for a slug.
    pub async fn invalidate_slug(&self, slug: &TenantSlug) {
        self.drop_key(&TenantRef::Slug(slug.clone()));
    }

    /// Drops the entry (hit or miss) for a domain.
    pub async fn invalidate_domain(&self, domain: &DomainName) {
        self.drop_key(&TenantRef::Domain(domain.clone()));
    }

    fn drop_key(&self, key: &TenantRef) {
        self.new_epoch();
        self.found.invalidate(key);
        self.missing.invalidate(key);
    }

    /// Drops everything.
    pub fn invalidate_all(&self) {
        self.new_epoch();
        self.found.invalidate_all();
        self.missing.invalidate_all();
    }

    /// Runs the cache's pending maintenance (evictions, expirations) now.
    ///
    /// The cache does this by itself as it is used; call it when you need
    /// [`CachedStore::entry_count`] to be exact, as in tests.
    pub async fn run_pending_tasks(&self) {
        self.found.run_pending_tasks();
        self.missing.run_pending_tasks();
    }

    /// Approximate number of cached entries (hits and misses).
    pub fn entry_count(&self) -> u64 {
        self.found.entry_count() + self.missing.entry_count()
    }
}

#[async_trait]
impl<S: TenantStore + 'static> TenantStore for CachedStore<S> {
    async fn by_id(&self, id: TenantId) -> Result<Option<Arc<Tenant>>, StoreError> {
        self.get(TenantRef::Id(id)).await
    }

    async fn by_slug(&self, slug: &TenantSlug) -> Result<Option<Arc<Tenant>>, StoreError> {
        self.get(TenantRef::Slug(slug.clone())).await
    }

    async fn by_domain(&self, domain: &DomainName) -> Result<Option<Arc<Tenant>>, StoreError> {
        self.get(TenantRef::Domain(domain.clone())).await
    }

    /// A cache hit, read synchronously (the same entries `by_*` return;
    /// invalidations apply alike).
    fn peek(&self, key: &TenantRef) -> Option<Arc<Tenant>> {
        self.found.get(key)
    }
}
