//! The shared web behaviour table over real HTTP against an actix-web server.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::net::SocketAddr;

use actix_web::{App, HttpServer, web};
use tenancy_actix::{
    FeatureName, MaybeTenant, PermissionName, ProblemError, RequireFeature, RequirePermission,
    Tenant, TenantMiddleware,
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

async fn whoami(Tenant(ctx): Tenant) -> Result<String, ProblemError> {
    Ok(web_table::whoami(&ctx)?)
}

async fn spawned() -> Result<String, ProblemError> {
    Ok(web_table::spawned().await?)
}

async fn analytics(_: RequireFeature<Analytics>) -> &'static str {
    "numbers"
}

async fn admin(_: RequirePermission<Manage>) -> &'static str {
    "welcome"
}

async fn boom() -> Result<&'static str, ProblemError> {
    Err(web_table::boom().into())
}

fn serve(world: World, pipeline: RequestPipeline) -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = HttpServer::new(move || {
        let middleware = TenantMiddleware::new(pipeline.clone()).with_user(|req| {
            req.headers()
                .get("x-test-user")
                .and_then(|v| v.to_str().ok())
                .map(UserId::new)
        });
        App::new()
            .wrap(middleware)
            .route("/whoami", web::get().to(whoami))
            .route("/t/{slug}/whoami", web::get().to(whoami))
            .route("/spawned", web::get().to(spawned))
            .route("/analytics", web::get().to(analytics))
            .route("/admin", web::get().to(admin))
            .route("/boom", web::get().to(boom))
            .app_data(web::Data::new(world.clone()))
            .route(
                "/upload",
                web::get().to(|Tenant(ctx): Tenant, world: web::Data<World>| async move {
                    upload(&world, &ctx)
                        .map_err(ProblemError::from)
                        .map(|()| "stored")
                }),
            )
    })
    .workers(1)
    .disable_signals()
    .listen(listener)
    .unwrap()
    .run();
    actix_web::rt::spawn(server);
    addr
}

async fn home(MaybeTenant(ctx): MaybeTenant) -> String {
    web_table::home(ctx.as_ref())
}

/// `/home` behind the optional-tenant middleware (or none: the twin).
fn serve_universal(pipeline: Option<RequestPipeline>) -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = HttpServer::new(move || {
        App::new()
            .wrap(actix_web::middleware::Condition::new(
                pipeline.is_some(),
                TenantMiddleware::optional(
                    pipeline.clone().unwrap_or_else(|| World::new().pipeline),
                ),
            ))
            .route("/home", web::get().to(home))
    })
    .workers(1)
    .disable_signals()
    .listen(listener)
    .unwrap()
    .run();
    actix_web::rt::spawn(server);
    addr
}

#[actix_web::test]
async fn the_behaviour_table_over_http() {
    let world = World::new();
    let open = serve(world.clone(), world.pipeline.clone());
    let members = serve(world.clone(), world.members_only.clone());
    run_table(&world, open, members).await;
    run_universal(&world, serve_universal(Some(world.pipeline.clone()))).await;
}

#[actix_web::test]
async fn the_behaviour_table_over_http_on_the_async_path() {
    let world = World::on(Path::Async);
    let open = serve(world.clone(), world.pipeline.clone());
    let members = serve(world.clone(), world.members_only.clone());
    run_table(&world, open, members).await;
    run_universal(&world, serve_universal(Some(world.pipeline.clone()))).await;
}

#[actix_web::test]
async fn an_optional_tenant_route_without_the_middleware_is_refused() {
    let addr = serve_universal(None);
    let r = tenancy_testkit::http::send(addr, &tenancy_testkit::http::get("/home", &[]))
        .await
        .unwrap();
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["code"], "tenant-missing");
}

#[actix_web::test]
async fn the_extractor_without_the_middleware_is_a_400_problem_not_a_500() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = HttpServer::new(|| App::new().route("/whoami", web::get().to(whoami)))
        .workers(1)
        .disable_signals()
        .listen(listener)
        .unwrap()
        .run();
    actix_web::rt::spawn(server);
    let r = tenancy_testkit::http::send(addr, &tenancy_testkit::http::get("/whoami", &[]))
        .await
        .unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["code"], "tenant-missing");
}
