//! Benchmarks live in `benches/`; run them with `cargo bench -p tenancy-benches`.
//!
//! This library holds what several benchmarks share:
//!
//! - [`interleaved`]: a criterion group whose variants run round-robin, each
//!   benchmark timing only its own (the database benches use it).
//! - The web fixture of the `web` criterion bench and of the
//!   `web-bench-server` binary that `scripts/bench-web` drives with wrk: a
//!   trivial handler, bare or behind the full tenant pipeline (header
//!   strategy, cached store, plan, rate quota and one flag check).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tenancy_core::flags::{FlagDefinition, FlagEngine};
use tenancy_core::pipeline::RequestPipeline;
use tenancy_core::plan::PlanCatalog;
use tenancy_core::quota::MemoryQuota;
use tenancy_core::resolve::{HeaderStrategy, ResolverChain};
use tenancy_core::store::{CachedStore, InMemoryTenantStore};
use tenancy_core::{PlanId, Tenant, TenantId};

const CATALOG: &str = r#"{"plans": [{"id": "pro", "name": "Pro",
    "limits": {"api_calls": {"rate": {"per_second": 1000000000}}},
    "features": {"analytics": true}}]}"#;

/// The tenant every benchmark request names (fixed, so wrk scripts can use it).
pub const TENANT_ID: &str = "6f1c0c8e-2d5b-4c1a-9a57-3f8e2b7d9c41";

/// The full pipeline: header strategy, moka-cached store, plan, flags and a
/// rate limit that never bites.
pub fn pipeline() -> RequestPipeline {
    let id: TenantId = TENANT_ID.parse().unwrap_or_else(|_| unreachable!());
    let tenant = Tenant::new(
        id,
        "bench".parse().unwrap_or_else(|_| unreachable!()),
        "Bench",
    )
    .with_plan(PlanId::new("pro"));
    let store = InMemoryTenantStore::with_tenants([tenant]).unwrap_or_else(|_| unreachable!());
    let catalog = PlanCatalog::from_json(CATALOG).unwrap_or_else(|_| unreachable!());
    RequestPipeline::new(
        ResolverChain::new().with(HeaderStrategy::tenant_id()),
        Arc::new(CachedStore::new(store)),
    )
    .with_plans(Arc::new(catalog))
    .with_flags(Arc::new(FlagEngine::new([FlagDefinition::boolean(
        "analytics",
    )])))
    .with_rate_limit(Arc::new(MemoryQuota::new()), "api_calls")
}

/// axum: `GET /` answering `ok`, bare or behind [`tenancy_axum::TenantLayer`]
/// (then the handler also checks a flag through the `Tenant` extractor).
pub fn axum_app(tenant: bool) -> axum::Router {
    use axum::routing::get;
    if tenant {
        axum::Router::new()
            .route(
                "/",
                get(
                    |tenancy_axum::Tenant(ctx): tenancy_axum::Tenant| async move {
                        if ctx.feature_enabled("analytics") {
                            "ok"
                        } else {
                            "no"
                        }
                    },
                ),
            )
            .layer(tenancy_axum::TenantLayer::new(pipeline()))
    } else {
        axum::Router::new().route("/", get(|| async { "ok" }))
    }
}

/// axum: the bare handler answering with the header the tenant pipeline
/// adds (`x-tenant-id`, fixed value): how much of the difference is the
/// bytes on the wire rather than the pipeline's code.
pub fn axum_bare_with_header() -> axum::Router {
    use axum::response::IntoResponse;
    use axum::routing::get;
    static NAME: axum::http::HeaderName = axum::http::HeaderName::from_static("x-tenant-id");
    static VALUE: axum::http::HeaderValue = axum::http::HeaderValue::from_static(TENANT_ID);
    axum::Router::new().route(
        "/",
        get(|| async {
            let mut response = "ok".into_response();
            response.headers_mut().insert(NAME.clone(), VALUE.clone());
            response
        }),
    )
}

/// actix: configures `GET /` the same way on an `App`.
pub fn actix_bare(cfg: &mut actix_web::web::ServiceConfig) {
    cfg.route("/", actix_web::web::get().to(|| async { "ok" }));
}

/// The actix handler behind the middleware.
pub async fn actix_tenant_handler(
    tenancy_actix::Tenant(ctx): tenancy_actix::Tenant,
) -> &'static str {
    if ctx.feature_enabled("analytics") {
        "ok"
    } else {
        "no"
    }
}

/// A criterion group `name` with one benchmark per variant, where every
/// iteration runs **all** variants round-robin through `run` and each
/// benchmark times only its own.
///
/// On a small shared machine loopback latency drifts by tens of percent over
/// seconds; interleaving makes baseline and contenders see the same
/// conditions, so their ratio stays meaningful.
pub fn interleaved<V, F, Fut>(
    c: &mut criterion::Criterion,
    rt: &tokio::runtime::Runtime,
    name: &str,
    variants: &[(&str, V)],
    run: F,
) where
    V: Copy + PartialEq,
    F: Fn(V) -> Fut,
    Fut: Future<Output = ()>,
{
    let mut g = c.benchmark_group(name);
    g.warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(5))
        .sample_size(60);
    for (label, timed) in variants {
        g.bench_function(*label, |b| {
            b.to_async(rt).iter_custom(|iters| {
                let run = &run;
                async move {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        for (_, v) in variants {
                            if v == timed {
                                let start = Instant::now();
                                run(*v).await;
                                total += start.elapsed();
                            } else {
                                run(*v).await;
                            }
                        }
                    }
                    total
                }
            });
        });
    }
    g.finish();
}
