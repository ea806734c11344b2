//! Resolve a tenant from a request, then work inside its scope.
//!
//! Run: `cargo run -p tenancy-core --example resolve_and_scope`
#![allow(clippy::print_stdout, clippy::unwrap_used)] // an example prints and keeps error handling short

use std::sync::Arc;

use tenancy_core::resolve::{HeaderStrategy, ResolverChain, SimpleRequest, SubdomainStrategy};
use tenancy_core::store::{CachedStore, InMemoryTenantStore};
use tenancy_core::{DomainName, Tenant, TenantContext, TenantId};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A store (here in memory) behind the moka-backed cache.
    let store = InMemoryTenantStore::new();
    let acme = Tenant::new(TenantId::new_v4(), "acme".parse()?, "Acme Insurance");
    store.insert(acme.clone())?;
    let store = Arc::new(CachedStore::new(store));

    // Strategies in priority order; if two name different tenants, it is a conflict.
    let chain = ResolverChain::new()
        .with(HeaderStrategy::tenant_id())
        .with(SubdomainStrategy::new(DomainName::parse("example.com")?));

    for req in [
        SimpleRequest::new("/policies").with_host("acme.example.com"),
        SimpleRequest::new("/policies").with_header("x-tenant-id", acme.id.to_string()),
        SimpleRequest::new("/policies").with_host("ghost.example.com"),
        SimpleRequest::new("/policies").with_header("x-tenant-id", "not-a-uuid"),
    ] {
        match chain.resolve(&req, store.as_ref()).await {
            Ok(found) => {
                let ctx = TenantContext::new((*found.tenant).clone());
                // Inside the scope, any code (and tasks spawned through the
                // context) can ask which tenant it serves.
                ctx.scope(async {
                    let here = tenancy_core::current().unwrap();
                    println!(
                        "resolved by {:<10} -> {} ({})",
                        found.strategy,
                        here.slug(),
                        here.tenant_id()
                    );
                })
                .await;
            }
            Err(e) => println!("refused: {} {} ({})", e.status(), e.code(), e),
        }
    }
    // Outside any scope there is no tenant: fail closed.
    println!(
        "outside a scope: {:?}",
        tenancy_core::current().map(|c| c.tenant_id()).err()
    );
    Ok(())
}
