//! The actix-web + tenancy-diesel example over real HTTP against the test
//! PostgreSQL (application role under row-level security).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::net::SocketAddr;
use std::sync::Arc;

use actix_web::{App, HttpServer, web};
use agents_actix_diesel::{migrate, routes};
use serde_json::{Value, json};
use tenancy_actix::TenantMiddleware;
use tenancy_core::pipeline::RequestPipeline;
use tenancy_core::resolve::{HeaderStrategy, ResolverChain};
use tenancy_core::store::InMemoryTenantStore;
use tenancy_core::{Tenant, TenantId};
use tenancy_diesel::AsyncTenantPool;
use tenancy_testkit::TestDb;
use tenancy_testkit::http::{RawResponse, send};

async fn serve() -> (SocketAddr, TenantId, TenantId) {
    let env = TestDb::from_env().unwrap();
    migrate(&env.owner_url, "tenancy_app").await.unwrap();
    let store = Arc::new(InMemoryTenantStore::new());
    let (a, b) = (TenantId::new_v4(), TenantId::new_v4());
    store
        .insert(Tenant::new(a, "acme".parse().unwrap(), "Acme"))
        .unwrap();
    store
        .insert(Tenant::new(b, "globex".parse().unwrap(), "Globex"))
        .unwrap();
    let pipeline = RequestPipeline::new(
        ResolverChain::new().with(HeaderStrategy::tenant_id()),
        store,
    );
    let db = web::Data::new(AsyncTenantPool::connect(&env.app_url, 4).unwrap());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = HttpServer::new(move || {
        App::new()
            .wrap(TenantMiddleware::new(pipeline.clone()))
            .app_data(db.clone())
            .configure(routes)
    })
    .workers(1)
    .disable_signals()
    .listen(listener)
    .unwrap()
    .run();
    actix_web::rt::spawn(server);
    (addr, a, b)
}

async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    tenant: Option<TenantId>,
    body: Option<Value>,
) -> RawResponse {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    if let Some(t) = tenant {
        req.push_str(&format!("X-Tenant-ID: {t}\r\n"));
    }
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    if !body.is_empty() {
        req.push_str("Content-Type: application/json\r\n");
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    send(addr, req.as_bytes()).await.unwrap()
}

#[actix_web::test]
async fn tenants_see_only_their_own_agents_and_customers() {
    let (addr, a, b) = serve().await;
    let agent = call(
        addr,
        "POST",
        "/agents",
        Some(a),
        Some(json!({"agent_code": "A1", "name": "Asha"})),
    )
    .await;
    assert_eq!(agent.status, 201, "{}", agent.text());
    let agent_id = agent.json()["id"].as_str().unwrap().to_owned();
    let customer = call(
        addr,
        "POST",
        "/customers",
        Some(a),
        Some(json!({"agent_id": agent_id, "first_name": "Ravi", "last_name": "Kumar"})),
    )
    .await;
    assert_eq!(customer.status, 201, "{}", customer.text());
    let id = customer.json()["id"].as_str().unwrap().to_owned();

    assert_eq!(
        call(addr, "GET", "/agents", Some(a), None)
            .await
            .json()
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert!(
        call(addr, "GET", "/agents", Some(b), None)
            .await
            .json()
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert!(
        call(addr, "GET", "/customers", Some(b), None)
            .await
            .json()
            .as_array()
            .unwrap()
            .is_empty()
    );
    let theirs = call(addr, "GET", &format!("/customers/{id}"), Some(b), None).await;
    assert_eq!(theirs.status, 404, "{}", theirs.text());
    assert_eq!(
        theirs.header("content-type"),
        Some("application/problem+json")
    );
    assert_eq!(
        call(addr, "GET", &format!("/customers/{id}"), Some(a), None)
            .await
            .status,
        200
    );

    // A body claiming another tenant: refused by the write guard, before SQL.
    let spoof = call(
        addr,
        "POST",
        "/customers",
        Some(b),
        Some(json!({"tenant_id": a.to_string(), "agent_id": agent_id, "first_name": "E", "last_name": "V"})),
    )
    .await;
    assert_eq!(spoof.status, 403, "{}", spoof.text());
    assert_eq!(spoof.json()["code"], "tenant-mismatch");
    // Another tenant's agent as a foreign key: not visible, so refused.
    let fk = call(
        addr,
        "POST",
        "/customers",
        Some(b),
        Some(json!({"agent_id": agent_id, "first_name": "E", "last_name": "V"})),
    )
    .await;
    assert_eq!(fk.status, 422, "{}", fk.text());
    // Nothing of b's was written, and a still has exactly its own rows.
    assert!(
        call(addr, "GET", "/customers", Some(b), None)
            .await
            .json()
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        call(addr, "GET", "/customers", Some(a), None)
            .await
            .json()
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // Duplicate agent code within a tenant: 422; the same code in another tenant: fine.
    assert_eq!(
        call(
            addr,
            "POST",
            "/agents",
            Some(a),
            Some(json!({"agent_code": "A1", "name": "X"}))
        )
        .await
        .status,
        422
    );
    assert_eq!(
        call(
            addr,
            "POST",
            "/agents",
            Some(b),
            Some(json!({"agent_code": "A1", "name": "X"}))
        )
        .await
        .status,
        201
    );
    // No tenant: the middleware refuses with a problem.
    let none = call(addr, "GET", "/agents", None, None).await;
    assert_eq!(none.status, 400);
    assert_eq!(none.json()["code"], "tenant-missing");
    assert_eq!(
        call(addr, "GET", "/customers/nope", Some(a), None)
            .await
            .status,
        400
    );
}
