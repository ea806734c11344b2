//! The smallest tenant-aware axum server.
//!
//! Run: `cargo run -p tenancy-axum --example hello_tenant`, then
//! `curl -H 'X-Tenant-ID: <the id it prints>' localhost:3000/whoami`.
#![allow(clippy::print_stdout)] // an example prints

use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use tenancy_axum::{Tenant, TenantLayer};
use tenancy_core::pipeline::RequestPipeline;
use tenancy_core::resolve::{HeaderStrategy, ResolverChain};
use tenancy_core::store::InMemoryTenantStore;
use tenancy_core::{Tenant as TenantRecord, TenantId};

async fn whoami(Tenant(ctx): Tenant) -> String {
    format!("hello, {} ({})\n", ctx.tenant().display_name, ctx.slug())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let store = Arc::new(InMemoryTenantStore::new());
    let acme = TenantRecord::new(TenantId::new_v4(), "acme".parse()?, "Acme Insurance");
    store.insert(acme.clone())?;
    let pipeline = RequestPipeline::new(
        ResolverChain::new().with(HeaderStrategy::tenant_id()),
        store,
    );
    let app = Router::new()
        .route("/whoami", get(whoami))
        .layer(TenantLayer::new(pipeline));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!(
        "curl -H 'X-Tenant-ID: {}' http://127.0.0.1:3000/whoami",
        acme.id
    );
    println!("curl -H 'X-Tenant-ID: not-a-uuid' http://127.0.0.1:3000/whoami   # a 400 problem");
    axum::serve(listener, app).await?;
    Ok(())
}
