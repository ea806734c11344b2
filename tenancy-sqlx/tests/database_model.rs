//! Database-per-tenant through the same `TenantDb::begin`: the isolation
//! suite across tenant databases, and the router's bounds — at most
//! `max_pools` pools open, evicted and idle pools closed, connections within
//! the budget.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::SqlxTarget;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tenancy_core::rls::TenantTable;
use tenancy_core::{Placement, Tenant, TenantContext, TenantId};
use tenancy_sqlx::{DatabaseRouter, TenantDb};
use tenancy_testkit::TestDb;
use tenancy_testkit::isolation::{self, TABLES};

/// Creates database `name` with the suite's tables and the seal (the same
/// key as the main database: one TenantDb serves both); `rls`: isolated
/// with `TenantTable` (a second wall inside the tenant's own database),
/// else plain tables granted to the application role. Returns a superuser
/// pool on it for the oracle.
async fn suite_database(env: &TestDb, admin: &PgPool, name: &str, rls: bool) -> PgPool {
    sqlx::raw_sql(&format!("CREATE DATABASE \"{name}\" OWNER tenancy_owner"))
        .execute(admin)
        .await
        .unwrap();
    let owner_opts: PgConnectOptions = env.owner_url.parse().unwrap();
    let owner = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(owner_opts.database(name))
        .await
        .unwrap();
    tenancy_sqlx::migrate::install_seal(
        &mut owner.acquire().await.unwrap(),
        &env.seal_key().await.unwrap(),
    )
    .await
    .unwrap();
    for stmt in isolation::create_tables_sql("public") {
        sqlx::raw_sql(&stmt).execute(&owner).await.unwrap();
    }
    for t in TABLES {
        let ddl = if rls {
            TenantTable::new(t)
                .schema("public")
                .index_on(["id"])
                .grant_to("tenancy_app")
                .ddl()
        } else {
            format!("GRANT SELECT, INSERT, UPDATE, DELETE ON public.\"{t}\" TO tenancy_app")
        };
        sqlx::raw_sql(&ddl).execute(&owner).await.unwrap();
    }
    owner.close().await;
    let admin_opts: PgConnectOptions = env.admin_url.parse().unwrap();
    PgPoolOptions::new()
        .max_connections(1)
        .connect_with(admin_opts.database(name))
        .await
        .unwrap()
}

/// A tenant with a database of its own (RLS kept inside as a second wall).
/// Returns the context and a superuser pool on that database for the oracle.
async fn database_tenant(env: &TestDb, admin: &PgPool, slug: &str) -> (TenantContext, PgPool) {
    let id = TenantId::new_v4();
    let name = Placement::name_for(id);
    let oracle = suite_database(env, admin, &name, true).await;
    let ctx = TenantContext::new(
        Tenant::new(id, slug.parse().unwrap(), slug)
            .with_placement(Placement::database(&name).unwrap()),
    );
    (ctx, oracle)
}

fn router(env: &TestDb) -> DatabaseRouter {
    DatabaseRouter::new(env.app_url.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn isolation_suite_database_per_tenant() {
    let env = TestDb::from_env().unwrap();
    let admin = env.admin_pool(1).await.unwrap();
    let mut tenants = Vec::new();
    let mut oracles = Vec::new();
    for i in 0..8 {
        let (ctx, oracle) = database_tenant(&env, &admin, &format!("db-{i}")).await;
        tenants.push(ctx);
        oracles.push(oracle);
    }
    let db = TenantDb::connect(&env.app_url, env.seal_key().await.unwrap())
        .await
        .unwrap()
        .with_databases(router(&env).max_pools(8).connection_budget(16));
    let target = Arc::new(SqlxTarget {
        oracle_databases: oracles,
        ..SqlxTarget::new(db, admin.clone())
    });
    let mut config = isolation::Config::from_env();
    config.ops = config.ops.min(20_000);
    let report = isolation::run(target, &tenants, &config).await;
    report.assert_clean(&config, "sqlx-database");
}

/// Broken twin: the database walls taken down — every tenant placed in one
/// database whose tables have no row-level security (a router that
/// collapses placements) — the suite must see other tenants' rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolation_suite_detects_collapsed_databases() {
    let env = TestDb::from_env().unwrap();
    let admin = env.admin_pool(1).await.unwrap();
    let name = Placement::name_for(TenantId::new_v4());
    let oracle = suite_database(&env, &admin, &name, false).await;
    let tenants: Vec<TenantContext> = (0..3)
        .map(|i| {
            let slug = format!("collapsed-{i}");
            TenantContext::new(
                Tenant::new(TenantId::new_v4(), slug.parse().unwrap(), &slug)
                    .with_placement(Placement::database(&name).unwrap()),
            )
        })
        .collect();
    let db = TenantDb::connect(&env.app_url, env.seal_key().await.unwrap())
        .await
        .unwrap()
        .with_databases(router(&env).max_pools(2).connection_budget(4));
    let target = Arc::new(SqlxTarget {
        oracle_databases: vec![oracle],
        ..SqlxTarget::new(db, admin.clone())
    });
    let config = isolation::Config { ops: 1500, seed: 3 };
    let report = isolation::run(target, &tenants, &config).await;
    report.assert_detects(
        "sqlx-database-collapsed",
        &[
            "read-all",
            "read-foreign",
            "update-foreign",
            "delete-foreign",
            "insert-foreign",
        ],
    );
}

/// Connections the application role holds, per tenant database.
async fn app_connections(admin: &PgPool, databases: &[String]) -> Vec<i64> {
    let mut out = Vec::new();
    for d in databases {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = 'tenancy_app' AND datname = $1",
        )
        .bind(d)
        .fetch_one(admin)
        .await
        .unwrap();
        out.push(n);
    }
    out
}

