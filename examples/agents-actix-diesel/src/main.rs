//! `agents-actix-diesel`: apply the reference application's schema (as the
//! owner) and serve its agents and customers (as the application role).
//!
//! ```text
//! DATABASE_OWNER_URL=postgres://owner@localhost/app DATABASE_URL=postgres://app@localhost/app \
//! INSURANCE_DATA_DIR=data cargo run -p agents-actix-diesel
//! curl -H "authorization: Bearer $TOKEN" localhost:8081/agents   # a token from insurance-agent's /auth/login
//! ```
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::str::FromStr;
use std::sync::Arc;

use actix_web::{App, HttpServer, web};
use agents_actix_diesel::{middleware, migrate, pipeline, routes};
use insurance_agent::auth::Sessions;
use tenancy_core::store::CachedStore;
use tenancy_diesel::AsyncTenantPool;
use tenancy_sqlx::{InvalidationListener, PgMembershipStore, PgTenantStore};

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
    // The tenants, memberships and sessions are the reference application's
    // (`insurance-agent` on the same database and data directory), read as
    // the application role.
    let app = sqlx::PgPool::connect(&app_url)
        .await
        .map_err(std::io::Error::other)?;
    let store = Arc::new(CachedStore::new(PgTenantStore::new(app.clone())));
    // Tenants suspended or offboarded elsewhere are refused at once.
    let _listener = InvalidationListener::start(&app, store.clone())
        .await
        .map_err(std::io::Error::other)?;
    let data_dir = std::env::var("INSURANCE_DATA_DIR").unwrap_or_else(|_| "data".into());
    let secret = insurance_agent::app::session_key(std::path::Path::new(&data_dir))
        .map_err(std::io::Error::other)?;
    let sessions = Sessions::new(secret.clone());
    let pipeline = pipeline(&secret, store, Arc::new(PgMembershipStore::new(app)));
    // The seal key proves our transactions were opened by the library: read
    // it as the owner when we have the owner's URL, else from TENANCY_SEAL_KEY.
    let seal = match std::env::var("DATABASE_OWNER_URL") {
        Ok(owner) => {
            use sqlx::Connection as _;
            let mut conn = sqlx::PgConnection::connect(&owner)
                .await
                .map_err(std::io::Error::other)?;
            tenancy_sqlx::migrate::seal_key(&mut conn)
                .await
                .map_err(std::io::Error::other)?
        }
        Err(_) => tenancy_diesel::rls::SealKey::from_hex(&env("TENANCY_SEAL_KEY")?)
            .map_err(std::io::Error::other)?,
    };
    let db =
        web::Data::new(AsyncTenantPool::connect(&app_url, 8, seal).map_err(std::io::Error::other)?);
    let bind = std::env::var("BIND").unwrap_or_else(|_| "127.0.0.1:8081".into());
    println!("agents-actix-diesel on http://{bind} (sign in with insurance-agent; send its token)");
    HttpServer::new(move || {
        App::new()
            .wrap(middleware(sessions.clone(), pipeline.clone()))
            .app_data(db.clone())
            .configure(routes)
    })
    .bind(bind)?
    .run()
    .await
}
