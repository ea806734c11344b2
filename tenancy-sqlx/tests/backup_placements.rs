//! One tenant's table of 100 000 rows through every placement, by backup
//! files: a SQLite file of its own → its own PostgreSQL schema → the shared
//! tables under row-level security → a PostgreSQL database of its own → a
//! SQLite file again, each restore as the
//! application role through `TenantDb::begin`, each with the checksums of the
//! source. Memory is bounded by a constant: the peak resident set while
//! restoring 100 000 rows grows by less than [`BUDGET_KIB`] — where reading
//! the same file into memory first (the broken twin) grows past it.
//!
//! Its own test binary: the peak resident set is per process.
#![cfg(all(feature = "sqlite", target_os = "linux"))]
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::io::{BufReader, BufWriter};
use std::path::Path;

use chrono::Utc;
use serde_json::{Value, json};
use sqlx::Connection as _;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tenancy_core::backup::{
    BackupEvent, BackupHeader, BackupKey, BackupReader, BackupWriter, ColumnType,
};
use tenancy_core::rls::TenantTable;
use tenancy_core::{Placement, Tenant, TenantContext, TenantId};
use tenancy_sqlx::backup::{
    TableSpec, insert_pg_row, insert_sqlite_row, read_pg_table_sum, read_sqlite_table_sum,
    write_pg_table, write_sqlite_table,
};
use tenancy_sqlx::tenant_migrate::{MigrationTarget, TenantMigration, TenantMigrator};
use tenancy_sqlx::{DatabaseRouter, TenantDb, migrate};
use tenancy_testkit::TestDb;

const ROWS: u32 = 100_000;
/// The most the resident set may grow while restoring (KiB).
const BUDGET_KIB: u64 = 32 * 1024;
const NOTE: usize = 200;

fn spec(name: &str) -> TableSpec {
    TableSpec::new(
        name,
        "id",
        &[
            ("tenant_id", ColumnType::Uuid),
            ("id", ColumnType::Uuid),
            ("n", ColumnType::Int),
            ("note", ColumnType::Text),
            ("at", ColumnType::Timestamp),
        ],
    )
}

const PG_DDL: &str = "(tenant_id uuid NOT NULL, id uuid NOT NULL, n bigint NOT NULL, note text, at timestamptz, \
     PRIMARY KEY (tenant_id, id))";

/// Runs `f` and returns how far the peak resident set rose (KiB).
async fn peak_growth<T>(f: impl AsyncFnOnce() -> T) -> (T, u64) {
    tenancy_testkit::memory::peak_growth_kib(f).await.unwrap()
}

fn open<'k>(path: &Path, key: &'k BackupKey) -> BackupReader<'k, BufReader<std::fs::File>> {
    BackupReader::new(BufReader::new(std::fs::File::open(path).unwrap()), key).unwrap()
}

