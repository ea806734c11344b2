//! Test support for tenancy-rs.
//!
//! `scripts/test` starts a throwaway PostgreSQL and exports three URLs; this
//! crate reads them so that every test connects the same way:
//!
//! | variable | role | use |
//! |---|---|---|
//! | `TENANCY_TEST_ADMIN_URL` | `postgres` (superuser) | creating databases, inspecting or killing backends |
//! | `TENANCY_TEST_OWNER_URL` | `tenancy_owner` | owns the schema, runs migrations, takes checksums |
//! | `TENANCY_TEST_APP_URL` | `tenancy_app` | the application: not superuser, not BYPASSRLS, owns nothing |
//! | `TENANCY_TEST_OPS_URL` | `tenancy_ops` | BYPASSRLS operations role for the audited cross-tenant path |
//! | `TENANCY_TEST_REDIS_URL` | — | a Redis server on loopback, no persistence |
//! | `TENANCY_TEST_PGBOUNCER_APP_URL` | `tenancy_app` via pgbouncer | transaction pooling mode, 1 server connection |
//! | `TENANCY_TEST_OIDC_SCRIPT` | — | the OpenID provider script beside its `node_modules` ([`oidc`]) |
//! | `TENANCY_TEST_OIDC_A_URL`, `…_B_URL` | — | two running issuers (clients `tenant-a-app:secret-a`, `tenant-b-app:secret-b`) |
//!
//! [`isolation`] is the property suite every data path runs (sqlx, diesel,
//! each isolation model).
//!
//! Tests that need a database fail (they do not skip) when the variables are
//! missing, with a message saying to run `scripts/test`.

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

pub mod http;
pub mod invite;
pub mod isolation;
pub mod membership;
pub mod memory;
pub mod monthly;
pub mod oidc;
pub mod outbox;
pub mod rate;
pub mod signin;
pub mod store;
pub mod subject;
pub mod web;
pub mod webhook;

/// The environment variable holding the superuser URL.
pub const ADMIN_URL_VAR: &str = "TENANCY_TEST_ADMIN_URL";
/// The environment variable holding the owner role's URL.
pub const OWNER_URL_VAR: &str = "TENANCY_TEST_OWNER_URL";
/// The environment variable holding the application role's URL.
pub const APP_URL_VAR: &str = "TENANCY_TEST_APP_URL";
/// The environment variable holding the operations (BYPASSRLS) role's URL.
pub const OPS_URL_VAR: &str = "TENANCY_TEST_OPS_URL";
/// The environment variable holding the Redis URL.
pub const REDIS_URL_VAR: &str = "TENANCY_TEST_REDIS_URL";

/// The Redis URL exported by `scripts/test`.
pub fn redis_url() -> Result<String, TestkitError> {
    var(REDIS_URL_VAR)
}

/// The environment variable holding the application role's URL through pgbouncer.
pub const PGBOUNCER_APP_URL_VAR: &str = "TENANCY_TEST_PGBOUNCER_APP_URL";

