//! `agents-actix-diesel`: migrate the schema (as the owner) and serve (as the
//! application role).
//!
//! ```text
//! DATABASE_OWNER_URL=postgres://owner@localhost/app DATABASE_URL=postgres://app@localhost/app \
//!   cargo run -p agents-actix-diesel
//! curl -H 'X-Tenant-ID: 6f1c0c8e-2d5b-4c1a-9a57-3f8e2b7d9c41' localhost:8081/agents
//! ```
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::sync::Arc;

use actix_web::{App, HttpServer, web};
use agents_actix_diesel::{migrate, routes};
use tenancy_actix::TenantMiddleware;
use tenancy_core::pipeline::RequestPipeline;
use tenancy_core::resolve::{HeaderStrategy, ResolverChain};
use tenancy_core::store::InMemoryTenantStore;
use tenancy_core::{Tenant, TenantId};
use tenancy_diesel::AsyncTenantPool;

/// The demo tenants (a real deployment would read them from tenancy-sqlx's
/// `PgTenantStore` or its own table).
const TENANTS: [(&str, &str, &str); 2] = [
    (
        "6f1c0c8e-2d5b-4c1a-9a57-3f8e2b7d9c41",
        "acme",
        "Acme Insurance",
    ),
    (
        "0b7a3f0e-5c1d-4e2b-8f6a-9d4c3b2a1e0f",
        "globex",
        "Globex Agents",
    ),
];

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    tracing_subscriber::fmt().init();
    let env = |k: &str| std::env::var(k).map_err(|_| std::io::Error::other(format!("set {k}")));
    let app_url = env("DATABASE_URL")?;
    let app_role = std::env::var("APP_ROLE").unwrap_or_else(|_| "app".into());
    if let Ok(owner) = std::env::var("DATABASE_OWNER_URL") {
        migrate(&owner, &app_role)
            .await
            .map_err(std::io::Error::other)?;
    }
    let store = Arc::new(InMemoryTenantStore::new());
    for (id, slug, name) in TENANTS {
        let id: TenantId = id.parse().map_err(std::io::Error::other)?;
        store
            .insert(Tenant::new(
                id,
                slug.parse().map_err(std::io::Error::other)?,
                name,
            ))
            .map_err(std::io::Error::other)?;
    }
    let pipeline = RequestPipeline::new(
        ResolverChain::new().with(HeaderStrategy::tenant_id()),
        store,
    );
    let db = web::Data::new(AsyncTenantPool::connect(&app_url, 8).map_err(std::io::Error::other)?);
    let bind = std::env::var("BIND").unwrap_or_else(|_| "127.0.0.1:8081".into());
    println!("agents-actix-diesel on http://{bind} (tenants: acme, globex; header X-Tenant-ID)");
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