#[allow(clippy::print_stdout)] // the figures go to the test log
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100k_row_table_moves_through_every_placement_in_bounded_memory() {
    let key = BackupKey::new([9u8; 32]);
    let env = TestDb::from_env().unwrap();
    let owner = env.owner_pool(2).await.unwrap();
    migrate::run(&mut owner.acquire().await.unwrap())
        .await
        .unwrap();
    let admin = env.admin_pool(1).await.unwrap();
    let id = TenantId::new_v4();
    let tenant = Tenant::new(id, "moving".parse().unwrap(), "Moving");
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..10];
    let table = format!("backup_rows_{suffix}");
    let s = spec(&table);
    let work = tempfile::tempdir().unwrap();

    // The source: a SQLite file of the tenant's own.
    let mut lite = sqlx::SqliteConnection::connect(&format!(
        "sqlite://{}?mode=rwc",
        work.path().join("source.sqlite3").display()
    ))
    .await
    .unwrap();
    sqlx::query(&format!(
        "CREATE TABLE {table} (tenant_id TEXT NOT NULL, id TEXT PRIMARY KEY, n INTEGER NOT NULL, \
         note TEXT, at TEXT)"
    ))
    .execute(&mut lite)
    .await
    .unwrap();
    let mut tx = lite.begin().await.unwrap();
    for i in 0..ROWS {
        let row = [
            json!(id.to_string()),
            json!(uuid::Uuid::new_v4().to_string()),
            json!(i64::from(i) * 7919),
            json!(format!("{i:0>NOTE$}")),
            json!(format!(
                "2026-12-07T10:{:02}:{:02}.123456Z",
                i / 60 % 60,
                i % 60
            )),
        ];
        insert_sqlite_row(&mut tx, &s, &row).await.unwrap();
    }
    tx.commit().await.unwrap();
    let source_sum = read_sqlite_table_sum(&mut lite, &s).await.unwrap();
    assert_eq!(source_sum.rows, u64::from(ROWS));

    let backup = |name: &str| work.path().join(name);
    let header = || BackupHeader::new(id, "moving", Utc::now(), Value::Null);
    let f1 = backup("from-sqlite");
    let mut w = BackupWriter::new(
        BufWriter::new(std::fs::File::create(&f1).unwrap()),
        &key,
        header(),
    )
    .unwrap();
    write_sqlite_table(&mut lite, &s, &mut w).await.unwrap();
    w.finish().unwrap();

    // Into a schema of its own, as the application role.
    let schema_tenant = TenantContext::new(
        tenant
            .clone()
            .with_placement(Placement::schema(&Placement::name_for(id)).unwrap()),
    );
    let ddl = format!(
        "CREATE TABLE {table} {PG_DDL};\n{}",
        TenantTable::new(&table)
            .index_on(["id"])
            .grant_to("tenancy_app")
            .ddl()
    );
    TenantMigrator::new(vec![TenantMigration::new(1, "rows", &ddl)])
        .unwrap()
        .provision(
            &owner,
            &MigrationTarget::from_tenant(schema_tenant.tenant()).unwrap(),
            &["tenancy_app"],
        )
        .await
        .unwrap();
    let pool = TenantDb::pool_options()
        .max_connections(2)
        .connect(&env.app_url)
        .await
        .unwrap();
    let db = TenantDb::new(pool, env.seal_key().await.unwrap())
        .with_databases(DatabaseRouter::new(env.app_url.parse().unwrap()));

    let restore_pg = async |file: &Path, ctx: &TenantContext| {
        let mut r = open(file, &key);
        let mut tx = db.begin(ctx).await.unwrap();
        loop {
            match r.next().unwrap() {
                BackupEvent::Row(v) => insert_pg_row(&mut tx, &s, &v).await.unwrap(),
                BackupEvent::Sealed(m) => {
                    tx.commit().await.unwrap();
                    return m;
                }
                _ => {}
            }
        }
    };
    // A PostgreSQL placement's table, checked against the source and backed
    // up to a new file.
    let backup_pg = async |ctx: &TenantContext, name: &str| {
        let mut tx = db.begin(ctx).await.unwrap();
        assert_eq!(read_pg_table_sum(&mut tx, &s).await.unwrap(), source_sum);
        let path = backup(name);
        let mut w = BackupWriter::new(
            BufWriter::new(std::fs::File::create(&path).unwrap()),
            &key,
            header(),
        )
        .unwrap();
        write_pg_table(&mut tx, &s, &mut w).await.unwrap();
        w.finish().unwrap();
        tx.commit().await.unwrap();
        path
    };
    let (m, into_schema) = peak_growth(async || restore_pg(&f1, &schema_tenant).await).await;
    assert_eq!(m.tables[&table], source_sum);
    let f2 = backup_pg(&schema_tenant, "from-schema").await;

    // Into the shared tables, under row-level security.
    sqlx::query(&format!("CREATE TABLE public.{table} {PG_DDL}"))
        .execute(&owner)
        .await
        .unwrap();
    sqlx::raw_sql(
        &TenantTable::new(&table)
            .index_on(["id"])
            .grant_to("tenancy_app")
            .ddl(),
    )
    .execute(&owner)
    .await
    .unwrap();
    let shared_tenant = TenantContext::new(tenant.clone().with_placement(Placement::Shared));
    let (m, into_shared) = peak_growth(async || restore_pg(&f2, &shared_tenant).await).await;
    assert_eq!(m.tables[&table], source_sum);
    let f3 = backup_pg(&shared_tenant, "from-shared").await;
    // Another tenant sees none of it.
    let other = TenantContext::new(Tenant::new(
        TenantId::new_v4(),
        "other".parse().unwrap(),
        "Other",
    ));
    let mut tx = db.begin(&other).await.unwrap();
    assert_eq!(read_pg_table_sum(&mut tx, &s).await.unwrap().rows, 0);
    tx.commit().await.unwrap();

    // Into a database of its own (row-level security kept inside).
    let database = Placement::name_for(id);
    sqlx::raw_sql(&format!(
        "CREATE DATABASE \"{database}\" OWNER tenancy_owner"
    ))
    .execute(&admin)
    .await
    .unwrap();
    let owner_opts: PgConnectOptions = env.owner_url.parse().unwrap();
    let in_db = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(owner_opts.database(&database))
        .await
        .unwrap();
    tenancy_sqlx::migrate::install_seal(
        &mut in_db.acquire().await.unwrap(),
        &env.seal_key().await.unwrap(),
    )
    .await
    .unwrap();
    sqlx::query(&format!("CREATE TABLE public.{table} {PG_DDL}"))
        .execute(&in_db)
        .await
        .unwrap();
    sqlx::raw_sql(
        &TenantTable::new(&table)
            .schema("public")
            .index_on(["id"])
            .grant_to("tenancy_app")
            .ddl(),
    )
    .execute(&in_db)
    .await
    .unwrap();
    in_db.close().await;
    let database_tenant = TenantContext::new(
        tenant
            .clone()
            .with_placement(Placement::database(&database).unwrap()),
    );
    let (m, into_database) = peak_growth(async || restore_pg(&f3, &database_tenant).await).await;
    assert_eq!(m.tables[&table], source_sum);
    let f4 = backup_pg(&database_tenant, "from-database").await;

    // And back into a SQLite file.
    let mut target = sqlx::SqliteConnection::connect(&format!(
        "sqlite://{}?mode=rwc",
        work.path().join("target.sqlite3").display()
    ))
    .await
    .unwrap();
    sqlx::query(&format!(
        "CREATE TABLE {table} (tenant_id TEXT NOT NULL, id TEXT PRIMARY KEY, n INTEGER NOT NULL, \
         note TEXT, at TEXT)"
    ))
    .execute(&mut target)
    .await
    .unwrap();
    let (m, into_sqlite) = peak_growth(async || {
        let mut r = open(&f4, &key);
        let mut tx = target.begin().await.unwrap();
        loop {
            match r.next().unwrap() {
                BackupEvent::Row(v) => insert_sqlite_row(&mut tx, &s, &v).await.unwrap(),
                BackupEvent::Sealed(m) => {
                    tx.commit().await.unwrap();
                    return m;
                }
                _ => {}
            }
        }
    })
    .await;
    assert_eq!(m.tables[&table], source_sum);
    assert_eq!(
        read_sqlite_table_sum(&mut target, &s).await.unwrap(),
        source_sum
    );

    // The broken twin: the same file read into memory before loading.
    let (held, buffered) = peak_growth(async || {
        let mut r = open(&f3, &key);
        let mut rows = Vec::new();
        loop {
            match r.next().unwrap() {
                BackupEvent::Row(v) => rows.push(v),
                BackupEvent::Sealed(_) => return rows.len(),
                _ => {}
            }
        }
    })
    .await;
    assert_eq!(held, ROWS as usize);
    let size = std::fs::metadata(&f3).unwrap().len() / 1024;
    println!(
        "{ROWS} rows, backup file {size} KiB; peak RSS growth while restoring: \
         into a schema {into_schema} KiB, into shared tables {into_shared} KiB, \
         into a database of its own {into_database} KiB, into a SQLite file {into_sqlite} KiB; reading it into memory first {buffered} KiB"
    );
    for (what, kib) in [
        ("schema", into_schema),
        ("shared", into_shared),
        ("database", into_database),
        ("sqlite", into_sqlite),
    ] {
        assert!(
            kib < BUDGET_KIB,
            "restoring into {what} grew the resident set by {kib} KiB"
        );
    }
    assert!(
        buffered > BUDGET_KIB,
        "the twin holding every row grew only {buffered} KiB: the measurement cannot see growth"
    );

    drop(db);
    sqlx::raw_sql(&format!("DROP DATABASE \"{database}\" WITH (FORCE)"))
        .execute(&admin)
        .await
        .unwrap();
    sqlx::query(&format!("DROP TABLE public.{table}"))
        .execute(&admin)
        .await
        .unwrap();
    sqlx::query(&format!(
        "DROP SCHEMA {} CASCADE",
        MigrationTarget::from_tenant(schema_tenant.tenant())
            .unwrap()
            .schema
    ))
    .execute(&admin)
    .await
    .unwrap();
}
