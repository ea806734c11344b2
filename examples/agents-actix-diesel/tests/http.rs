//! The actix-web + tenancy-diesel example over real HTTP against the test
//! PostgreSQL (application role under row-level security).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use actix_web::{App, HttpServer, ResponseError, web};
use agents_actix_diesel::{AppError, middleware, pipeline, routes};
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use insurance_agent::auth::Sessions;
use insurance_agent::data::{Data, PgUrls};
use insurance_agent::seed::DemoTenant;
use serde_json::{Value, json};
use tenancy_core::store::{CachedStore, TenantStore};
use tenancy_core::{Role, TenantContext, TenantId};
use tenancy_diesel::AsyncTenantPool;
use tenancy_sqlx::{PgMembershipStore, PgTenantStore};
use tenancy_testkit::TestDb;
use tenancy_testkit::http::{RawResponse, send};

/// Acme, laid out as the reference application's seeder lays out a tenant:
/// every manager and agent gets an agent record (with three customers),
/// and an agent's manager is the last manager listed before them. So
/// `solo` (ACME-001) has no manager, `boss` (ACME-002) manages `rep`
/// (ACME-003), and the admin and the viewer have no agent record.
const ACME: DemoTenant<'static> = DemoTenant {
    slug: "acme",
    name: "Acme",
    kind: "independent_agent",
    plan: "professional",
    parent: None,
    users: &[
        ("admin@acme.test", "Ada Admin", "tenant_admin"),
        ("solo@acme.test", "Sol Solo", "agent"),
        ("boss@acme.test", "Bo Boss", "manager"),
        ("rep@acme.test", "Rae Rep", "agent"),
        ("viewer@acme.test", "Vi Viewer", "viewer"),
    ],
};

/// Globex: an admin and one agent (GLOBEX-001).
const GLOBEX: DemoTenant<'static> = DemoTenant {
    slug: "globex",
    name: "Globex",
    kind: "independent_agent",
    plan: "professional",
    parent: None,
    users: &[
        ("admin@globex.test", "Gil Admin", "tenant_admin"),
        ("agent@globex.test", "Gia Agent", "agent"),
    ],
};

/// What a test needs: this example served over a fresh database that the
/// reference application laid out (schema, strict audit) and seeded with its
/// demo, plus the tenants [`ACME`] and [`GLOBEX`].
struct World {
    addr: SocketAddr,
    /// Session tokens by user email (issued as the reference app would at
    /// sign-in).
    tokens: HashMap<&'static str, String>,
    acme: TenantId,
    globex: TenantId,
    sessions: Sessions,
    data: Data,
    _dir: tempfile::TempDir,
}

impl World {
    /// The session token of the user with `email`.
    fn token(&self, email: &str) -> Option<&str> {
        Some(self.tokens[email].as_str())
    }

    /// GET `path` as `email`.
    async fn get(&self, path: &str, email: &str) -> RawResponse {
        call(self.addr, "GET", path, self.token(email), None).await
    }

    /// POST `body` to `path` as `email`.
    async fn post(&self, path: &str, email: &str, body: Value) -> RawResponse {
        call(self.addr, "POST", path, self.token(email), Some(body)).await
    }

