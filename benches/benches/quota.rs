//! Quota and flag checks, each against a baseline in the same run.
//!
//! Run: `cargo bench -p tenancy-benches --bench quota` (no database needed).
//!
//! - `rate/governor_keyed` (**baseline**): `governor`'s keyed limiter,
//!   `check_key` for one tenant id, never refused.
//! - `rate/tenancy_one_window`: `MemoryQuota::check_rate`, one window, never refused.
//! - `rate/tenancy_two_windows`: the same with a per-minute and a per-hour window.
//! - `stock/reserve_commit_release`: reserve 1, commit, release 1.
//! - `flags/*`: a snapshot lookup (`ctx.feature_enabled`), one full
//!   evaluation, and building a snapshot of 20 flags.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;
use std::num::NonZeroU32;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use governor::{Quota, RateLimiter};
use tenancy_core::flags::{FlagDefinition, FlagEngine};
use tenancy_core::plan::{Overrides, PlanCatalog};
use tenancy_core::quota::MemoryQuota;
use tenancy_core::{Tenant, TenantContext, TenantId};

const CATALOG: &str = r#"{"plans": [{"id": "p", "name": "P",
  "limits": {
    "one": {"rate": {"per_second": 4000000000}},
    "two": {"rate": {"per_minute": 240000000000, "per_hour": 14400000000000}},
    "users": {"stock": 1000000}
  },
  "features": {"f0": true}}]}"#;

fn bench(c: &mut Criterion) {
    let catalog = PlanCatalog::from_json(CATALOG).unwrap();
    let tenant = Tenant::new(TenantId::new_v4(), "acme".parse().unwrap(), "Acme");
    let ctx = TenantContext::new(tenant.clone()).with_entitlements(Arc::new(
        catalog
            .entitlements(&"p".into(), &Overrides::default())
            .unwrap(),
    ));
    // 1 000 other tenants present, as in a real process.
    let quota = MemoryQuota::new();
    let governor = RateLimiter::keyed(Quota::per_second(NonZeroU32::MAX));
    for _ in 0..1000 {
        let other = TenantContext::new(Tenant::new(TenantId::new_v4(), "x".parse().unwrap(), "X"))
            .with_entitlements(ctx.entitlements().unwrap().clone());
        quota.check_rate(&other, "one", 1).unwrap();
        let _ = governor.check_key(&other.tenant_id());
    }
    let id = ctx.tenant_id();

    let mut g = c.benchmark_group("rate");
    g.bench_function("governor_keyed", |b| {
        b.iter(|| black_box(governor.check_key(black_box(&id)).is_ok()));
    });
    g.bench_function("tenancy_one_window", |b| {
        b.iter(|| black_box(quota.check_rate(black_box(&ctx), "one", 1).is_ok()));
    });
    g.bench_function("tenancy_two_windows", |b| {
        b.iter(|| black_box(quota.check_rate(black_box(&ctx), "two", 1).is_ok()));
    });
    g.finish();

    let mut g = c.benchmark_group("stock");
    g.bench_function("reserve_commit_release", |b| {
        b.iter(|| {
            quota.reserve(black_box(&ctx), "users", 1).unwrap().commit();
            quota.release(&ctx, "users", 1);
        });
    });
    g.finish();

    let defs: Vec<FlagDefinition> = (0..20)
        .map(|i| FlagDefinition::boolean(&format!("f{i}")).rollout(50))
        .collect();
    let engine = FlagEngine::new(defs);
    engine.set_tenant_override(id, "f3", true.into()).unwrap();
    let parent = TenantId::new_v4();
    let snapshot = engine.snapshot(&tenant, &[parent], ctx.entitlements().map(|e| &**e));
    let ctx = ctx.with_flags(snapshot);
    let mut g = c.benchmark_group("flags");
    g.bench_function("snapshot_lookup", |b| {
        b.iter(|| black_box(ctx.feature_enabled(black_box("f7"))));
    });
    g.bench_function("evaluate_one", |b| {
        b.iter(|| {
            black_box(engine.evaluate(
                black_box("f7"),
                &tenant,
                &[parent],
                ctx.entitlements().map(|e| &**e),
            ))
        });
    });
    g.bench_function("snapshot_20_flags", |b| {
        b.iter(|| black_box(engine.snapshot(&tenant, &[parent], ctx.entitlements().map(|e| &**e))));
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
