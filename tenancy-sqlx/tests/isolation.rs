//! The shared isolation property suite over `TenantDb`, as the application role.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod common;

use std::sync::Arc;

use common::SqlxTarget;
use tenancy_core::{Tenant, TenantContext, TenantId};
use tenancy_sqlx::audit::{Audit, Finding};
use tenancy_sqlx::rls::{ApplyTenantTable, TenantTable};
use tenancy_sqlx::{PoolHygiene, TenantDb};
use tenancy_testkit::TestDb;
use tenancy_testkit::isolation::{self, TABLES};

/// Creates the suite's tables and the attack fixtures (links tables, views,
/// functions) in a fresh schema, isolated with `TenantTable`.
pub async fn setup(db: &TestDb) -> String {
    let schema = db.fresh_schema("iso").await.unwrap();
    let owner = db.owner_pool(1).await.unwrap();
    let mut conn = owner.acquire().await.unwrap();
    for stmt in isolation::create_tables_sql(&schema)
        .into_iter()
        .chain(isolation::attack_fixtures_sql(&schema, "tenancy_app"))
    {
        sqlx::query(&stmt).execute(&mut *conn).await.unwrap();
    }
    for t in TABLES {
        for table in [t.to_owned(), format!("{t}_links")] {
            TenantTable::new(&table)
                .schema(&schema)
                .index_on(["id"])
                .grant_to("tenancy_app")
                .apply(&mut conn)
                .await
                .unwrap();
        }
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
    shared_target_with(
        env,
        url,
        schema,
        connections,
        persistent,
        PoolHygiene::Verify,
    )
    .await
}

async fn shared_target_with(
    env: &TestDb,
    url: &str,
    schema: &str,
    connections: u32,
    persistent: bool,
    hygiene: PoolHygiene,
) -> Arc<SqlxTarget> {
    let key = env.seal_key().await.unwrap();
    let pool = TenantDb::pool_options_with(hygiene)
        .max_connections(connections)
        .connect(url)
        .await
        .unwrap();
    let shadow = TenantDb::pool_options_with(hygiene)
        .max_connections(1)
        .connect(url)
        .await
        .unwrap();
    Arc::new(SqlxTarget {
        qualify: Some(schema.to_owned()),
        oracle_schemas: vec![schema.to_owned()],
        persistent,
        fixtures: true,
        shadow: Some(TenantDb::new(shadow, key.clone())),
        ..SqlxTarget::new(TenantDb::new(pool, key), env.admin_pool(2).await.unwrap())
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
    // The suite's schema, fixtures included, is what strict mode accepts.
    let app = env.app_pool(1).await.unwrap();
    Audit::new()
        .schema(&schema)
        .enforce(&mut app.acquire().await.unwrap())
        .await
        .unwrap();
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
    for stmt in isolation::create_tables_sql(&schema)
        .into_iter()
        .chain(isolation::attack_fixtures_sql(&schema, "tenancy_app"))
    {
        sqlx::query(&stmt).execute(&owner).await.unwrap();
    }
    for t in TABLES {
        sqlx::query(&format!(
            "GRANT SELECT, INSERT, UPDATE, DELETE ON \"{schema}\".\"{t}\", \"{schema}\".\"{t}_links\" TO tenancy_app"
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
            "view-read",
            "function-read",
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

/// Broken twin of pool hygiene: a database where the application role may
/// create temporary tables and a pool that returns connections unchecked —
/// a table planted by one tenant must be seen by the next tenant on the
/// connection. With hygiene on (same database, same grants) the same attacks
/// find nothing: hygiene alone holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suite_detects_session_residue_without_hygiene() {
    let env = TestDb::from_env().unwrap().loose();
    let schema = setup(&env).await;
    let config = isolation::Config { ops: 3000, seed: 5 };
    let target = shared_target_with(&env, &env.app_url, &schema, 2, true, PoolHygiene::Off).await;
    let report = isolation::run(target, &tenants(3, "residue"), &config).await;
    report.assert_detects("sqlx-hygiene-off", &["temp-shadow"]);

    let schema = setup(&env).await;
    let target =
        shared_target_with(&env, &env.app_url, &schema, 2, true, PoolHygiene::Verify).await;
    let report = isolation::run(target, &tenants(3, "hygienic"), &config).await;
    report.emit("sqlx-hygiene-alone");
    let shadow = report.kinds.get("temp-shadow").copied().unwrap_or_default();
    assert!(shadow.executed > 0, "no temp-shadow attack ran: {shadow:?}");
    assert_eq!(report.leaks, 0, "{:#?}", report.leak_samples);
}

/// Broken twin of the schema rules the audit enforces: a links table whose
/// foreign key leaves out `tenant_id`, and a view and a function owned by a
/// role that bypasses row-level security (here the superuser) — links to
/// another tenant's rows must be accepted or answered differently from links
/// to nothing, and the view and function must serve other tenants' rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suite_detects_loose_foreign_keys_and_definer_views() {
    let env = TestDb::from_env().unwrap();
    let schema = setup(&env).await;
    let owner = env.owner_pool(1).await.unwrap();
    let admin = env.admin_pool(1).await.unwrap();
    for t in TABLES {
        sqlx::raw_sql(&format!(
            "CREATE UNIQUE INDEX ON \"{schema}\".\"{t}\" (id); \
             ALTER TABLE \"{schema}\".\"{t}_links\" DROP CONSTRAINT \"{t}_links_tenant_id_parent_fkey\", \
                 ADD FOREIGN KEY (parent) REFERENCES \"{schema}\".\"{t}\" (id); \
             DROP VIEW \"{schema}\".\"{t}_v\"; DROP FUNCTION \"{schema}\".\"{t}_f\"()"
        ))
        .execute(&owner)
        .await
        .unwrap();
        sqlx::raw_sql(&format!(
            "CREATE VIEW \"{schema}\".\"{t}_v\" AS SELECT tenant_id, id, value FROM \"{schema}\".\"{t}\"; \
             GRANT SELECT ON \"{schema}\".\"{t}_v\" TO tenancy_app; \
             CREATE FUNCTION \"{schema}\".\"{t}_f\"() RETURNS TABLE (tenant_id uuid, id uuid, value bigint) \
                 LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog \
                 AS $f$ SELECT tenant_id, id, value FROM \"{schema}\".\"{t}\" $f$"
        ))
        .execute(&admin)
        .await
        .unwrap();
    }
    let target = shared_target(&env, &env.app_url, &schema, 2, true).await;
    let config = isolation::Config {
        ops: 3000,
        seed: 13,
    };
    let report = isolation::run(target, &tenants(3, "loose"), &config).await;
    report.assert_detects(
        "sqlx-loose-schema",
        &["fk-reference", "view-read", "function-read"],
    );
    // The wall that catches this schema before it serves: the audit.
    let app = env.app_pool(1).await.unwrap();
    let audit = Audit::new()
        .schema(&schema)
        .run(&mut app.acquire().await.unwrap())
        .await
        .unwrap();
    for (what, found) in [
        (
            "foreign key",
            audit
                .findings
                .iter()
                .any(|f| matches!(f, Finding::ForeignKeyWithoutTenant { .. })),
        ),
        (
            "view",
            audit
                .findings
                .iter()
                .any(|f| matches!(f, Finding::ViewOverTenantTable { .. })),
        ),
        (
            "definer function",
            audit
                .findings
                .iter()
                .any(|f| matches!(f, Finding::DefinerBypassesRls { .. })),
        ),
    ] {
        assert!(found, "the audit missed the {what}:\n{audit}");
    }
}
