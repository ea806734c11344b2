//! Tenant migrations and provisioning at scale, schema-per-tenant.
//!
//! Run: `taskset -c 1 scripts/bench --bench tenant_migrate` (starts the
//! throwaway PostgreSQL; set-up provisions 1 000 schema tenants, ~1 min).
//!
//! - `migrate_1000/per_tenant_probe` (**baseline**): what a per-tenant
//!   migrator does to find there is nothing to do — for each of the 1 000
//!   tenants, open a transaction in its schema and read its version.
//! - `migrate_1000/noop_check`: `TenantMigrator::run` when every tenant is
//!   current (one query for all tenants' state).
//! - `migrate_1000/one_step`: `TenantMigrator::run` applying one new
//!   migration (`ALTER TABLE customers ADD COLUMN`) to all 1 000 tenants,
//!   concurrency 4 (each iteration adds the next column).
//! - `provision/schema_tenant`: one tenant's schema created and migrated
//!   (`TenantMigrator::provision`); `provision/row_level_tenant`: one tenant
//!   record created (`PgTenantStore::create`), the shared model's provisioning;
//!   `provision/database_tenant`: one tenant database created from a template
//!   holding the tenant schema (`AllocateStorageStep::with_database_template`).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stderr,
    missing_docs
)]

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use sqlx::PgPool;
use tenancy_core::provision::ProvisionStep;
use tenancy_core::rls::TenantTable;
use tenancy_core::{Placement, Tenant, TenantId};
use tenancy_sqlx::tenant_migrate::{
    AllocateStorageStep, MigrationTarget, TenantMigration, TenantMigrator,
};
use tenancy_sqlx::{PgTenantStore, migrate};
use tenancy_testkit::TestDb;

const TENANTS: usize = 1_000;

fn base_migrations() -> Vec<TenantMigration> {
    let mut sql = String::from(
        "CREATE TABLE customers (tenant_id uuid NOT NULL, id uuid NOT NULL, name text, PRIMARY KEY (tenant_id, id));\n",
    );
    sql.push_str(
        &TenantTable::new("customers")
            .index_on(["id"])
            .grant_to("tenancy_app")
            .ddl(),
    );
    vec![TenantMigration::new(1, "customers", &sql)]
}

fn with_columns(n: i64) -> Vec<TenantMigration> {
    let mut m = base_migrations();
    for i in 1..=n {
        m.push(TenantMigration::new(
            1 + i,
            &format!("column {i}"),
            &format!("ALTER TABLE customers ADD COLUMN c{i} int"),
        ));
    }
    m
}

fn schema_target() -> MigrationTarget {
    let id = TenantId::new_v4();
    MigrationTarget {
        tenant: id,
        schema: Placement::name_for(id),
    }
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let env =
        TestDb::from_env().expect("benchmarks need the database: run them with scripts/bench");
    let (owner, targets) = rt.block_on(async {
        let owner = sqlx::postgres::PgPoolOptions::new()
            .max_connections(5)
            .connect(&env.owner_url)
            .await
            .unwrap();
        migrate::run(&mut owner.acquire().await.unwrap())
            .await
            .unwrap();
        let migrator = TenantMigrator::new(base_migrations()).unwrap();
        let targets: Vec<MigrationTarget> = (0..TENANTS).map(|_| schema_target()).collect();
        let start = Instant::now();
        for t in &targets {
            migrator
                .provision(&owner, t, &["tenancy_app"])
                .await
                .unwrap();
        }
        eprintln!(
            "provisioned {TENANTS} schema tenants in {:.1} s",
            start.elapsed().as_secs_f64()
        );
        (owner, targets)
    });
    let columns = AtomicI64::new(0);

    let mut g = c.benchmark_group("migrate_1000");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(100))
        .measurement_time(Duration::from_secs(20));
    g.bench_function("per_tenant_probe", |b| {
        b.to_async(&rt).iter(|| probe_all(&owner, &targets));
    });
    g.bench_function("noop_check", |b| {
        b.to_async(&rt).iter(|| async {
            let m = TenantMigrator::new(with_columns(columns.load(Ordering::SeqCst))).unwrap();
            let report = m.run(&owner, &targets, |_| {}).await.unwrap();
            assert_eq!(report.up_to_date, TENANTS);
        });
    });
    g.bench_function("one_step", |b| {
        b.to_async(&rt).iter(|| async {
            let n = columns.fetch_add(1, Ordering::SeqCst) + 1;
            let m = TenantMigrator::new(with_columns(n)).unwrap().concurrency(4);
            let report = m.run(&owner, &targets, |_| {}).await.unwrap();
            assert_eq!(report.migrated.len(), TENANTS);
        });
    });
    g.finish();

    let store = PgTenantStore::new(rt.block_on(env.owner_pool(2)).unwrap());
    let mut g = c.benchmark_group("provision");
    g.sample_size(20).measurement_time(Duration::from_secs(10));
    g.bench_function("schema_tenant", |b| {
        let m = TenantMigrator::new(base_migrations()).unwrap();
        b.to_async(&rt).iter(|| async {
            m.provision(&owner, &schema_target(), &["tenancy_app"])
                .await
                .unwrap()
        });
    });
    let admin = rt.block_on(env.admin_pool(1)).unwrap();
    let template = "bench_tenant_template";
    rt.block_on(async {
        sqlx::raw_sql(&format!("CREATE DATABASE {template}")).execute(&admin).await.unwrap();
        let opts: sqlx::postgres::PgConnectOptions = env.admin_url.parse().unwrap();
        let t = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect_with(opts.database(template))
            .await
            .unwrap();
        sqlx::raw_sql(
            "CREATE TABLE customers (tenant_id uuid NOT NULL, id uuid NOT NULL, name text, PRIMARY KEY (tenant_id, id))",
        )
        .execute(&t)
        .await
        .unwrap();
        sqlx::raw_sql(&TenantTable::new("customers").index_on(["id"]).grant_to("tenancy_app").ddl())
            .execute(&t)
            .await
            .unwrap();
        t.close().await;
    });
    g.bench_function("database_tenant", |b| {
        let step = AllocateStorageStep::new(
            admin.clone(),
            TenantMigrator::new(Vec::new()).unwrap(),
            ["tenancy_app"],
        )
        .with_database_template(template);
        b.to_async(&rt).iter(|| async {
            let id = TenantId::new_v4();
            let t = Tenant::new(id, "db".parse().unwrap(), "db")
                .with_placement(Placement::database(&Placement::name_for(id)).unwrap());
            step.run(&t).await.unwrap();
        });
    });
    g.bench_function("row_level_tenant", |b| {
        b.to_async(&rt).iter(|| async {
            let id = TenantId::new_v4();
            let t = Tenant::new(
                id,
                format!("b{}", id.as_uuid().simple()).parse().unwrap(),
                "bench",
            );
            store.create(&t).await.unwrap();
        });
    });
    g.finish();
}

/// The baseline: open every tenant's schema and read its version.
async fn probe_all(pool: &PgPool, targets: &[MigrationTarget]) {
    for t in targets {
        let mut tx = pool.begin().await.unwrap();
        sqlx::raw_sql(&format!("SET LOCAL search_path TO \"{}\"", t.schema))
            .execute(&mut *tx)
            .await
            .unwrap();
        let v: Option<i64> = sqlx::query_scalar(
            "SELECT max(version) FROM tenancy.tenant_migrations WHERE tenant_id = $1",
        )
        .bind(t.tenant.as_uuid())
        .fetch_one(&mut *tx)
        .await
        .unwrap();
        std::hint::black_box(v);
        tx.commit().await.unwrap();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