async fn touch(db: &TenantDb, ctx: &TenantContext) {
    let mut tx = db.begin(ctx).await.unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM customers")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(n, 0);
    tx.commit().await.unwrap();
}

#[tokio::test]
async fn the_router_bounds_open_pools_closes_evicted_ones_and_keeps_the_budget() {
    let env = TestDb::from_env().unwrap();
    let admin = env.admin_pool(1).await.unwrap();
    let mut tenants = Vec::new();
    // More tenants than the budget has connections: only closing evicted
    // pools keeps the total within it.
    for i in 0..6 {
        tenants.push(database_tenant(&env, &admin, &format!("bound-{i}")).await.0);
    }
    let names: Vec<String> = tenants
        .iter()
        .map(|t| {
            t.tenant()
                .placement
                .checked_name()
                .unwrap()
                .unwrap()
                .to_owned()
        })
        .collect();
    let router = router(&env).max_pools(2).connection_budget(4);
    assert_eq!(router.per_pool(), 2);
    let db = TenantDb::connect(&env.app_url, env.seal_key().await.unwrap())
        .await
        .unwrap()
        .with_databases(router.clone());
    for round in 0..3 {
        for t in &tenants {
            touch(&db, t).await;
            router.run_pending_tasks().await;
            assert!(
                router.open_pools() <= 2,
                "round {round}: {} pools open",
                router.open_pools()
            );
            // Evicted pools are closed: never more than the budget connected.
            tokio::time::sleep(Duration::from_millis(50)).await;
            let total: i64 = app_connections(&admin, &names).await.iter().sum();
            assert!(total <= 4, "round {round}: {total} connections, budget 4");
        }
    }
}

#[tokio::test]
async fn an_idle_pool_is_closed() {
    let env = TestDb::from_env().unwrap();
    let admin = env.admin_pool(1).await.unwrap();
    let (ctx, _) = database_tenant(&env, &admin, "idle").await;
    let name = ctx
        .tenant()
        .placement
        .checked_name()
        .unwrap()
        .unwrap()
        .to_owned();
    let router = router(&env).idle_timeout(Duration::from_millis(300));
    let db = TenantDb::connect(&env.app_url, env.seal_key().await.unwrap())
        .await
        .unwrap()
        .with_databases(router.clone());
    touch(&db, &ctx).await;
    assert_eq!(
        app_connections(&admin, std::slice::from_ref(&name)).await,
        [1]
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    router.run_pending_tasks().await;
    assert_eq!(router.open_pools(), 0);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        app_connections(&admin, &[name]).await,
        [0],
        "the idle pool's connections are closed"
    );
    // The tenant is still served: a fresh pool opens on demand.
    touch(&db, &ctx).await;
}