/// Why the test database cannot be reached.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TestkitError {
    /// A URL variable is not set: the suite was not started by `scripts/test`.
    #[error("{0} is not set: run the suite with scripts/test, which starts PostgreSQL and sets it")]
    MissingVar(&'static str),
    /// Connecting failed.
    #[error("cannot connect to the test database: {0}")]
    Connect(#[from] sqlx::Error),
    /// The process's memory figures cannot be read (not Linux, or `/proc`
    /// not mounted).
    #[error("cannot measure memory: {0}")]
    Memory(String),
}

/// The connection URLs of the throwaway database.
#[derive(Debug, Clone)]
pub struct TestDb {
    /// Superuser.
    pub admin_url: String,
    /// Owner role.
    pub owner_url: String,
    /// Application role.
    pub app_url: String,
    /// Operations role (BYPASSRLS, not owner).
    pub ops_url: String,
    /// Application role through pgbouncer in transaction mode.
    pub pgbouncer_app_url: String,
}

/// `url` with its database name replaced by `database`.
fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    // The path starts at the first '/' after the authority (`scheme://`).
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let host_end = base[authority_start..]
        .find('/')
        .map_or(base.len(), |i| authority_start + i);
    let mut out = format!("{}/{database}", &base[..host_end]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

fn var(name: &'static str) -> Result<String, TestkitError> {
    std::env::var(name).map_err(|_| TestkitError::MissingVar(name))
}

impl TestDb {
    /// Reads the URLs exported by `scripts/test`.
    pub fn from_env() -> Result<Self, TestkitError> {
        Ok(Self {
            admin_url: var(ADMIN_URL_VAR)?,
            owner_url: var(OWNER_URL_VAR)?,
            app_url: var(APP_URL_VAR)?,
            ops_url: var(OPS_URL_VAR)?,
            pgbouncer_app_url: var(PGBOUNCER_APP_URL_VAR)?,
        })
    }

    async fn pool(url: &str, max: u32) -> Result<PgPool, TestkitError> {
        let opts: PgConnectOptions = url.parse()?;
        Ok(PgPoolOptions::new()
            .max_connections(max)
            .connect_with(opts)
            .await?)
    }

    /// A pool connected as the application role.
    pub async fn app_pool(&self, max_connections: u32) -> Result<PgPool, TestkitError> {
        Self::pool(&self.app_url, max_connections).await
    }

    /// A pool connected as the owner role.
    pub async fn owner_pool(&self, max_connections: u32) -> Result<PgPool, TestkitError> {
        Self::pool(&self.owner_url, max_connections).await
    }

    /// A pool connected as the operations role.
    pub async fn ops_pool(&self, max_connections: u32) -> Result<PgPool, TestkitError> {
        Self::pool(&self.ops_url, max_connections).await
    }

    /// Creates a fresh schema owned by `tenancy_owner`, usable by the
    /// application and operations roles, so that tests running in parallel
    /// never share tables. Returns its name. The sealed binding is installed
    /// first (tenant tables' policies call `tenancy.tenant()`).
    pub async fn fresh_schema(&self, prefix: &str) -> Result<String, TestkitError> {
        self.seal_key().await?;
        let name = format!("{prefix}_{}", uuid::Uuid::new_v4().simple());
        let owner = self.owner_pool(1).await?;
        sqlx::raw_sql(&format!(
            "CREATE SCHEMA \"{name}\"; GRANT USAGE ON SCHEMA \"{name}\" TO tenancy_app, tenancy_ops"
        ))
        .execute(&owner)
        .await?;
        owner.close().await;
        Ok(name)
    }

    /// Creates a fresh database owned by `tenancy_owner` (for an
    /// application that lays out its own schema in `public`) and returns the
    /// same roles' URLs pointing at it. The pgbouncer URL is left as is
    /// (pgbouncer only knows the default database).
    pub async fn fresh_database(&self, prefix: &str) -> Result<TestDb, TestkitError> {
        let name = format!("{prefix}_{}", uuid::Uuid::new_v4().simple());
        let admin = self.admin_pool(1).await?;
        // As for the main database: no temporary tables for the application
        // role (a new database grants TEMPORARY to PUBLIC).
        sqlx::raw_sql(&format!("CREATE DATABASE \"{name}\" OWNER tenancy_owner"))
            .execute(&admin)
            .await?;
        sqlx::raw_sql(&format!(
            "REVOKE TEMPORARY ON DATABASE \"{name}\" FROM PUBLIC"
        ))
        .execute(&admin)
        .await?;
        admin.close().await;
        let at = |url: &str| with_database(url, &name);
        let db = TestDb {
            admin_url: at(&self.admin_url),
            owner_url: at(&self.owner_url),
            app_url: at(&self.app_url),
            ops_url: at(&self.ops_url),
            pgbouncer_app_url: self.pgbouncer_app_url.clone(),
        };
        // Its own sealed binding, with its own key.
        db.seal_key().await?;
        Ok(db)
    }

    /// The database's seal key ([`tenancy_core::rls::SealKey`]), installing
    /// the sealed binding ([`tenancy_core::rls::SEAL_SQL`]) as the owner
    /// first when it is missing. Serialised with the system migrations.
    pub async fn seal_key(&self) -> Result<tenancy_core::rls::SealKey, TestkitError> {
        use sqlx::Connection as _;
        let mut owner = sqlx::PgConnection::connect(&self.owner_url).await?;
        sqlx::query("SELECT pg_advisory_lock(hashtext('tenancy.migrate'))")
            .execute(&mut owner)
            .await?;
        let installed: bool =
            sqlx::query_scalar("SELECT to_regprocedure('tenancy.tenant()') IS NOT NULL")
                .fetch_one(&mut owner)
                .await?;
        if !installed {
            sqlx::raw_sql(tenancy_core::rls::SEAL_SQL)
                .execute(&mut owner)
                .await?;
        }
        let key: Vec<u8> = sqlx::query_scalar("SELECT key FROM tenancy.seal_key WHERE id")
            .fetch_one(&mut owner)
            .await?;
        owner.close().await?;
        tenancy_core::rls::SealKey::from_slice(&key)
            .map_err(|e| TestkitError::Connect(sqlx::Error::Protocol(e.to_string())))
    }

    /// [`TestDb::seal_key`] from synchronous code (or from inside a runtime):
    /// it runs on a thread and runtime of its own.
    pub fn seal_key_blocking(&self) -> Result<tenancy_core::rls::SealKey, TestkitError> {
        let env = self.clone();
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| TestkitError::Connect(sqlx::Error::Io(e)))?
                .block_on(env.seal_key())
        })
        .join()
        .unwrap_or_else(|_| Err(TestkitError::Connect(sqlx::Error::PoolClosed)))
    }

    /// The same roles on `tenancy_loose`, the database `scripts/with-db`
    /// creates where the application role keeps `TEMPORARY` (pool-hygiene
    /// tests only), directly and through pgbouncer.
    pub fn loose(&self) -> TestDb {
        let at = |url: &str| with_database(url, "tenancy_loose");
        TestDb {
            admin_url: at(&self.admin_url),
            owner_url: at(&self.owner_url),
            app_url: at(&self.app_url),
            ops_url: at(&self.ops_url),
            pgbouncer_app_url: at(&self.pgbouncer_app_url),
        }
    }

    /// A pool connected as the superuser.
    pub async fn admin_pool(&self, max_connections: u32) -> Result<PgPool, TestkitError> {
        Self::pool(&self.admin_url, max_connections).await
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn with_database_replaces_only_the_database_name() {
        assert_eq!(
            super::with_database("postgres://u:p@127.0.0.1:5433/tenancy", "x_1"),
            "postgres://u:p@127.0.0.1:5433/x_1"
        );
        assert_eq!(
            super::with_database("postgres://u:p@h/tenancy?sslmode=disable", "x"),
            "postgres://u:p@h/x?sslmode=disable"
        );
        assert_eq!(super::with_database("postgres://h", "x"), "postgres://h/x");
    }
}
