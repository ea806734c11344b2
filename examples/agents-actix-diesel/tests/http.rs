//! The actix-web + tenancy-diesel example over real HTTP against the test
//! PostgreSQL (application role under row-level security).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::net::SocketAddr;
use std::sync::Arc;

use actix_web::{App, HttpServer, web};
use agents_actix_diesel::routes;
use insurance_agent::data::{Data, PgUrls};
use serde_json::{Value, json};
use tenancy_actix::TenantMiddleware;
use tenancy_core::pipeline::RequestPipeline;
use tenancy_core::resolve::{HeaderStrategy, ResolverChain};
use tenancy_core::store::{CachedStore, TenantStore};
use tenancy_core::{Tenant, TenantContext, TenantId};
use tenancy_diesel::AsyncTenantPool;
use tenancy_sqlx::PgTenantStore;
use tenancy_testkit::TestDb;
use tenancy_testkit::http::{RawResponse, send};

/// A fresh database with the reference application's schema (applied by
/// the reference application itself, which also audits it in strict mode)
/// and its demo tenants, plus two empty tenants `a` and `b`; this example
/// served over it. The reference application's `Data` is returned too.
async fn serve() -> (SocketAddr, TenantId, TenantId, Data, tempfile::TempDir) {
    let db = TestDb::from_env()
        .unwrap()
        .fresh_database("actix_diesel")
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = Data::open_postgres(
        dir.path(),
        &PgUrls {
            app: db.app_url.clone(),
            owner: db.owner_url.clone(),
        },
    )
    .await
    .unwrap();
    insurance_agent::seed::demo(&data).await.unwrap();
    let mut ids = Vec::new();
    for slug in ["acme", "globex"] {
        let t = Tenant::new(TenantId::new_v4(), slug.parse().unwrap(), slug);
        ids.push(data.create_tenant(t).await.unwrap().id);
    }
    // This example's own pieces: tenants read through PgTenantStore, data
    // through tenancy-diesel, both as the application role.
    let store = Arc::new(CachedStore::new(PgTenantStore::new(
        sqlx::PgPool::connect(&db.app_url).await.unwrap(),
    )));
    let pipeline = RequestPipeline::new(
        ResolverChain::new().with(HeaderStrategy::tenant_id()),
        store,
    );
    let pool = web::Data::new(AsyncTenantPool::connect(&db.app_url, 4).unwrap());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = HttpServer::new(move || {
        App::new()
            .wrap(TenantMiddleware::new(pipeline.clone()))
            .app_data(pool.clone())
            .configure(routes)
    })
    .workers(1)
    .disable_signals()
    .listen(listener)
    .unwrap()
    .run();
    actix_web::rt::spawn(server);
    (addr, ids[0], ids[1], data, dir)
}

fn new_agent(code: &str, name: &str) -> Value {
    json!({"agent_code": code, "name": name, "licence_number": "IRDA-1", "licence_expiry": "2030-01-31"})
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
    let (addr, a, b, _data, _dir) = serve().await;
    let agent = call(
        addr,
        "POST",
        "/agents",
        Some(a),
        Some(new_agent("A1", "Asha")),
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
        call(addr, "POST", "/agents", Some(a), Some(new_agent("A1", "X")))
            .await
            .status,
        422
    );
    assert_eq!(
        call(addr, "POST", "/agents", Some(b), Some(new_agent("A1", "X")))
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

#[actix_web::test]
async fn both_applications_serve_the_same_tenants_and_tables() {
    let (addr, _, _, data, _dir) = serve().await;
    let sunrise = data
        .tenant_store()
        .by_slug(&"sunrise-insurance".parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    // The reference application's demo agents, read through diesel.
    let agents = call(addr, "GET", "/agents", Some(sunrise.id), None).await;
    assert_eq!(agents.status, 200, "{}", agents.text());
    let agents = agents.json();
    let names: Vec<&str> = agents
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert!(!names.is_empty(), "the demo agents are visible");
    // A customer created here is one of the reference application's.
    let agent_id = agents[0]["id"].as_str().unwrap();
    let created = call(
        addr,
        "POST",
        "/customers",
        Some(sunrise.id),
        Some(json!({"agent_id": agent_id, "first_name": "Meera", "last_name": "From-Actix", "customer_type": "family"})),
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.text());
    let mut tx = data
        .begin(&TenantContext::new((*sunrise).clone()))
        .await
        .unwrap();
    let (found, kind): (i64, String) = insurance_agent::on!(
        tx,
        sqlx::query_as(
            "SELECT count(*), min(customer_type) FROM customers WHERE last_name = 'From-Actix'"
        ),
        fetch_one
    )
    .unwrap();
    tx.commit().await.unwrap();
    assert_eq!((found, kind.as_str()), (1, "family"));
    // An unknown customer type is refused before SQL.
    let bad = call(
        addr,
        "POST",
        "/customers",
        Some(sunrise.id),
        Some(json!({"agent_id": agent_id, "first_name": "X", "last_name": "Y", "customer_type": "alien"})),
    )
    .await;
    assert_eq!(bad.status, 422, "{}", bad.text());
}
