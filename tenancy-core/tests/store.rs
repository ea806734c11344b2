//! CachedStore: TTL, negative caching, single flight, invalidation.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use tenancy_core::store::{CachedStore, InMemoryTenantStore, TenantStore, TenantUpdate};
use tenancy_core::{DomainName, StoreError, Tenant, TenantId, TenantSlug};

/// A store that counts backend loads, can be slowed down and made to fail.
#[derive(Default)]
struct Counting {
    inner: InMemoryTenantStore,
    loads: AtomicUsize,
    delay: Duration,
    fail: std::sync::atomic::AtomicBool,
}

impl Counting {
    fn loads(&self) -> usize {
        self.loads.load(Ordering::SeqCst)
    }

    async fn hit(&self) -> Result<(), StoreError> {
        self.loads.fetch_add(1, Ordering::SeqCst);
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        if self.fail.load(Ordering::SeqCst) {
            return Err(StoreError::msg("backend down"));
        }
        Ok(())
    }
}

#[async_trait]
impl TenantStore for Counting {
    async fn by_id(&self, id: TenantId) -> Result<Option<Arc<Tenant>>, StoreError> {
        self.hit().await?;
        self.inner.by_id(id).await
    }
    async fn by_slug(&self, slug: &TenantSlug) -> Result<Option<Arc<Tenant>>, StoreError> {
        self.hit().await?;
        self.inner.by_slug(slug).await
    }
    async fn by_domain(&self, d: &DomainName) -> Result<Option<Arc<Tenant>>, StoreError> {
        self.hit().await?;
        self.inner.by_domain(d).await
    }
}

fn tenant(slug: &str) -> Tenant {
    Tenant::new(TenantId::new_v4(), slug.parse().unwrap(), slug)
}

fn counting(tenants: &[Tenant], delay: Duration) -> Arc<Counting> {
    let c = Counting {
        delay,
        ..Default::default()
    };
    for t in tenants {
        c.inner.insert(t.clone()).unwrap();
    }
    Arc::new(c)
}

#[tokio::test]
async fn hits_do_not_reach_the_backend_and_ttl_expires() {
    let acme = tenant("acme");
    let backend = counting(std::slice::from_ref(&acme), Duration::ZERO);
    let store = CachedStore::builder(backend.clone())
        .ttl(Duration::from_millis(300))
        .build();
    for _ in 0..10 {
        assert_eq!(store.by_id(acme.id).await.unwrap().unwrap().id, acme.id);
    }
    assert_eq!(backend.loads(), 1);
    tokio::time::sleep(Duration::from_millis(450)).await;
    store.by_id(acme.id).await.unwrap();
    assert_eq!(
        backend.loads(),
        2,
        "entry should have expired after the TTL"
    );
}

#[tokio::test]
async fn misses_are_cached_briefly() {
    let backend = counting(&[], Duration::ZERO);
    let store = CachedStore::builder(backend.clone())
        .ttl(Duration::from_secs(60))
        .negative_ttl(Duration::from_millis(250))
        .build();
    let slug: TenantSlug = "nobody".parse().unwrap();
    for _ in 0..100 {
        assert!(store.by_slug(&slug).await.unwrap().is_none());
    }
    assert_eq!(
        backend.loads(),
        1,
        "an enumeration flood reaches the backend once"
    );

    // The tenant is created; within the negative TTL the miss is still served...
    backend.inner.insert(tenant("nobody")).unwrap();
    assert!(store.by_slug(&slug).await.unwrap().is_none());
    // ... and after it, the new tenant is found.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(store.by_slug(&slug).await.unwrap().is_some());
    assert_eq!(backend.loads(), 2);
}

