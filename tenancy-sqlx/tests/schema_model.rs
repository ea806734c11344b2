//! Schema-per-tenant through the same `TenantDb::begin`: the isolation
//! suite, `search_path` hygiene on pooled connections (directly and through
//! pgbouncer), placement checks, and the tenant migration runner (resume
//! after a crash, quarantine, canary, no-op check).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::SqlxTarget;
use sqlx::{PgPool, Row as _};
use tenancy_core::rls::TenantTable;
use tenancy_core::{Placement, Tenant, TenantContext, TenantId};
use tenancy_sqlx::tenant_migrate::{MigrationTarget, Progress, TenantMigration, TenantMigrator};
use tenancy_sqlx::{DbError, TenantDb, migrate};
use tenancy_testkit::TestDb;
use tenancy_testkit::isolation::{self, TABLES};

/// A tenant placed in its own schema (`t_<id>`).
fn schema_tenant(slug: &str) -> TenantContext {
    let id = TenantId::new_v4();
    TenantContext::new(
        Tenant::new(id, slug.parse().unwrap(), slug)
            .with_placement(Placement::schema(&Placement::name_for(id)).unwrap()),
    )
}

fn target(ctx: &TenantContext) -> MigrationTarget {
    MigrationTarget::from_tenant(ctx.tenant()).unwrap()
}

/// Version 1 of the tenant schema: the suite's tables, each still carrying
/// `tenant_id` under a forced policy (defence in depth inside the schema).
fn suite_migrations() -> Vec<TenantMigration> {
    let mut sql = String::new();
    for t in TABLES {
        sql.push_str(&format!(
            "CREATE TABLE {t} (tenant_id uuid NOT NULL, id uuid NOT NULL, value bigint NOT NULL, \
             PRIMARY KEY (tenant_id, id));\n"
        ));
        sql.push_str(
            &TenantTable::new(t)
                .index_on(["id"])
                .grant_to("tenancy_app")
                .ddl(),
        );
    }
    vec![TenantMigration::new(1, "suite tables", &sql)]
}

async fn owner_with_system_schema(env: &TestDb) -> PgPool {
    let owner = env.owner_pool(4).await.unwrap();
    migrate::run(&mut owner.acquire().await.unwrap())
        .await
        .unwrap();
    owner
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn isolation_suite_schema_per_tenant() {
    let env = TestDb::from_env().unwrap();
    let owner = owner_with_system_schema(&env).await;
    let tenants: Vec<TenantContext> = (0..8)
        .map(|i| schema_tenant(&format!("schema-{i}")))
        .collect();
    let migrator = TenantMigrator::new(suite_migrations()).unwrap();
    for t in &tenants {
        assert_eq!(
            migrator
                .provision(&owner, &target(t), &["tenancy_app"])
                .await
                .unwrap(),
            1
        );
    }
    let pool = TenantDb::pool_options()
        .max_connections(4)
        .connect(&env.app_url)
        .await
        .unwrap();
    // Unqualified table names: `search_path` decides whose tables they are.
    let shadow = TenantDb::pool_options()
        .max_connections(1)
        .connect(&env.app_url)
        .await
        .unwrap();
    let target = Arc::new(SqlxTarget {
        oracle_schemas: tenants.iter().map(|t| target(t).schema).collect(),
        schemas: tenants
            .iter()
            .map(|t| (t.tenant_id().as_uuid(), target(t).schema))
            .collect(),
        shadow: Some(TenantDb::new(shadow, env.seal_key().await.unwrap())),
        tenants: tenants.clone(),
        ..SqlxTarget::new(
            TenantDb::new(pool, env.seal_key().await.unwrap()),
            env.admin_pool(2).await.unwrap(),
        )
    });
    let mut config = isolation::Config::from_env();
    config.ops = config.ops.min(50_000);
    let report = isolation::run(target, &tenants, &config).await;
    report.assert_clean(&config, "sqlx-schema");
}

/// Broken twin: the same schemas with their walls taken down (no pin, no
/// row-level security) — the schema-qualified attacks must leak.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolation_suite_detects_open_schemas() {
    let env = TestDb::from_env().unwrap();
    let owner = owner_with_system_schema(&env).await;
    let tenants: Vec<TenantContext> = (0..3)
        .map(|i| schema_tenant(&format!("open-{i}")))
        .collect();
    let migrator = TenantMigrator::new(suite_migrations()).unwrap();
    for t in &tenants {
        migrator
            .provision(&owner, &target(t), &["tenancy_app"])
            .await
            .unwrap();
        let schema = target(t).schema;
        for table in TABLES {
            sqlx::raw_sql(&format!(
                "ALTER TABLE \"{schema}\".{table} DROP CONSTRAINT tenant_schema_pin; \
                 ALTER TABLE \"{schema}\".{table} DISABLE ROW LEVEL SECURITY"
            ))
            .execute(&owner)
            .await
            .unwrap();
        }
    }
    let pool = TenantDb::pool_options()
        .max_connections(2)
        .connect(&env.app_url)
        .await
        .unwrap();
    let target = Arc::new(SqlxTarget {
        oracle_schemas: tenants.iter().map(|t| target(t).schema).collect(),
        schemas: tenants
            .iter()
            .map(|t| (t.tenant_id().as_uuid(), target(t).schema))
            .collect(),
        ..SqlxTarget::new(
            TenantDb::new(pool, env.seal_key().await.unwrap()),
            env.admin_pool(1).await.unwrap(),
        )
    });
    let config = isolation::Config { ops: 3000, seed: 7 };
    let report = isolation::run(target, &tenants, &config).await;
    report.assert_detects("sqlx-schema-open", &["schema-qualified"]);
}