#[tokio::test]
async fn database_tenants_are_provisioned_from_a_template() {
    use tenancy_core::provision::ProvisionStep;
    use tenancy_sqlx::tenant_migrate::{AllocateStorageStep, TenantMigrator};
    let env = TestDb::from_env().unwrap();
    let admin = env.admin_pool(1).await.unwrap();
    // The template: a database holding the tenant schema, nobody connected.
    let (template_ctx, template_pool) = database_tenant(&env, &admin, "template").await;
    template_pool.close().await;
    let template = template_ctx
        .tenant()
        .placement
        .checked_name()
        .unwrap()
        .unwrap()
        .to_owned();
    let step = AllocateStorageStep::new(
        admin.clone(),
        TenantMigrator::new(Vec::new()).unwrap(),
        ["tenancy_app"],
    )
    .with_database_template(&template);
    let db = TenantDb::connect(&env.app_url, env.seal_key().await.unwrap())
        .await
        .unwrap()
        .with_databases(router(&env));
    let id = TenantId::new_v4();
    let ctx = TenantContext::new(
        Tenant::new(id, "from-template".parse().unwrap(), "t")
            .with_placement(Placement::database(&Placement::name_for(id)).unwrap()),
    );
    step.run(ctx.tenant()).await.unwrap();
    step.run(ctx.tenant()).await.unwrap(); // a resumed pipeline: nothing to do
    // The copy has the tables and policies: the tenant writes and reads its rows.
    let mut tx = db.begin(&ctx).await.unwrap();
    sqlx::query("INSERT INTO customers (tenant_id, id, value) VALUES ($1, gen_random_uuid(), 7)")
        .bind(id.as_uuid())
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    touch_count(&db, &ctx, 1).await;
    // Without a template the step refuses with what to do.
    let bare = AllocateStorageStep::new(
        admin,
        TenantMigrator::new(Vec::new()).unwrap(),
        ["tenancy_app"],
    );
    let err = bare.run(ctx.tenant()).await.unwrap_err();
    assert!(err.contains("with_database_template"), "{err}");
}

async fn touch_count(db: &TenantDb, ctx: &TenantContext, expected: i64) {
    let mut tx = db.begin(ctx).await.unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM customers")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(n, expected);
    tx.commit().await.unwrap();
}

/// What the next transaction on a database tenant's (one-connection) pool
/// finds: the tenant's own database, its own setting, the default
/// `search_path`, the committed rows only. Returns the backend pid.
async fn next_user_in_database(db: &TenantDb, ctx: &TenantContext, rows: i64) -> i32 {
    let mut tx = db.begin(ctx).await.unwrap();
    let (database, setting, path, pid, n): (String, String, String, i32, i64) = sqlx::query_as(
        "SELECT current_database()::text, current_setting('app.tenant_id'), \
         current_setting('search_path'), pg_backend_pid(), (SELECT count(*) FROM customers)",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        Some(database.as_str()),
        ctx.tenant().placement.checked_name().unwrap()
    );
    assert_eq!(setting, ctx.tenant_id().to_string());
    assert_eq!(path, "\"$user\", public");
    assert_eq!(n, rows, "only committed rows");
    pid
}

async fn insert_customer(tx: &mut tenancy_sqlx::TenantTx) {
    let tenant = tx.tenant_id();
    sqlx::query("INSERT INTO customers (tenant_id, id, value) VALUES ($1, gen_random_uuid(), 1)")
        .bind(tenant.as_uuid())
        .execute(&mut **tx)
        .await
        .unwrap();
}

#[tokio::test]
async fn pool_leak_matrix_database_per_tenant() {
    let env = TestDb::from_env().unwrap();
    let admin = env.admin_pool(1).await.unwrap();
    let (a, _) = database_tenant(&env, &admin, "leak-a").await;
    let (b, _) = database_tenant(&env, &admin, "leak-b").await;
    // One connection per tenant database: every step reuses it.
    let router = router(&env).max_pools(2).connection_budget(2);
    assert_eq!(router.per_pool(), 1);
    let db = TenantDb::connect(&env.app_url, env.seal_key().await.unwrap())
        .await
        .unwrap()
        .with_databases(router);
    let pid = next_user_in_database(&db, &a, 0).await;

    // commit
    let mut tx = db.begin(&a).await.unwrap();
    insert_customer(&mut tx).await;
    tx.commit().await.unwrap();
    assert_eq!(next_user_in_database(&db, &a, 1).await, pid);
    next_user_in_database(&db, &b, 0).await;

    // rollback
    let mut tx = db.begin(&a).await.unwrap();
    insert_customer(&mut tx).await;
    tx.rollback().await.unwrap();
    assert_eq!(next_user_in_database(&db, &a, 1).await, pid);

    // SQL error, then dropped
    let mut tx = db.begin(&a).await.unwrap();
    insert_customer(&mut tx).await;
    assert!(
        sqlx::query("SELECT * FROM no_such_table")
            .execute(&mut *tx)
            .await
            .is_err()
    );
    drop(tx);
    assert_eq!(next_user_in_database(&db, &a, 1).await, pid);

    // panic mid-transaction
    let (db2, a2) = (db.clone(), a.clone());
    let panicked = tokio::spawn(async move {
        let mut tx = db2.begin(&a2).await.unwrap();
        insert_customer(&mut tx).await;
        panic!("handler panicked mid-transaction");
    })
    .await;
    assert!(panicked.is_err());
    assert_eq!(next_user_in_database(&db, &a, 1).await, pid);

    // future dropped mid-query
    let (db3, a3) = (db.clone(), a.clone());
    let slow = async move {
        let mut tx = db3.begin(&a3).await.unwrap();
        insert_customer(&mut tx).await;
        sqlx::query("SELECT pg_sleep(1)")
            .execute(&mut *tx)
            .await
            .unwrap();
    };
    assert!(
        tokio::time::timeout(Duration::from_millis(100), slow)
            .await
            .is_err()
    );
    next_user_in_database(&db, &a, 1).await;

    // backend killed mid-transaction: the next user gets a fresh connection
    let mut tx = db.begin(&a).await.unwrap();
    insert_customer(&mut tx).await;
    let victim: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    let killed: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(victim)
        .fetch_one(&admin)
        .await
        .unwrap();
    assert!(killed);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(sqlx::raw_sql("SELECT 1").execute(&mut *tx).await.is_err());
    drop(tx);
    assert_ne!(next_user_in_database(&db, &a, 1).await, victim);
    next_user_in_database(&db, &b, 0).await;
}

