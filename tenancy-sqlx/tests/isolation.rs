//! The shared isolation property suite over `TenantDb`, as the application role.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod common;

use std::sync::Arc;

use common::SqlxTarget;
use tenancy_core::{Tenant, TenantContext, TenantId};
use tenancy_sqlx::TenantDb;
use tenancy_sqlx::rls::{ApplyTenantTable, TenantTable};
use tenancy_testkit::TestDb;
use tenancy_testkit::isolation::{self, TABLES};

/// Creates the suite's tables in a fresh schema, isolated with `TenantTable`.
pub async fn setup(db: &TestDb) -> String {
    let schema = db.fresh_schema("iso").await.unwrap();
    let owner = db.owner_pool(1).await.unwrap();
    let mut conn = owner.acquire().await.unwrap();
    for stmt in isolation::create_tables_sql(&schema) {
        sqlx::query(&stmt).execute(&mut *conn).await.unwrap();
    }
    for t in TABLES {
        TenantTable::new(t)
            .schema(&schema)
            .index_on(["id"])
            .grant_to("tenancy_app")
            .apply(&mut conn)
            .await
            .unwrap();
    }
    schema
}

/// The suite's target over `schema`'s tables, through `url` with a pool of
/// `connections` (fewer than tenants: physical connections are shared).
/// `persistent`: named prepared statements (off behind pgbouncer).
async fn shared_target(
    env: &TestDb,
    url: &str,
    schema: &str,
    connections: u32,
    persistent: bool,
) -> Arc<SqlxTarget> {
    let pool = TenantDb::pool_options()
        .max_connections(connections)
        .connect(url)
        .await
        .unwrap();
    Arc::new(SqlxTarget {
        db: TenantDb::new(pool, env.seal_key().await.unwrap()),
        admin: env.admin_pool(2).await.unwrap(),
        qualify: Some(schema.to_owned()),
        oracle_schemas: vec![schema.to_owned()],
        oracle_databases: Vec::new(),
        schemas: Vec::new(),
        persistent,
    })
}

/// `n` tenants with slugs `<prefix>-<i>`.
fn tenants(n: usize, prefix: &str) -> Vec<TenantContext> {
    (0..n)
        .map(|i| {
            TenantContext::new(Tenant::new(
                TenantId::new_v4(),
                format!("{prefix}-{i}").parse().unwrap(),
                prefix,
            ))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn isolation_property_suite_over_tenant_db() {
    let env = TestDb::from_env().unwrap();
    let schema = setup(&env).await;
    // Fewer connections than tenants: physical connections are shared.
    let target = shared_target(&env, &env.app_url, &schema, 4, true).await;
    let tenants = tenants(8, "iso");
    let config = isolation::Config::from_env();
    let report = isolation::run(target, &tenants, &config).await;
    report.assert_clean(&config, "sqlx");
}

/// Negative control: the same suite against tables *without* row-level
/// security must report leaks, or the suite proves nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suite_detects_a_data_path_without_rls() {
    let env = TestDb::from_env().unwrap();
    let schema = env.fresh_schema("iso_broken").await.unwrap();
    let owner = env.owner_pool(1).await.unwrap();
    for stmt in isolation::create_tables_sql(&schema) {
        sqlx::query(&stmt).execute(&owner).await.unwrap();
    }
    for t in TABLES {
        sqlx::query(&format!(
            "GRANT SELECT, INSERT, UPDATE, DELETE ON \"{schema}\".\"{t}\" TO tenancy_app"
        ))
        .execute(&owner)
        .await
        .unwrap();
    }
    let target = shared_target(&env, &env.app_url, &schema, 2, true).await;
    let tenants = tenants(3, "broken");
    let config = isolation::Config {
        ops: 1500,
        seed: 42,
    };
    let report = isolation::run(target, &tenants, &config).await;
    report.assert_detects(
        "sqlx-no-rls",
        &[
            "read-foreign",
            "update-foreign",
            "delete-foreign",
            "insert-foreign",
            "read-all",
            "switch-setting",
            "reset-setting",
            "update-returning",
            "upsert-returning",
            "copy-out",
        ],
    );
}

/// Broken twin of the sealed binding: the policies trust the raw
/// `app.tenant_id` setting — re-scoping inside the transaction must leak.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suite_detects_an_unsealed_binding() {
    let env = TestDb::from_env().unwrap();
    let schema = setup(&env).await;
    let owner = env.owner_pool(1).await.unwrap();
    let legacy = tenancy_core::rls::unsealed_predicate("tenant_id");
    for t in TABLES {
        sqlx::raw_sql(&format!(
            "ALTER POLICY tenant_isolation ON \"{schema}\".\"{t}\" USING ({legacy}) WITH CHECK ({legacy})"
        ))
        .execute(&owner)
        .await
        .unwrap();
    }
    let target = shared_target(&env, &env.app_url, &schema, 2, true).await;
    let tenants = tenants(3, "unsealed");
    let config = isolation::Config {
        ops: 3000,
        seed: 11,
    };
    let report = isolation::run(target, &tenants, &config).await;
    report.assert_detects("sqlx-unsealed", &["switch-setting"]);
}

/// The suite through pgbouncer in transaction mode (one server connection
/// shared by every client; unnamed statements, as pgbouncer needs).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn isolation_property_suite_through_pgbouncer() {
    let env = TestDb::from_env().unwrap();
    let schema = setup(&env).await;
    let target = shared_target(&env, &env.pgbouncer_app_url, &schema, 4, false).await;
    let tenants = tenants(8, "bouncer");
    let mut config = isolation::Config::from_env();
    config.ops = config.ops.min(20_000);
    let report = isolation::run(target, &tenants, &config).await;
    report.assert_clean(&config, "sqlx-pgbouncer");
}
