//! The per-tenant cache never serves one tenant's entry to another.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tenancy_core::cache::{TenantCache, namespaced_key};
use tenancy_core::{Tenant, TenantContext, TenantId};

fn ctx(slug: &str) -> TenantContext {
    TenantContext::new(Tenant::new(TenantId::new_v4(), slug.parse().unwrap(), slug))
}

#[tokio::test]
async fn same_key_different_tenants_are_different_entries() {
    let cache: TenantCache<String, String> = TenantCache::new(1000, Duration::from_secs(60));
    let (a, b) = (ctx("a"), ctx("b"));
    cache.insert(&a, "k".into(), "a-value".into()).await;
    cache.insert(&b, "k".into(), "b-value".into()).await;
    assert_eq!(cache.get(&a, &"k".into()).await.as_deref(), Some("a-value"));
    assert_eq!(cache.get(&b, &"k".into()).await.as_deref(), Some("b-value"));
    cache.invalidate(&a, &"k".into()).await;
    assert_eq!(cache.get(&a, &"k".into()).await, None);
    assert_eq!(cache.get(&b, &"k".into()).await.as_deref(), Some("b-value"));
}

#[tokio::test]
async fn clear_tenant_drops_only_that_tenant() {
    let cache: TenantCache<u32, u32> = TenantCache::new(10_000, Duration::from_secs(60));
    let (a, b) = (ctx("a"), ctx("b"));
    for i in 0..100 {
        cache.insert(&a, i, i).await;
        cache.insert(&b, i, i + 1000).await;
    }
    cache.clear_tenant(a.tenant_id());
    for i in 0..100 {
        assert_eq!(cache.get(&a, &i).await, None);
        assert_eq!(cache.get(&b, &i).await, Some(i + 1000));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_with_computes_once_per_tenant() {
    let cache: Arc<TenantCache<&'static str, usize>> =
        Arc::new(TenantCache::new(100, Duration::from_secs(60)));
    let calls = Arc::new(AtomicUsize::new(0));
    let (a, b) = (ctx("a"), ctx("b"));
    let mut tasks = Vec::new();
    for i in 0..20 {
        let (cache, calls) = (cache.clone(), calls.clone());
        let c = if i % 2 == 0 { a.clone() } else { b.clone() };
        let len = c.slug().as_str().len();
        tasks.push(tokio::spawn(async move {
            cache
                .get_with(&c, "report", async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    len
                })
                .await
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "one computation per tenant"
    );
}

#[test]
fn external_keys_are_namespaced() {
    let (a, b) = (ctx("a"), ctx("b"));
    assert_ne!(namespaced_key(&a, "x"), namespaced_key(&b, "x"));
    assert!(namespaced_key(&a, "x").starts_with(&format!("tenant:{}:", a.tenant_id())));
}
