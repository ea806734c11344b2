//! Resolution and tenant lookup, each against a baseline measured in the same run.
//!
//! Run: `cargo bench -p tenancy-benches --bench resolve`
//!
//! - `lookup/hashmap_get` (baseline): `HashMap<TenantId, Arc<Tenant>>::get` + `Arc` clone.
//! - `lookup/cached_store_hit`: `CachedStore::by_id` on a warm cache.
//! - `lookup/in_memory_store`: `InMemoryTenantStore::by_id` (RwLock + HashMap, async trait).
//! - `resolve/*`: a header + subdomain + path chain over a `SimpleRequest`,
//!   identify only and identify + load through the warm `CachedStore`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use tenancy_core::resolve::{
    HeaderStrategy, PathPrefixStrategy, ResolverChain, SimpleRequest, SubdomainStrategy,
};
use tenancy_core::store::{CachedStore, InMemoryTenantStore, TenantStore};
use tenancy_core::{Tenant, TenantId};

fn tenants(n: usize) -> Vec<Tenant> {
    (0..n)
        .map(|i| Tenant::new(TenantId::new_v4(), format!("t{i}").parse().unwrap(), "T"))
        .collect()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
}

fn lookup(c: &mut Criterion) {
    let rt = runtime();
    let all = tenants(1000);
    let probe = all[500].id;
    let map: HashMap<TenantId, Arc<Tenant>> =
        all.iter().map(|t| (t.id, Arc::new(t.clone()))).collect();
    let memory = Arc::new(InMemoryTenantStore::with_tenants(all.clone()).unwrap());
    let cached = CachedStore::new(memory.clone());
    rt.block_on(async {
        for t in &all {
            cached.by_id(t.id).await.unwrap();
        }
    });

    let mut g = c.benchmark_group("lookup");
    g.bench_function("hashmap_get", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(map.get(black_box(&probe)).cloned()) });
    });
    g.bench_function("cached_store_hit", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(cached.by_id(black_box(probe)).await.unwrap()) });
    });
    g.bench_function("in_memory_store", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(memory.by_id(black_box(probe)).await.unwrap()) });
    });
    g.finish();
}

fn resolve(c: &mut Criterion) {
    let rt = runtime();
    let all = tenants(1000);
    let target = all[500].clone();
    let cached = CachedStore::new(InMemoryTenantStore::with_tenants(all).unwrap());
    let chain = ResolverChain::new()
        .with(HeaderStrategy::tenant_id())
        .with(PathPrefixStrategy::new("t"))
        .with(SubdomainStrategy::new("example.com".parse().unwrap()));
    let by_header = SimpleRequest::new("/policies/42")
        .with_host("app.example.com")
        .with_header("x-tenant-id", target.id.to_string());
    let by_subdomain =
        SimpleRequest::new("/policies/42").with_host(format!("{}.example.com", target.slug));
    rt.block_on(async {
        chain.resolve(&by_header, &cached).await.unwrap();
        chain.resolve(&by_subdomain, &cached).await.unwrap();
    });

    let mut g = c.benchmark_group("resolve");
    g.bench_function("identify_header", |b| {
        b.iter(|| black_box(chain.identify(black_box(&by_header)).unwrap()));
    });
    g.bench_function("chain_header_cached", |b| {
        b.to_async(&rt).iter(|| async {
            black_box(chain.resolve(black_box(&by_header), &cached).await.unwrap())
        });
    });
    g.bench_function("chain_subdomain_cached", |b| {
        b.to_async(&rt).iter(|| async {
            black_box(
                chain
                    .resolve(black_box(&by_subdomain), &cached)
                    .await
                    .unwrap(),
            )
        });
    });
    g.finish();
}

criterion_group!(benches, lookup, resolve);
criterion_main!(benches);
