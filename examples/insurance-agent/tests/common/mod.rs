//! What the HTTP tests share: the app started on either backend, requests,
//! sign-in and problem assertions.
#![allow(dead_code, unreachable_pub)] // each test binary uses part of it

use std::net::SocketAddr;

use insurance_agent::app::{self, Config, Running, Security};
use insurance_agent::data::PgUrls;
use insurance_agent::seed::DEMO_PASSWORD;
use serde_json::{Value, json};
use tenancy_testkit::TestDb;
use tenancy_testkit::http::{RawResponse, request, send};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub struct App {
    pub _dir: tempfile::TempDir,
    /// On PostgreSQL: the test's own database.
    pub pg: Option<TestDb>,
    pub running: Running,
}

/// A fresh PostgreSQL database owned by `tenancy_owner`, as the app's URLs.
pub async fn fresh_database() -> (TestDb, PgUrls) {
    let db = TestDb::from_env()
        .unwrap()
        .fresh_database("insurance")
        .await
        .unwrap();
    let urls = PgUrls {
        app: db.app_url.clone(),
        owner: db.owner_url.clone(),
        listen: None,
    };
    (db, urls)
}

pub async fn start(backend: Backend) -> App {
    start_with(backend, None).await
}

pub async fn start_with(backend: Backend, plans: Option<std::path::PathBuf>) -> App {
    start_configured(backend, plans, Security::default()).await
}

/// An app with these security settings.
pub async fn start_configured(
    backend: Backend,
    plans: Option<std::path::PathBuf>,
    security: Security,
) -> App {
    start_full(
        backend,
        plans,
        security,
        app::Limits::default(),
        Default::default(),
    )
    .await
}

/// An app with these security settings and server limits.
#[allow(dead_code)]
pub async fn start_with_limits(backend: Backend, security: Security, limits: app::Limits) -> App {
    start_full(backend, None, security, limits, Default::default()).await
}

/// An app delivering its outbox to these webhooks.
#[allow(dead_code)]
pub async fn start_billing(
    backend: Backend,
    plans: Option<std::path::PathBuf>,
    billing: insurance_agent::billing::Billing,
) -> App {
    start_full(
        backend,
        plans,
        Security::default(),
        app::Limits::default(),
        billing,
    )
    .await
}

async fn start_full(
    backend: Backend,
    plans: Option<std::path::PathBuf>,
    security: Security,
    limits: app::Limits,
    billing: insurance_agent::billing::Billing,
) -> App {
    let dir = tempfile::tempdir().unwrap();
    let (pg, postgres) = match backend {
        Backend::Sqlite => (None, None),
        Backend::Postgres => {
            let (db, urls) = fresh_database().await;
            (Some(db), Some(urls))
        }
    };
    let running = app::start(&Config {
        data_dir: dir.path().to_owned(),
        bind: "127.0.0.1:0".parse().unwrap(),
        plans,
        postgres,
        redis: None,
        security,
        limits,
        billing,
    })
    .await
    .unwrap();
    let expected = if backend == Backend::Sqlite {
        "SQLite"
    } else {
        "PostgreSQL"
    };
    assert!(running.storage.contains(expected), "{}", running.storage);
    App {
        _dir: dir,
        pg,
        running,
    }
}

/// Every scenario runs twice: `sqlite::<name>` and `postgres::<name>`.
#[allow(unused_macros)]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Backend::Sqlite).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Backend::Postgres).await;
                }
            )*
        }
    };
}

pub async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> RawResponse {
    send(addr, &request(method, path, token, body.as_ref()))
        .await
        .unwrap()
}

pub async fn login(addr: SocketAddr, email: &str, tenant: &str) -> String {
    let r = call(
        addr,
        "POST",
        "/auth/login",
        None,
        Some(json!({"email": email, "password": DEMO_PASSWORD, "tenant": tenant})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["token"].as_str().unwrap().to_owned()
}

pub fn assert_problem(r: &RawResponse, status: u16, code: &str) {
    assert_eq!(r.status, status, "{}", r.text());
    assert_eq!(
        r.header("content-type"),
        Some("application/problem+json"),
        "{}",
        r.text()
    );
    assert_eq!(r.json()["code"], code, "{}", r.text());
}

/// The tenant named `slug`, as the app's store has it now.
pub async fn tenant(app: &App, slug: &str) -> std::sync::Arc<tenancy_core::Tenant> {
    use tenancy_core::store::TenantStore;
    app.running
        .data
        .store()
        .by_slug(&slug.parse().unwrap())
        .await
        .unwrap()
        .unwrap()
}

/// `POST /auth/refresh` with `refresh_token`.
pub async fn refresh(addr: SocketAddr, refresh_token: &str) -> RawResponse {
    let body = json!({ "refresh_token": refresh_token });
    call(addr, "POST", "/auth/refresh", None, Some(body)).await
}