/// What the next user of a pooled connection sees outside any transaction.
async fn next_user(pool: &PgPool) -> (String, String, i32) {
    let row = sqlx::raw_sql(
        "SELECT current_setting('search_path'), coalesce(current_setting('app.tenant_id', true), ''), \
         pg_backend_pid()",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    (row.get(0), row.get(1), row.get(2))
}

async fn search_path_never_survives(url: &str, owner: &PgPool) {
    let ctx = schema_tenant("hygiene");
    TenantMigrator::new(suite_migrations())
        .unwrap()
        .provision(owner, &target(&ctx), &["tenancy_app"])
        .await
        .unwrap();
    let pool = TenantDb::pool_options_with(tenancy_sqlx::PoolHygiene::Off)
        .max_connections(1)
        .connect(url)
        .await
        .unwrap();
    let (default_path, _, _) = next_user(&pool).await;
    let seal = TestDb::from_env().unwrap().seal_key().await.unwrap();
    let db = TenantDb::new(pool.clone(), seal);
    for outcome in ["commit", "rollback", "error"] {
        let mut tx = db.begin(&ctx).await.unwrap();
        let inside: String = sqlx::raw_sql("SELECT current_setting('search_path')")
            .fetch_one(&mut *tx)
            .await
            .unwrap()
            .get(0);
        assert_eq!(inside, target(&ctx).schema);
        sqlx::raw_sql("INSERT INTO customers (tenant_id, id, value) VALUES (current_setting('app.tenant_id')::uuid, gen_random_uuid(), 1)")
            .execute(&mut *tx)
            .await
            .unwrap();
        match outcome {
            "commit" => tx.commit().await.unwrap(),
            "rollback" => tx.rollback().await.unwrap(),
            _ => {
                assert!(
                    sqlx::raw_sql("SELECT * FROM no_such_table")
                        .execute(&mut *tx)
                        .await
                        .is_err()
                );
                drop(tx);
            }
        }
        let (path, setting, _) = next_user(&pool).await;
        assert_eq!(
            path, default_path,
            "{outcome}: search_path survived the transaction"
        );
        assert_eq!(setting, "", "{outcome}: the tenant setting survived");
        // Unqualified tenant tables are simply not there outside the door.
        let outside = sqlx::raw_sql("SELECT count(*) FROM customers")
            .fetch_one(&pool)
            .await;
        assert!(
            outside.is_err(),
            "{outcome}: a tenant table resolved outside its transaction"
        );
    }
}

#[tokio::test]
async fn search_path_never_survives_a_transaction_directly() {
    let env = TestDb::from_env().unwrap();
    let owner = owner_with_system_schema(&env).await;
    search_path_never_survives(&env.app_url, &owner).await;
}

#[tokio::test]
async fn search_path_never_survives_a_transaction_through_pgbouncer() {
    let env = TestDb::from_env().unwrap();
    let owner = owner_with_system_schema(&env).await;
    search_path_never_survives(&env.pgbouncer_app_url, &owner).await;
}

#[tokio::test]
async fn placements_the_single_database_handle_cannot_serve_are_refused() {
    let env = TestDb::from_env().unwrap();
    let db = TenantDb::connect(&env.app_url, env.seal_key().await.unwrap())
        .await
        .unwrap();
    let id = TenantId::new_v4();
    // A name that bypassed `Placement::schema` never reaches SQL.
    let forged = TenantContext::new(
        Tenant::new(id, "forged".parse().unwrap(), "forged").with_placement(Placement::Schema {
            schema: "x\"; DROP SCHEMA public; --".into(),
        }),
    );
    assert!(
        matches!(db.begin(&forged).await, Err(DbError::Placement { tenant, .. }) if tenant == id)
    );
    let elsewhere = TenantContext::new(
        Tenant::new(id, "elsewhere".parse().unwrap(), "elsewhere")
            .with_placement(Placement::database("t_elsewhere").unwrap()),
    );
    let err = db.begin(&elsewhere).await.err().unwrap();
    assert!(err.to_string().contains("database"), "{err}");
}

/// `n` schema tenants provisioned at version 1, and their migration targets.
async fn provisioned(
    owner: &PgPool,
    n: usize,
    prefix: &str,
) -> (Vec<TenantContext>, Vec<MigrationTarget>) {
    let tenants: Vec<TenantContext> = (0..n)
        .map(|i| schema_tenant(&format!("{prefix}-{i}")))
        .collect();
    let v1 = TenantMigrator::new(suite_migrations()).unwrap();
    for t in &tenants {
        v1.provision(owner, &target(t), &["tenancy_app"])
            .await
            .unwrap();
    }
    let targets = tenants.iter().map(target).collect();
    (tenants, targets)
}

/// Version 2: a column and a constraint that fails on a tenant holding a
/// negative value (tenant-specific data breaking a migration).
fn two_step() -> Vec<TenantMigration> {
    let mut m = suite_migrations();
    m.push(TenantMigration::new(
        2,
        "customer notes",
        "ALTER TABLE customers ADD COLUMN note text; \
         ALTER TABLE customers ADD CONSTRAINT value_not_negative CHECK (value >= 0)",
    ));
    m
}

async fn versions(owner: &PgPool, t: &TenantContext) -> Vec<i64> {
    sqlx::query_scalar(
        "SELECT version FROM tenancy.tenant_migrations WHERE tenant_id = $1 ORDER BY version",
    )
    .bind(t.tenant_id().as_uuid())
    .fetch_all(owner)
    .await
    .unwrap()
}

async fn has_note_column(owner: &PgPool, t: &TenantContext) -> bool {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM information_schema.columns \
         WHERE table_schema = $1 AND table_name = 'customers' AND column_name = 'note')",
    )
    .bind(target(t).schema)
    .fetch_one(owner)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_resumes_after_a_crash_and_applies_each_step_once() {
    let env = TestDb::from_env().unwrap();
    let owner = owner_with_system_schema(&env).await;
    let (tenants, targets) = provisioned(&owner, 12, "crash").await;
    let v2 = TenantMigrator::new(two_step())
        .unwrap()
        .concurrency(3)
        .canary(1);
    // The process dies after five tenants report (a panic in the callback
    // unwinds through the rollout, dropping the transactions in flight).
    let seen = AtomicUsize::new(0);
    let crashed = tokio::spawn({
        let (owner, targets, v2) = (owner.clone(), targets.clone(), v2.clone());
        async move {
            v2.run(&owner, &targets, |_| {
                if seen.fetch_add(1, Ordering::SeqCst) + 1 == 5 {
                    panic!("crash mid-rollout");
                }
            })
            .await
        }
    })
    .await;
    assert!(crashed.unwrap_err().is_panic());
    let done_before: usize = {
        let mut n = 0;
        for t in &tenants {
            if versions(&owner, t).await == [1, 2] {
                n += 1;
            }
        }
        n
    };
    assert!(
        (5..12).contains(&done_before),
        "{done_before} migrated before the crash"
    );
    // Resume: the rest are migrated, the others are up to date.
    let report = v2.run(&owner, &targets, |_| {}).await.unwrap();
    assert_eq!(report.up_to_date, done_before);
    assert_eq!(report.migrated.len(), 12 - done_before);
    for t in &tenants {
        assert_eq!(versions(&owner, t).await, [1, 2], "each step recorded once");
        assert!(has_note_column(&owner, t).await);
    }
    // Nothing left: the no-op check opens no tenant transaction.
    let again = v2.run(&owner, &targets, |_| {}).await.unwrap();
    assert_eq!((again.up_to_date, again.migrated.len()), (12, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_tenant_is_quarantined_and_the_canary_stops_a_bad_rollout() {
    let env = TestDb::from_env().unwrap();
    let owner = owner_with_system_schema(&env).await;
    let (tenants, targets) = provisioned(&owner, 6, "quarantine").await;

    // Tenant 3 holds data that breaks version 2 (not a canary): it is
    // quarantined, the others finish.
    let bad = target(&tenants[3]);
    let admin = env.admin_pool(1).await.unwrap();
    sqlx::query(&format!(
        "INSERT INTO \"{}\".customers (tenant_id, id, value) VALUES ($1, gen_random_uuid(), -1)",
        bad.schema
    ))
    .bind(bad.tenant.as_uuid())
    .execute(&admin)
    .await
    .unwrap();
    let events = std::sync::Mutex::new(Vec::new());
    let report = TenantMigrator::new(two_step())
        .unwrap()
        .canary(1)
        .run(&owner, &targets, |p| events.lock().unwrap().push(p.clone()))
        .await
        .unwrap();
    assert!(report.canary_failure.is_none());
    assert_eq!(report.migrated.len(), 5);
    assert_eq!(report.quarantined.len(), 1);
    assert_eq!(report.quarantined[0].0, bad.tenant);
    assert!(
        report.quarantined[0].1.contains("value_not_negative"),
        "{}",
        report.quarantined[0].1
    );
    assert_eq!(
        versions(&owner, &tenants[3]).await,
        [1],
        "the failed step rolled back entirely"
    );
    assert!(!has_note_column(&owner, &tenants[3]).await);
    let quarantined = TenantMigrator::quarantined(&owner).await.unwrap();
    assert!(quarantined.iter().any(|(t, _)| *t == bad.tenant));
    assert!(
        events
            .lock()
            .unwrap()
            .iter()
            .any(|p| matches!(p, Progress::Quarantined { tenant, .. } if *tenant == bad.tenant))
    );
    // The data is fixed: the quarantined tenant catches up and leaves quarantine.
    sqlx::query(&format!(
        "DELETE FROM \"{}\".customers WHERE value < 0",
        bad.schema
    ))
    .execute(&admin)
    .await
    .unwrap();
    let fixed = TenantMigrator::new(two_step())
        .unwrap()
        .run(&owner, &targets, |_| {})
        .await
        .unwrap();
    assert_eq!(fixed.migrated, [bad.tenant]);
    assert!(
        !TenantMigrator::quarantined(&owner)
            .await
            .unwrap()
            .iter()
            .any(|(t, _)| *t == bad.tenant)
    );

    // A canary failure stops the rollout before anyone else is touched.
    let mut v3 = two_step();
    v3.push(TenantMigration::new(
        3,
        "broken",
        "ALTER TABLE no_such_table ADD COLUMN x int",
    ));
    let report = TenantMigrator::new(v3)
        .unwrap()
        .canary(2)
        .run(&owner, &targets, |_| {})
        .await
        .unwrap();
    let (canary, error) = report.canary_failure.unwrap();
    assert_eq!(canary, targets[0].tenant);
    assert!(error.contains("no_such_table"), "{error}");
    assert!(report.migrated.is_empty());
    for t in &tenants {
        assert_eq!(versions(&owner, t).await, [1, 2], "nobody got version 3");
    }
}

#[tokio::test]
async fn an_edited_migration_quarantines_instead_of_diverging() {
    let env = TestDb::from_env().unwrap();
    let owner = owner_with_system_schema(&env).await;
    let t = schema_tenant("edited");
    TenantMigrator::new(two_step())
        .unwrap()
        .provision(&owner, &target(&t), &["tenancy_app"])
        .await
        .unwrap();
    let mut edited = suite_migrations();
    edited.push(TenantMigration::new(
        2,
        "customer notes",
        "ALTER TABLE customers ADD COLUMN note varchar(10)",
    ));
    let report = TenantMigrator::new(edited)
        .unwrap()
        .canary(0)
        .run(&owner, &[target(&t)], |_| {})
        .await
        .unwrap();
    assert_eq!(report.quarantined.len(), 1);
    assert!(
        report.quarantined[0]
            .1
            .contains("changed since it was applied"),
        "{}",
        report.quarantined[0].1
    );
}

#[tokio::test]
async fn the_allocate_storage_step_provisions_by_placement() {
    use tenancy_core::provision::ProvisionStep;
    use tenancy_sqlx::tenant_migrate::AllocateStorageStep;
    let env = TestDb::from_env().unwrap();
    let owner = owner_with_system_schema(&env).await;
    let step = AllocateStorageStep::new(
        owner.clone(),
        TenantMigrator::new(suite_migrations()).unwrap(),
        ["tenancy_app"],
    );
    assert_eq!(step.name(), "allocate_storage");
    // Schema: created, migrated, usable through the door; running it again
    // (a resumed pipeline) changes nothing.
    let ctx = schema_tenant("allocated");
    step.run(ctx.tenant()).await.unwrap();
    step.run(ctx.tenant()).await.unwrap();
    assert_eq!(versions(&owner, &ctx).await, [1]);
    let db = TenantDb::connect(&env.app_url, env.seal_key().await.unwrap())
        .await
        .unwrap();
    let mut tx = db.begin(&ctx).await.unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM payments")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(n, 0);
    tx.commit().await.unwrap();
    // Shared: nothing to allocate.
    let shared = Tenant::new(TenantId::new_v4(), "shared".parse().unwrap(), "shared");
    step.run(&shared).await.unwrap();
    // Database: refused with what to do instead.
    let elsewhere = Tenant::new(TenantId::new_v4(), "db".parse().unwrap(), "db")
        .with_placement(Placement::database("t_somewhere").unwrap());
    let err = step.run(&elsewhere).await.unwrap_err();
    assert!(err.contains("with_database_template"), "{err}");
}