#[tokio::test]
async fn tenant_migrations_keep_their_state_inside_each_database() {
    use tenancy_sqlx::tenant_migrate::{DatabaseTarget, TenantMigration, TenantMigrator};
    let env = TestDb::from_env().unwrap();
    let admin = env.admin_pool(1).await.unwrap();
    let control = env.owner_pool(2).await.unwrap();
    tenancy_sqlx::migrate::run(&mut control.acquire().await.unwrap())
        .await
        .unwrap();
    let owner: PgConnectOptions = env.owner_url.parse().unwrap();
    let mut targets = Vec::new();
    for i in 0..3 {
        let (ctx, oracle) = database_tenant(&env, &admin, &format!("mig-{i}")).await;
        oracle.close().await;
        targets.push(DatabaseTarget::from_tenant(ctx.tenant()).unwrap());
    }
    let notes = TenantMigration::new(1, "notes", "CREATE TABLE notes (id uuid PRIMARY KEY)");
    let v1 = TenantMigrator::new(vec![notes.clone()]).unwrap();
    let report = v1
        .run_databases(&control, &owner, &targets, |_| {})
        .await
        .unwrap();
    assert_eq!(report.migrated.len(), 3);
    let report = v1
        .run_databases(&control, &owner, &targets, |_| {})
        .await
        .unwrap();
    assert_eq!(
        report.up_to_date, 3,
        "the no-op check reads each database's own ledger"
    );

    // Tenant 1's database already has the column step 2 adds.
    let in_db = |name: &str| {
        let opts = owner.clone().database(name);
        async move {
            PgPoolOptions::new()
                .max_connections(1)
                .connect_with(opts)
                .await
                .unwrap()
        }
    };
    let one = in_db(&targets[1].database).await;
    sqlx::raw_sql("ALTER TABLE notes ADD COLUMN body text")
        .execute(&one)
        .await
        .unwrap();
    let v2 = TenantMigrator::new(vec![
        notes,
        TenantMigration::new(2, "note bodies", "ALTER TABLE notes ADD COLUMN body text"),
    ])
    .unwrap()
    .canary(1);
    let report = v2
        .run_databases(&control, &owner, &targets, |_| {})
        .await
        .unwrap();
    // targets[0] is the canary and passes; targets[1] fails and is quarantined.
    assert!(report.canary_failure.is_none());
    let failed: Vec<TenantId> = report.quarantined.iter().map(|q| q.0).collect();
    assert_eq!(failed, [targets[1].tenant]);
    let recorded = TenantMigrator::quarantined(&control).await.unwrap();
    assert!(
        recorded
            .iter()
            .any(|(t, e)| *t == targets[1].tenant && e.contains("already exists"))
    );
    // The failed database stayed at version 1, whole; the others reached 2.
    let versions: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM tenancy.tenant_migrations ORDER BY version")
            .fetch_all(&one)
            .await
            .unwrap();
    assert_eq!(versions, [1]);
    one.close().await;
    for t in [&targets[0], &targets[2]] {
        let pool = in_db(&t.database).await;
        let versions: Vec<i64> =
            sqlx::query_scalar("SELECT version FROM tenancy.tenant_migrations ORDER BY version")
                .fetch_all(&pool)
                .await
                .unwrap();
        assert_eq!(versions, [1, 2]);
        pool.close().await;
    }
}
