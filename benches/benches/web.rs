//! The tenant pipeline in-process: a request through the layer vs the bare
//! handler, for axum and actix-web, same run.
//!
//! Run: `cargo bench -p tenancy-benches --bench web` (no database needed).
//!
//! - `axum/bare` (**baseline**) vs `axum/tenant`: `Router::call` on `GET /`;
//!   the tenant variant runs `TenantLayer` (header strategy, moka-cached
//!   store, plan entitlements, flag snapshot, rate quota) and a handler that
//!   extracts `Tenant` and checks one flag.
//! - `actix/bare` (**baseline**) vs `actix/tenant`: the same through
//!   `actix_web::test::call_service` on an initialised `App`.
//!
//! The difference of each pair is the pipeline's added time per request;
//! `pipeline/admit` is the core pipeline alone (no HTTP types);
//! `pipeline/admit_now` its synchronous fast path, which the adapters take
//! whenever every step can answer at once (cached tenant, no membership
//! check, in-memory rate limiter).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use actix_web::{App, test, web};
use criterion::{Criterion, criterion_group, criterion_main};
use tenancy_benches::{TENANT_ID, actix_bare, actix_tenant_handler, axum_app, pipeline};
use tower_service::Service;

fn axum_request() -> http::Request<axum::body::Body> {
    http::Request::builder()
        .uri("/")
        .header("x-tenant-id", TENANT_ID)
        .body(axum::body::Body::empty())
        .unwrap()
}

async fn drive<S, B>(app: &S, iters: u64) -> Duration
where
    S: actix_web::dev::Service<
            actix_http::Request,
            Response = actix_web::dev::ServiceResponse<B>,
            Error = actix_web::Error,
        >,
    B: actix_web::body::MessageBody,
{
    let start = Instant::now();
    for _ in 0..iters {
        let req = test::TestRequest::get()
            .uri("/")
            .insert_header(("x-tenant-id", TENANT_ID))
            .to_request();
        let res = test::call_service(app, req).await;
        assert!(res.status().is_success());
        black_box(res);
    }
    start.elapsed()
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // The core pipeline alone, no HTTP: how much of the added time is ours.
    let p = pipeline();
    let req = tenancy_core::resolve::SimpleRequest::new("/").with_header("x-tenant-id", TENANT_ID);
    c.bench_function("pipeline/admit", |b| {
        b.to_async(&rt).iter(|| async {
            black_box(
                p.admit(&req, None, tenancy_core::RequestMeta::default())
                    .await
                    .unwrap(),
            )
        });
    });
    // The same, on the synchronous fast path (the tenant is cached by now).
    c.bench_function("pipeline/admit_now", |b| {
        b.iter(|| {
            black_box(
                p.admit_now(&req, None, tenancy_core::RequestMeta::default())
                    .unwrap()
                    .unwrap(),
            )
        });
    });
    let mut g = c.benchmark_group("axum");
    for (name, tenant) in [("bare", false), ("tenant", true)] {
        let app = axum_app(tenant);
        g.bench_function(name, |b| {
            b.to_async(&rt).iter(|| {
                let mut app = app.clone();
                async move {
                    let res = app.call(axum_request()).await.unwrap();
                    assert!(res.status().is_success());
                    black_box(res)
                }
            });
        });
    }
    g.finish();

    let sys = actix_web::rt::System::new();
    let mut g = c.benchmark_group("actix");
    for (name, tenant) in [("bare", false), ("tenant", true)] {
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                sys.block_on(async {
                    if tenant {
                        let app = test::init_service(
                            App::new().service(
                                web::scope("")
                                    .wrap(tenancy_actix::TenantMiddleware::new(pipeline()))
                                    .route("/", web::get().to(actix_tenant_handler)),
                            ),
                        )
                        .await;
                        drive(&app, iters).await
                    } else {
                        let app = test::init_service(App::new().configure(actix_bare)).await;
                        drive(&app, iters).await
                    }
                })
            });
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(4)).warm_up_time(Duration::from_secs(1));
    targets = bench
}
criterion_main!(benches);
