//! The shared web behaviour table over real HTTP against an axum server.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::net::SocketAddr;

use axum::Router;
use axum::routing::get;
use tenancy_axum::{
    FeatureName, MaybeTenant, PermissionName, ProblemResponse, RequireFeature, RequirePermission,
    Tenant, TenantLayer,
};
use tenancy_core::UserId;
use tenancy_core::pipeline::RequestPipeline;
use tenancy_testkit::web::{self as web_table, Path, World, run_table, run_universal, upload};

struct Analytics;
impl FeatureName for Analytics {
    const NAME: &'static str = "analytics";
}

struct Manage;
impl PermissionName for Manage {
    const NAME: &'static str = "tenant:manage";
}

async fn whoami(Tenant(ctx): Tenant) -> Result<String, ProblemResponse> {
    Ok(web_table::whoami(&ctx)?)
}

async fn spawned() -> Result<String, ProblemResponse> {
    Ok(web_table::spawned().await?)
}

async fn analytics(_: RequireFeature<Analytics>) -> &'static str {
    "numbers"
}

async fn admin(_: RequirePermission<Manage>) -> &'static str {
    "welcome"
}

async fn boom() -> Result<&'static str, ProblemResponse> {
    Err(web_table::boom().into())
}

async fn serve(world: World, pipeline: RequestPipeline) -> SocketAddr {
    let layer = TenantLayer::new(pipeline).with_user(|parts| {
        parts
            .headers
            .get("x-test-user")
            .and_then(|v| v.to_str().ok())
            .map(UserId::new)
    });
    let app = Router::new()
        .route("/whoami", get(whoami))
        .route("/t/{slug}/whoami", get(whoami))
        .route("/spawned", get(spawned))
        .route("/analytics", get(analytics))
        .route("/admin", get(admin))
        .route("/boom", get(boom))
        .route(
            "/upload",
            get(move |Tenant(ctx): Tenant| async move {
                upload(&world, &ctx)
                    .map_err(ProblemResponse::from)
                    .map(|()| "stored")
            }),
        )
        .layer(layer);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    addr
}

async fn home(MaybeTenant(ctx): MaybeTenant) -> String {
    web_table::home(ctx.as_ref())
}

/// `/home` behind the optional-tenant layer (or none: the twin).
async fn serve_universal(pipeline: Option<RequestPipeline>) -> SocketAddr {
    let mut app = Router::new().route("/home", get(home));
    if let Some(pipeline) = pipeline {
        app = app.layer(TenantLayer::optional(pipeline));
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    addr
}

#[tokio::test]
async fn the_behaviour_table_over_http() {
    let world = World::new();
    let open = serve(world.clone(), world.pipeline.clone()).await;
    let members = serve(world.clone(), world.members_only.clone()).await;
    run_table(&world, open, members).await;
    run_universal(&world, serve_universal(Some(world.pipeline.clone())).await).await;
}

#[tokio::test]
async fn the_behaviour_table_over_http_on_the_async_path() {
    let world = World::on(Path::Async);
    let open = serve(world.clone(), world.pipeline.clone()).await;
    let members = serve(world.clone(), world.members_only.clone()).await;
    run_table(&world, open, members).await;
    run_universal(&world, serve_universal(Some(world.pipeline.clone())).await).await;
}

#[tokio::test]
async fn an_optional_tenant_route_without_the_layer_is_refused() {
    let addr = serve_universal(None).await;
    let r = tenancy_testkit::http::send(addr, &tenancy_testkit::http::get("/home", &[]))
        .await
        .unwrap();
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["code"], "tenant-missing");
}

#[tokio::test]
async fn the_extractor_without_the_layer_is_a_400_problem_not_a_500() {
    let app = Router::new().route("/whoami", get(whoami));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let r = tenancy_testkit::http::send(addr, &tenancy_testkit::http::get("/whoami", &[]))
        .await
        .unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["code"], "tenant-missing");
}
