//! The actix-web + tenancy-diesel example over real HTTP against the test
//! PostgreSQL (application role under row-level security).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::net::SocketAddr;
use std::sync::Arc;

use actix_web::{App, HttpServer, web};
use agents_actix_diesel::{middleware, pipeline, routes};
use insurance_agent::auth::Sessions;
use insurance_agent::data::{Data, PgUrls};
use serde_json::{Value, json};
use tenancy_core::store::{CachedStore, TenantStore};
use tenancy_core::{Membership, Role, Tenant, TenantContext, TenantId, UserId};
use tenancy_diesel::AsyncTenantPool;
use tenancy_sqlx::{PgMembershipStore, PgTenantStore};
use tenancy_testkit::TestDb;
use tenancy_testkit::http::{RawResponse, send};

/// What a test needs: this example served over a fresh database that the
/// reference application laid out (schema, strict audit) and seeded with its
/// demo, plus two empty tenants `acme` and `globex` with one member each.
struct World {
    addr: SocketAddr,
    /// Tokens of acme's and globex's members (issued as the reference app
    /// would at sign-in).
    a: String,
    b: String,
    a_id: TenantId,
    b_id: TenantId,
    sessions: Sessions,
    data: Data,
    _dir: tempfile::TempDir,
}

async fn serve() -> World {
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
            listen: None,
        },
    )
    .await
    .unwrap();
    insurance_agent::seed::demo(&data).await.unwrap();
    let sessions = Sessions::new(insurance_agent::app::session_key(dir.path()).unwrap());
    let mut tenants = Vec::new();
    for slug in ["acme", "globex"] {
        let t = Tenant::new(TenantId::new_v4(), slug.parse().unwrap(), slug);
        let t = data.create_tenant(t).await.unwrap();
        let user = format!("{slug}-agent");
        data.memberships()
            .upsert(&Membership::new(
                UserId::new(user.clone()),
                t.id,
                Role::Member,
            ))
            .await
            .unwrap();
        tenants.push((
            t.id,
            sessions
                .issue(&user, t.id, Role::Member)
                .await
                .unwrap()
                .access,
        ));
    }
    // This example's own pieces: tenants and memberships read through
    // tenancy-sqlx, data through tenancy-diesel, all as the application role.
    let app = sqlx::PgPool::connect(&db.app_url).await.unwrap();
    let pipeline = pipeline(
        sessions.secret(),
        Arc::new(CachedStore::new(PgTenantStore::new(app.clone()))),
        Arc::new(PgMembershipStore::new(app)),
    );
    let seal = db.seal_key().await.unwrap();
    let pool = web::Data::new(AsyncTenantPool::connect(&db.app_url, 4, seal).unwrap());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let for_server = sessions.clone();
    let server = HttpServer::new(move || {
        App::new()
            .wrap(middleware(for_server.clone(), pipeline.clone()))
            .app_data(pool.clone())
            .configure(routes)
    })
    .workers(1)
    .disable_signals()
    .listen(listener)
    .unwrap()
    .run();
    actix_web::rt::spawn(server);
    let (b_id, b) = tenants.pop().unwrap();
    let (a_id, a) = tenants.pop().unwrap();
    World {
        addr,
        a,
        b,
        a_id,
        b_id,
        sessions,
        data,
        _dir: dir,
    }
}

/// How many records a list endpoint returns.
async fn listed(addr: SocketAddr, path: &str, token: Option<&str>) -> usize {
    let r = call(addr, "GET", path, token, None).await;
    assert_eq!(r.status, 200, "{path}: {}", r.text());
    r.json().as_array().unwrap().len()
}

fn new_agent(code: &str, name: &str) -> Value {
    json!({"agent_code": code, "name": name, "licence_number": "IRDA-1", "licence_expiry": "2030-01-31"})
}

async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> RawResponse {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
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
    let w = serve().await;
    let (addr, a, b) = (w.addr, w.a.as_str(), w.b.as_str());
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

    assert_eq!(listed(addr, "/agents", Some(a)).await, 1);
    assert_eq!(listed(addr, "/agents", Some(b)).await, 0);
    assert_eq!(listed(addr, "/customers", Some(b)).await, 0);
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
        Some(json!({"tenant_id": w.a_id.to_string(), "agent_id": agent_id, "first_name": "E", "last_name": "V"})),
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
    assert_eq!(listed(addr, "/customers", Some(b)).await, 0);
    assert_eq!(listed(addr, "/customers", Some(a)).await, 1);
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
    // No token: no tenant named, refused with a problem.
    let none = call(addr, "GET", "/agents", None, None).await;
    assert_eq!(none.status, 400);
    assert_eq!(none.json()["code"], "tenant-missing");
    // A token signed with another key: 401.
    let forged = Sessions::new(vec![7u8; 32])
        .issue("acme-agent", w.a_id, Role::Member)
        .await
        .unwrap()
        .access;
    let r = call(addr, "GET", "/agents", Some(&forged), None).await;
    assert_eq!(r.status, 401, "{}", r.text());
    // A valid token for a tenant the user is not a member of: 403.
    let stranger = w
        .sessions
        .issue("acme-agent", w.b_id, Role::Member)
        .await
        .unwrap()
        .access;
    let r = call(addr, "GET", "/agents", Some(&stranger), None).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.json()["code"], "not-a-member");
    assert_eq!(
        call(addr, "GET", "/customers/nope", Some(a), None)
            .await
            .status,
        400
    );
}

#[actix_web::test]
async fn both_applications_serve_the_same_tenants_and_tables() {
    let w = serve().await;
    let (addr, data) = (w.addr, &w.data);
    let sunrise = data
        .tenant_store()
        .by_slug(&"sunrise-insurance".parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    // Signed in as the reference application's demo admin (its token),
    // the demo agents are read through diesel.
    let (admin, _) = data
        .user_by_email("admin@sunrise.test")
        .await
        .unwrap()
        .unwrap();
    let token = w
        .sessions
        .issue(&admin, sunrise.id, Role::Admin)
        .await
        .unwrap()
        .access;
    let token = Some(token.as_str());
    let agents = call(addr, "GET", "/agents", token, None).await;
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
        token,
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
        token,
        Some(json!({"agent_id": agent_id, "first_name": "X", "last_name": "Y", "customer_type": "alien"})),
    )
    .await;
    assert_eq!(bad.status, 422, "{}", bad.text());
}