    /// Acme's active agent ids by agent code (as its admin sees them).
    async fn acme_agents(&self) -> HashMap<String, String> {
        let r = self.get("/agents", "admin@acme.test").await;
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                (
                    a["agent_code"].as_str().unwrap().to_owned(),
                    a["id"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }

    /// The ids of the active customers of acme's agent `agent_id`.
    async fn customers_of(&self, agent_id: &str) -> Vec<String> {
        let r = self.get("/customers", "admin@acme.test").await;
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["agent_id"] == agent_id)
            .map(|c| c["id"].as_str().unwrap().to_owned())
            .collect()
    }

    /// Deactivates (soft-deletes) a row of acme's `table` through the
    /// reference application, as its `DELETE` routes do.
    async fn deactivate(&self, table: &str, id: &str) {
        let acme = self
            .data
            .tenant_store()
            .by_id(self.acme)
            .await
            .unwrap()
            .unwrap();
        let mut tx = self
            .data
            .begin_write(&TenantContext::new((*acme).clone()))
            .await
            .unwrap();
        let id: insurance_agent::id::Id = id.parse().unwrap();
        let sql = format!("UPDATE {table} SET active = FALSE WHERE id = $1");
        let changed = insurance_agent::on!(tx, sqlx::query(&sql).bind(id), execute).unwrap();
        tx.commit().await.unwrap();
        assert_eq!(changed, 1, "{table} {id}");
    }
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
    let mut tokens = HashMap::new();
    let mut ids = Vec::new();
    for d in [ACME, GLOBEX] {
        let t = insurance_agent::seed::tenant(&data, &d, None)
            .await
            .unwrap();
        for (email, _, role) in d.users {
            let (user, _) = data.user_by_email(email).await.unwrap().unwrap();
            let (role, _) = insurance_agent::api::session::role_from_name(role).unwrap();
            let token = sessions.issue(&user, t.id, role).await.unwrap().access;
            tokens.insert(*email, token);
        }
        ids.push(t.id);
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
    World {
        addr,
        tokens,
        acme: ids[0],
        globex: ids[1],
        sessions,
        data,
        _dir: dir,
    }
}

/// How many records a list endpoint returns to `email`.
async fn listed(w: &World, path: &str, email: &str) -> usize {
    let r = w.get(path, email).await;
    assert_eq!(r.status, 200, "{path} as {email}: {}", r.text());
    r.json().as_array().unwrap().len()
}

fn new_agent(code: &str, name: &str) -> Value {
    json!({"agent_code": code, "name": name, "licence_number": "IRDA-1", "licence_expiry": "2030-01-31"})
}

fn new_customer(agent_id: &str, last_name: &str) -> Value {
    json!({"agent_id": agent_id, "first_name": "Ravi", "last_name": last_name})
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

/// A role refusal: 403 problem+json `app.forbidden`.
fn assert_forbidden(r: &RawResponse) {
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    assert_eq!(r.json()["code"], "app.forbidden", "{}", r.text());
}

/// A problem whose body shows none of the database's own text.
fn assert_plain(body: &str) {
    let lower = body.to_lowercase();
    for leak in [
        "constraint",
        "violates",
        "duplicate key",
        "foreign key",
        "_fkey",
        "_key",
        "_idx",
        "agents",
        "customers",
        "public.",
        "insert",
        "select",
        "sql",
        "diesel",
    ] {
        assert!(!lower.contains(leak), "{leak:?} in {body}");
    }
}

#[actix_web::test]
async fn tenants_see_only_their_own_agents_and_customers() {
    let w = serve().await;
    let (acme, globex) = ("admin@acme.test", "admin@globex.test");
    let agent = w.post("/agents", acme, new_agent("A1", "Asha")).await;
    assert_eq!(agent.status, 201, "{}", agent.text());
    let agent_id = agent.json()["id"].as_str().unwrap().to_owned();
    let customer = w
        .post("/customers", acme, new_customer(&agent_id, "Kumar"))
        .await;
    assert_eq!(customer.status, 201, "{}", customer.text());
    let id = customer.json()["id"].as_str().unwrap().to_owned();

    assert_eq!(listed(&w, "/agents", acme).await, 4);
    assert_eq!(listed(&w, "/agents", globex).await, 1);
    assert_eq!(listed(&w, "/customers", acme).await, 10);
    assert_eq!(listed(&w, "/customers", globex).await, 3);
    for path in [format!("/customers/{id}"), format!("/agents/{agent_id}")] {
        let theirs = w.get(&path, globex).await;
        assert_eq!(theirs.status, 404, "{path}: {}", theirs.text());
        assert_eq!(
            theirs.header("content-type"),
            Some("application/problem+json")
        );
        assert_eq!(w.get(&path, acme).await.status, 200, "{path}");
    }

    // A body claiming another tenant: refused by the write guard, before SQL.
    let spoof = w
        .post(
            "/customers",
            globex,
            json!({"tenant_id": w.acme.to_string(), "agent_id": agent_id, "first_name": "E", "last_name": "V"}),
        )
        .await;
    assert_eq!(spoof.status, 403, "{}", spoof.text());
    assert_eq!(spoof.json()["code"], "tenant-mismatch");
    // Another tenant's agent: not visible, so refused.
    let foreign = w
        .post("/customers", globex, new_customer(&agent_id, "V"))
        .await;
    assert_eq!(foreign.status, 422, "{}", foreign.text());
    assert_plain(&foreign.text());
    // Nothing of globex's was written, and acme still has exactly its own rows.
    assert_eq!(listed(&w, "/customers", globex).await, 3);
    assert_eq!(listed(&w, "/customers", acme).await, 10);
    // Duplicate agent code within a tenant: 409; the same code in another tenant: fine.
    assert_eq!(
        w.post("/agents", acme, new_agent("A1", "X")).await.status,
        409
    );
    assert_eq!(
        w.post("/agents", globex, new_agent("A1", "X")).await.status,
        201
    );
    // No token: no tenant named, refused with a problem.
    let none = call(w.addr, "GET", "/agents", None, None).await;
    assert_eq!(none.status, 400);
    assert_eq!(none.json()["code"], "tenant-missing");
    // A token signed with another key: 401.
    let (admin, _) = w.data.user_by_email(acme).await.unwrap().unwrap();
    let forged = Sessions::new(vec![7u8; 32])
        .issue(&admin, w.acme, Role::Admin)
        .await
        .unwrap()
        .access;
    let r = call(w.addr, "GET", "/agents", Some(&forged), None).await;
    assert_eq!(r.status, 401, "{}", r.text());
    // A valid token for a tenant the user is not a member of: 403.
    let stranger = w
        .sessions
        .issue(&admin, w.globex, Role::Admin)
        .await
        .unwrap()
        .access;
    let r = call(w.addr, "GET", "/agents", Some(&stranger), None).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.json()["code"], "not-a-member");
    for path in ["/customers/nope", "/agents/nope"] {
        assert_eq!(w.get(path, acme).await.status, 400, "{path}");
    }
}

#[actix_web::test]
async fn only_tenant_admins_and_managers_add_agents() {
    let w = serve().await;
    // Agents and viewers are refused, whatever the body.
    for who in ["rep@acme.test", "solo@acme.test", "viewer@acme.test"] {
        assert_forbidden(&w.post("/agents", who, new_agent("X1", "Xu")).await);
    }
    // Nothing was added.
    assert_eq!(listed(&w, "/agents", "admin@acme.test").await, 3);
    // Tenant admins add agents anywhere (control).
    let ids = w.acme_agents().await;
    let (solo, boss, rep) = (&ids["ACME-001"], &ids["ACME-002"], &ids["ACME-003"]);
    let mut by_admin = new_agent("X2", "Xi");
    by_admin["manager_id"] = json!(solo);
    let r = w.post("/agents", "admin@acme.test", by_admin).await;
    assert_eq!(r.status, 201, "{}", r.text());
    // A manager's new agent joins their team: under them by default...
    let r = w
        .post("/agents", "boss@acme.test", new_agent("X3", "Xa"))
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let added = r.json()["id"].as_str().unwrap().to_owned();
    let seen = w.get(&format!("/agents/{added}"), "boss@acme.test").await;
    assert_eq!(seen.status, 200, "{}", seen.text());
    assert_eq!(seen.json()["manager_id"].as_str(), Some(boss.as_str()));
    // ...or under someone of their team...
    let mut under_rep = new_agent("X4", "Xo");
    under_rep["manager_id"] = json!(rep);
    let r = w.post("/agents", "boss@acme.test", under_rep).await;
    assert_eq!(r.status, 201, "{}", r.text());
    // ...but never under someone else's.
    let mut under_solo = new_agent("X5", "Xe");
    under_solo["manager_id"] = json!(solo);
    assert_forbidden(&w.post("/agents", "boss@acme.test", under_solo).await);
    assert_eq!(listed(&w, "/agents", "admin@acme.test").await, 6);
}

#[actix_web::test]
async fn agents_see_themselves_managers_their_team_admins_and_viewers_all() {
    let w = serve().await;
    let ids = w.acme_agents().await;
    let (solo, boss, rep) = (&ids["ACME-001"], &ids["ACME-002"], &ids["ACME-003"]);
    for (who, count) in [
        ("admin@acme.test", 3),
        ("viewer@acme.test", 3),
        ("boss@acme.test", 2),
        ("rep@acme.test", 1),
        ("solo@acme.test", 1),
    ] {
        assert_eq!(listed(&w, "/agents", who).await, count, "{who}");
    }
    // By id: outside the caller's reach is 404, as if it did not exist.
    for (who, id, status) in [
        ("boss@acme.test", rep, 200),
        ("boss@acme.test", solo, 404),
        ("rep@acme.test", rep, 200),
        ("rep@acme.test", boss, 404),
        ("solo@acme.test", rep, 404),
        ("admin@acme.test", solo, 200),
        ("viewer@acme.test", solo, 200),
    ] {
        let r = w.get(&format!("/agents/{id}"), who).await;
        assert_eq!(r.status, status, "{who} {id}: {}", r.text());
    }
}

#[actix_web::test]
async fn customers_are_read_by_their_agent_team_and_admins_and_by_viewers_when_shared() {
    let w = serve().await;
    let ids = w.acme_agents().await;
    let (solo, rep) = (&ids["ACME-001"], &ids["ACME-003"]);
    for (who, count) in [
        ("admin@acme.test", 9),
        ("boss@acme.test", 6),
        ("rep@acme.test", 3),
        ("solo@acme.test", 3),
        ("viewer@acme.test", 0),
    ] {
        assert_eq!(listed(&w, "/customers", who).await, count, "{who}");
    }
    let solos = w.customers_of(solo).await[0].clone();
    let reps = w.customers_of(rep).await[0].clone();
    for (who, id, status) in [
        ("solo@acme.test", &solos, 200),
        ("admin@acme.test", &solos, 200),
        ("rep@acme.test", &solos, 404),
        ("boss@acme.test", &solos, 404),
        ("viewer@acme.test", &solos, 404),
        ("boss@acme.test", &reps, 200),
        ("rep@acme.test", &reps, 200),
        ("solo@acme.test", &reps, 404),
    ] {
        let r = w.get(&format!("/customers/{id}"), who).await;
        assert_eq!(r.status, status, "{who} {id}: {}", r.text());
    }
    // A customer shared tenant-wide is readable by every member.
    let mut body = new_customer(solo, "Shared");
    body["shared"] = json!(true);
    let r = w.post("/customers", "solo@acme.test", body).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let shared = r.json()["id"].as_str().unwrap().to_owned();
    for who in ["rep@acme.test", "viewer@acme.test", "boss@acme.test"] {
        let r = w.get(&format!("/customers/{shared}"), who).await;
        assert_eq!(r.status, 200, "{who}: {}", r.text());
        assert_eq!(r.json()["shared"], true);
    }
    assert_eq!(listed(&w, "/customers", "viewer@acme.test").await, 1);
    assert_eq!(listed(&w, "/customers", "rep@acme.test").await, 4);
}

#[actix_web::test]
async fn customers_are_added_within_the_callers_reach() {
    let w = serve().await;
    let ids = w.acme_agents().await;
    let (solo, boss, rep) = (&ids["ACME-001"], &ids["ACME-002"], &ids["ACME-003"]);
    // Viewers read only.
    assert_forbidden(
        &w.post("/customers", "viewer@acme.test", new_customer(solo, "V"))
            .await,
    );
    // Agents add to their own book only, managers to their team's.
    assert_forbidden(
        &w.post("/customers", "rep@acme.test", new_customer(solo, "R"))
            .await,
    );
    assert_forbidden(
        &w.post("/customers", "rep@acme.test", new_customer(boss, "R"))
            .await,
    );
    assert_forbidden(
        &w.post("/customers", "boss@acme.test", new_customer(solo, "B"))
            .await,
    );
    assert_eq!(listed(&w, "/customers", "admin@acme.test").await, 9);
    // The allowed ones (control): an agent for themselves (by default),
    // a manager for their team, an admin for anyone.
    let own = w
        .post(
            "/customers",
            "rep@acme.test",
            json!({"first_name": "Ravi", "last_name": "Own"}),
        )
        .await;
    assert_eq!(own.status, 201, "{}", own.text());
    let own = own.json()["id"].as_str().unwrap().to_owned();
    let r = w.get(&format!("/customers/{own}"), "rep@acme.test").await;
    assert_eq!(r.json()["agent_id"].as_str(), Some(rep.as_str()));
    for (who, agent) in [
        ("boss@acme.test", rep),
        ("boss@acme.test", boss),
        ("admin@acme.test", solo),
    ] {
        let r = w.post("/customers", who, new_customer(agent, "Ok")).await;
        assert_eq!(r.status, 201, "{who} for {agent}: {}", r.text());
    }
    assert_eq!(listed(&w, "/customers", "admin@acme.test").await, 13);
    // An admin is no agent: they name one.
    let r = w
        .post(
            "/customers",
            "admin@acme.test",
            json!({"first_name": "A", "last_name": "B"}),
        )
        .await;
    assert_eq!(r.status, 422, "{}", r.text());
    // Empty names are refused.
    let r = w
        .post(
            "/customers",
            "admin@acme.test",
            json!({"agent_id": solo, "first_name": " ", "last_name": "B"}),
        )
        .await;
    assert_eq!(r.status, 422, "{}", r.text());
}

#[actix_web::test]
async fn deactivated_customers_and_agents_are_not_found_by_id() {
    let w = serve().await;
    let ids = w.acme_agents().await;
    let (solo, rep) = (&ids["ACME-001"], &ids["ACME-003"]);
    let customer = w.customers_of(solo).await[0].clone();
    let path = format!("/customers/{customer}");
    // Readable while active (control)...
    for who in ["solo@acme.test", "admin@acme.test"] {
        assert_eq!(w.get(&path, who).await.status, 200, "{who}");
    }
    // ...404 by id once the reference application deactivated it, and
    // gone from lists, for its agent and for the tenant admin alike.
    w.deactivate("customers", &customer).await;
    for who in ["solo@acme.test", "admin@acme.test"] {
        let r = w.get(&path, who).await;
        assert_eq!(r.status, 404, "{who}: {}", r.text());
        assert_eq!(r.json()["code"], "app.not-found");
    }
    assert_eq!(listed(&w, "/customers", "solo@acme.test").await, 2);
    assert_eq!(listed(&w, "/customers", "admin@acme.test").await, 8);

    // The same for agents, and a deactivated agent takes no new customers.
    let path = format!("/agents/{rep}");
    assert_eq!(w.get(&path, "admin@acme.test").await.status, 200);
    w.deactivate("agents", rep).await;
    for who in ["admin@acme.test", "viewer@acme.test", "boss@acme.test"] {
        let r = w.get(&path, who).await;
        assert_eq!(r.status, 404, "{who}: {}", r.text());
    }
    assert_eq!(listed(&w, "/agents", "admin@acme.test").await, 2);
    let r = w
        .post("/customers", "admin@acme.test", new_customer(rep, "Late"))
        .await;
    assert_eq!(r.status, 422, "{}", r.text());
    // Their own account no longer acts as an agent.
    assert_eq!(listed(&w, "/customers", "rep@acme.test").await, 0);
}

#[actix_web::test]
async fn database_refusals_are_answered_without_database_text() {
    let w = serve().await;
    let admin = "admin@acme.test";
    let ids = w.acme_agents().await;
    // A duplicate agent code: 409 with a plain message.
    let dup = w
        .post("/agents", admin, new_agent("ACME-001", "Twin"))
        .await;
    assert_eq!(dup.status, 409, "{}", dup.text());
    assert_eq!(dup.header("content-type"), Some("application/problem+json"));
    assert_eq!(dup.json()["code"], "app.conflict");
    assert_eq!(
        dup.json()["detail"],
        "an agent with this agent_code already exists"
    );
    assert_plain(&dup.text());
    // A manager that does not exist here (unknown, or another tenant's
    // agent): 422 with a plain message.
    let globex_agent = {
        let r = w.get("/agents", "admin@globex.test").await;
        r.json()[0]["id"].as_str().unwrap().to_owned()
    };
    for manager in [uuid::Uuid::new_v4().to_string(), globex_agent] {
        let mut body = new_agent("ACME-900", "Orphan");
        body["manager_id"] = json!(manager);
        let r = w.post("/agents", admin, body).await;
        assert_eq!(r.status, 422, "{}", r.text());
        assert_eq!(r.json()["code"], "app.invalid");
        assert_eq!(
            r.json()["detail"],
            "manager_id is not an agent of this tenant"
        );
        assert_plain(&r.text());
    }
    // Neither refusal wrote anything; a valid manager is accepted (control).
    assert_eq!(listed(&w, "/agents", admin).await, 3);
    let mut body = new_agent("ACME-900", "Adopted");
    body["manager_id"] = json!(ids["ACME-002"]);
    assert_eq!(w.post("/agents", admin, body).await.status, 201);
}

/// The body of `e`'s response.
async fn answered(e: AppError) -> (u16, Option<String>, String) {
    let response = e.error_response();
    let status = response.status().as_u16();
    let retry = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = actix_web::body::to_bytes(response.into_body())
        .await
        .unwrap();
    (status, retry, String::from_utf8(body.to_vec()).unwrap())
}

#[actix_web::test]
async fn every_database_error_maps_to_a_plain_problem() {
    let db_error = |kind, text: &str| {
        AppError::from(DieselError::DatabaseError(kind, Box::new(text.to_owned())))
    };
    // Check violations: 422 with a plain message.
    let (status, _, body) = answered(db_error(
        DatabaseErrorKind::CheckViolation,
        "new row for relation \"agents\" violates check constraint \"agents_experience_years_check\"",
    ))
    .await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body.contains("a value is outside its allowed range"),
        "{body}"
    );
    assert_plain(&body);
    // Unique and foreign-key violations of constraints not known by name:
    // 409 and 422 with generic plain messages.
    for (kind, code, detail) in [
        (
            DatabaseErrorKind::UniqueViolation,
            409,
            "a record with the same unique value exists",
        ),
        (
            DatabaseErrorKind::ForeignKeyViolation,
            422,
            "a referenced record does not exist",
        ),
    ] {
        let (status, _, body) = answered(db_error(
            kind,
            "duplicate key value violates unique constraint \"customers_pkey\"",
        ))
        .await;
        assert_eq!(status, code, "{body}");
        assert!(body.contains(detail), "{body}");
        assert_plain(&body);
    }
    // Anything else: 500 with a generic body, the same through the tenancy
    // error a failed commit arrives as.
    for e in [
        db_error(
            DatabaseErrorKind::SerializationFailure,
            "could not serialize access due to concurrent update on \"customers\"",
        ),
        db_error(
            DatabaseErrorKind::NotNullViolation,
            "null value in column \"agent_code\" of relation \"agents\" violates not-null constraint",
        ),
        AppError::from(tenancy_diesel::Error::Database(
            DieselError::QueryBuilderError("SELECT broken FROM agents".into()),
        )),
        AppError::from(tenancy_diesel::Error::Begin(
            DieselError::BrokenTransactionManager,
        )),
    ] {
        let (status, _, body) = answered(e).await;
        assert_eq!(status, 500, "{body}");
        assert!(
            body.contains("the request failed; the error was logged"),
            "{body}"
        );
        assert_plain(&body);
    }
    // No connection: 503, retry.
    let (status, retry, body) = answered(AppError::from(tenancy_diesel::Error::Pool(
        "timed out waiting for postgres://app@db/agents".into(),
    )))
    .await;
    assert_eq!((status, retry.as_deref()), (503, Some("1")), "{body}");
    assert_plain(&body);
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