#[tokio::test]
async fn negative_caching_can_be_disabled() {
    let backend = counting(&[], Duration::ZERO);
    let store = CachedStore::builder(backend.clone())
        .negative_ttl(Duration::ZERO)
        .build();
    let id = TenantId::new_v4();
    store.by_id(id).await.unwrap();
    store.by_id(id).await.unwrap();
    assert_eq!(backend.loads(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_misses_load_once() {
    let acme = tenant("acme");
    let backend = counting(std::slice::from_ref(&acme), Duration::from_millis(100));
    let store = Arc::new(CachedStore::new(backend.clone()));
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move { store.by_id(acme.id).await }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap().unwrap().id, acme.id);
    }
    assert_eq!(
        backend.loads(),
        1,
        "64 concurrent misses must cause one load"
    );
}

#[tokio::test]
async fn backend_errors_are_reported_and_not_cached() {
    let acme = tenant("acme");
    let backend = counting(std::slice::from_ref(&acme), Duration::ZERO);
    let store = CachedStore::new(backend.clone());
    backend.fail.store(true, Ordering::SeqCst);
    let err = store.by_id(acme.id).await.unwrap_err();
    assert!(err.to_string().contains("backend down"));
    backend.fail.store(false, Ordering::SeqCst);
    assert!(store.by_id(acme.id).await.unwrap().is_some());
    assert_eq!(backend.loads(), 2);
}

#[tokio::test]
async fn invalidation_drops_entries_under_every_name() {
    let acme = tenant("acme").with_domain("portal.acme.test".parse().unwrap());
    let backend = counting(std::slice::from_ref(&acme), Duration::ZERO);
    let store = CachedStore::new(backend.clone());
    let domain: DomainName = "portal.acme.test".parse().unwrap();
    store.by_id(acme.id).await.unwrap();
    store.by_slug(&acme.slug).await.unwrap();
    store.by_domain(&domain).await.unwrap();
    assert_eq!(backend.loads(), 3);

    // Rename the tenant and drop its domain in the backend.
    backend
        .inner
        .apply(
            acme.id,
            &TenantUpdate::new()
                .slug("acme-group".parse().unwrap())
                .remove_domain(domain.clone()),
        )
        .unwrap();
    store.invalidate(acme.id).await;

    let by_id = store.by_id(acme.id).await.unwrap().unwrap();
    assert_eq!(by_id.slug.as_str(), "acme-group");
    assert!(
        store.by_slug(&acme.slug).await.unwrap().is_none(),
        "old slug must not be served from cache"
    );
    assert!(store.by_domain(&domain).await.unwrap().is_none());
    assert_eq!(backend.loads(), 6);
}

#[tokio::test]
async fn invalidate_tenant_clears_cached_misses_for_new_names() {
    let backend = counting(&[], Duration::ZERO);
    let store = CachedStore::builder(backend.clone())
        .negative_ttl(Duration::from_secs(60))
        .build();
    let t = tenant("fresh").with_domain("fresh.test".parse().unwrap());
    assert!(store.by_slug(&t.slug).await.unwrap().is_none());
    assert!(
        store
            .by_domain(&"fresh.test".parse().unwrap())
            .await
            .unwrap()
            .is_none()
    );
    backend.inner.insert(t.clone()).unwrap();
    store.invalidate_tenant(&t).await;
    assert!(store.by_slug(&t.slug).await.unwrap().is_some());
    assert!(
        store
            .by_domain(&"fresh.test".parse().unwrap())
            .await
            .unwrap()
            .is_some()
    );
}

#[tokio::test]
async fn capacity_is_bounded() {
    let tenants: Vec<Tenant> = (0..200).map(|i| tenant(&format!("t{i}"))).collect();
    let backend = counting(&tenants, Duration::ZERO);
    let store = CachedStore::builder(backend.clone())
        .max_capacity(50)
        .build();
    for t in &tenants {
        store.by_id(t.id).await.unwrap();
    }
    store.run_pending_tasks().await;
    assert!(store.entry_count() <= 50, "{} entries", store.entry_count());
    // A second pass must go back to the backend for the tenants that did not fit.
    for t in &tenants {
        store.by_id(t.id).await.unwrap();
    }
    assert!(backend.loads() >= 200 + 150, "{} loads", backend.loads());
}

#[tokio::test]
async fn a_load_overtaken_by_an_invalidation_is_not_cached() {
    let acme = tenant("acme");
    let backend = counting(std::slice::from_ref(&acme), Duration::from_millis(100));
    let store = Arc::new(CachedStore::new(backend.clone()));
    // A load starts, reading the old record...
    let slow = tokio::spawn({
        let store = store.clone();
        async move { store.by_id(acme.id).await }
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    // ...the tenant changes and the cache is told while the load is in flight.
    backend
        .inner
        .apply(acme.id, &TenantUpdate::new().display_name("Acme Renamed"))
        .unwrap();
    store.invalidate(acme.id).await;
    slow.await.unwrap().unwrap();
    // The next read goes to the backend again and sees the change.
    let now = store.by_id(acme.id).await.unwrap().unwrap();
    assert_eq!(now.display_name, "Acme Renamed");
    assert_eq!(backend.loads(), 2);
}

#[tokio::test]
async fn a_cancelled_load_does_not_stall_the_next_caller() {
    let acme = tenant("acme");
    let backend = counting(std::slice::from_ref(&acme), Duration::from_millis(50));
    let store = CachedStore::new(backend.clone());
    // The first caller gives up before the backend answers.
    let gave_up = tokio::time::timeout(Duration::from_millis(10), store.by_id(acme.id)).await;
    assert!(gave_up.is_err());
    // The next caller joins (and drives) the same load rather than waiting forever.
    let found = tokio::time::timeout(Duration::from_secs(2), store.by_id(acme.id))
        .await
        .expect("the load must complete")
        .unwrap();
    assert_eq!(found.unwrap().id, acme.id);
    assert_eq!(backend.loads(), 1);
}
