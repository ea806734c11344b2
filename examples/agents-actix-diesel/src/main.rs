//! `agents-actix-diesel`: apply the reference application's schema (as the
//! owner) and serve its agents and customers (as the application role).
//!
//! ```text
//! DATABASE_OWNER_URL=postgres://owner@localhost/app DATABASE_URL=postgres://app@localhost/app \
//!   cargo run -p agents-actix-diesel
//! curl -H 'X-Tenant-ID: <a tenant id from `insurance-agent tenant list`>' localhost:8081/agents
//! ```
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::str::FromStr;
use std::sync::Arc;

use actix_web::{App, HttpServer, web};
use agents_actix_diesel::{migrate, routes};
use tenancy_actix::TenantMiddleware;
use tenancy_core::pipeline::RequestPipeline;
use tenancy_core::resolve::{HeaderStrategy, ResolverChain};
use tenancy_core::store::CachedStore;
use tenancy_diesel::AsyncTenantPool;
use tenancy_sqlx::PgTenantStore;

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    tracing_subscriber::fmt().init();
    let env = |k: &str| std::env::var(k).map_err(|_| std::io::Error::other(format!("set {k}")));
    let app_url = env("DATABASE_URL")?;
    let app_role = sqlx::postgres::PgConnectOptions::from_str(&app_url)
        .map_err(std::io::Error::other)?
        .get_username()
        .to_owned();
    if let Ok(owner) = std::env::var("DATABASE_OWNER_URL") {
        migrate(&owner, &app_role)
            .await
            .map_err(std::io::Error::other)?;
    }
    // The tenants are the reference application's (`insurance-agent tenant
    // create`, or its demo tenants), read as the application role.
    let tenants = sqlx::PgPool::connect(&app_url)
        .await
        .map_err(std::io::Error::other)?;
    let store = Arc::new(CachedStore::new(PgTenantStore::new(tenants)));
    let pipeline = RequestPipeline::new(
        ResolverChain::new().with(HeaderStrategy::tenant_id()),
        store,
    );
    let db = web::Data::new(AsyncTenantPool::connect(&app_url, 8).map_err(std::io::Error::other)?);
    let bind = std::env::var("BIND").unwrap_or_else(|_| "127.0.0.1:8081".into());
    println!("agents-actix-diesel on http://{bind} (tenant by id in the X-Tenant-ID header)");
    HttpServer::new(move || {
        App::new()
            .wrap(TenantMiddleware::new(pipeline.clone()))
            .app_data(db.clone())
            .configure(routes)
    })
    .bind(bind)?
    .run()
    .await
}
