//! Backup and restore throughput per placement, against the hand-written
//! equivalent in the same run.
//!
//! Run: `scripts/bench --bench backup` (starts the throwaway PostgreSQL).
//!
//! One tenant's table of 10 000 rows (two UUIDs, a bigint, a 200-character
//! note, an instant) in the shared PostgreSQL tables under row-level
//! security (`TenantDb::begin`, the application role) and in a SQLite file.
//! Criterion reports rows per second (`Throughput::Elements`).
//!
//! - `backup_*/select_rows` (**baseline**): streaming every row of the table
//!   in a tenant transaction and dropping it — the read a hand-written dump
//!   does at the least.
//! - `backup_*/write_table`: `write_*_table` into a sealed `BackupWriter`
//!   (typed, normalised values, checksum, HMAC) to a sink.
//! - `restore_*/insert_rows` (**baseline**): deleting the table's rows and
//!   inserting the same rows, held in memory, with one prepared `INSERT`
//!   each, in one transaction (rolled back, so the table stays as it is).
//! - `restore_*/from_backup`: the same delete, then the rows read from a
//!   sealed backup in memory (`BackupReader`: types, checksum, seal) and
//!   `insert_*_row` each, in one transaction (rolled back).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use futures_util::TryStreamExt as _;
use serde_json::{Value, json};
use sqlx::Connection as _;
use tenancy_core::backup::{
    BackupEvent, BackupHeader, BackupKey, BackupReader, BackupWriter, ColumnType,
};
use tenancy_core::{Tenant, TenantContext, TenantId};
use tenancy_sqlx::TenantDb;
use tenancy_sqlx::backup::{
    TableSpec, insert_pg_row, insert_sqlite_row, write_pg_table, write_sqlite_table,
};
use tenancy_sqlx::rls::{ApplyTenantTable, TenantTable};
use tenancy_testkit::TestDb;

const ROWS: u32 = 10_000;

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

fn rows(tenant: TenantId) -> Vec<Vec<Value>> {
    (0..ROWS)
        .map(|i| {
            vec![
                json!(tenant.to_string()),
                json!(uuid::Uuid::new_v4().to_string()),
                json!(i64::from(i) * 7919),
                json!(format!("{i:0>200}")),
                json!(format!(
                    "2026-12-07T10:{:02}:{:02}.123456Z",
                    i / 60 % 60,
                    i % 60
                )),
            ]
        })
        .collect()
}

fn sealed(key: &BackupKey, tenant: TenantId, spec: &TableSpec, rows: &[Vec<Value>]) -> Vec<u8> {
    let mut out = Vec::new();
    let header = BackupHeader::new(tenant, "bench", chrono::Utc::now(), Value::Null);
    let mut w = BackupWriter::new(&mut out, key, header).unwrap();
    w.begin_table(&spec.name, spec.columns.clone()).unwrap();
    for r in rows {
        w.row(r.clone()).unwrap();
    }
    w.end_table().unwrap();
    w.finish().unwrap();
    out
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let key = BackupKey::new([5u8; 32]);
    let tenant_id = TenantId::new_v4();
    let ctx = TenantContext::new(Tenant::new(tenant_id, "bench".parse().unwrap(), "Bench"));
    let table = format!(
        "backup_bench_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    );
    let s = spec(&table);
    let data = rows(tenant_id);
    let file = sealed(&key, tenant_id, &s, &data);
    let dir = tempfile::tempdir().unwrap();
    let (db, mut lite) = rt.block_on(async {
        let env =
            TestDb::from_env().expect("benchmarks need the database: run them with scripts/bench");
        let owner = env.owner_pool(1).await.unwrap();
        let mut conn = owner.acquire().await.unwrap();
        tenancy_sqlx::migrate::run(&mut conn).await.unwrap();
        sqlx::query(&format!(
            "CREATE TABLE {table} (tenant_id uuid NOT NULL, id uuid NOT NULL, n bigint NOT NULL, \
             note text, at timestamptz, PRIMARY KEY (tenant_id, id))"
        ))
        .execute(&mut *conn)
        .await
        .unwrap();
        TenantTable::new(&table)
            .index_on(["id"])
            .grant_to("tenancy_app")
            .apply(&mut conn)
            .await
            .unwrap();
        let pool = TenantDb::pool_options()
            .max_connections(1)
            .connect(&env.app_url)
            .await
            .unwrap();
        let db = TenantDb::new(pool, env.seal_key().await.unwrap());
        let mut tx = db.begin(&ctx).await.unwrap();
        for r in &data {
            insert_pg_row(&mut tx, &s, r).await.unwrap();
        }
        tx.commit().await.unwrap();
        let mut lite = sqlx::SqliteConnection::connect(&format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("bench.sqlite3").display()
        ))
        .await
        .unwrap();
        sqlx::query(&format!(
            "CREATE TABLE {table} (tenant_id TEXT NOT NULL, id TEXT PRIMARY KEY, \
             n INTEGER NOT NULL, note TEXT, at TEXT)"
        ))
        .execute(&mut lite)
        .await
        .unwrap();
        let mut tx = lite.begin().await.unwrap();
        for r in &data {
            insert_sqlite_row(&mut tx, &s, r).await.unwrap();
        }
        tx.commit().await.unwrap();
        (db, lite)
    });
    let select = format!("SELECT tenant_id, id, n, note, at FROM {table} ORDER BY id");
    let insert =
        format!("INSERT INTO {table} (tenant_id, id, n, note, at) VALUES ($1, $2, $3, $4, $5)");

    let mut g = c.benchmark_group("backup_shared");
    g.sample_size(10)
        .throughput(Throughput::Elements(u64::from(ROWS)));
    g.bench_function("select_rows", |b| {
        b.iter(|| {
            rt.block_on(async {
                let mut tx = db.begin(&ctx).await.unwrap();
                let mut n = 0u32;
                {
                    let mut rows = sqlx::query(&select).fetch(&mut *tx);
                    while rows.try_next().await.unwrap().is_some() {
                        n += 1;
                    }
                }
                tx.commit().await.unwrap();
                assert_eq!(n, ROWS);
            });
        });
    });
    g.bench_function("write_table", |b| {
        b.iter(|| {
            rt.block_on(async {
                let mut tx = db.begin(&ctx).await.unwrap();
                let header = BackupHeader::new(tenant_id, "b", chrono::Utc::now(), Value::Null);
                let mut w = BackupWriter::new(std::io::sink(), &key, header).unwrap();
                let sum = write_pg_table(&mut tx, &s, &mut w).await.unwrap();
                w.finish().unwrap();
                tx.commit().await.unwrap();
                assert_eq!(sum.rows, u64::from(ROWS));
            });
        });
    });
    g.finish();

    let mut g = c.benchmark_group("restore_shared");
    g.sample_size(10)
        .throughput(Throughput::Elements(u64::from(ROWS)));
    g.bench_function("insert_rows", |b| {
        b.iter(|| {
            rt.block_on(async {
                let mut tx = db.begin(&ctx).await.unwrap();
                // The same rows as stored: delete them first inside the
                // transaction (rolled back), as `from_backup` does.
                sqlx::query(&format!("DELETE FROM {table}"))
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                for r in &data {
                    sqlx::query(&insert)
                        .bind(tenant_id.as_uuid())
                        .bind(uuid::Uuid::parse_str(r[1].as_str().unwrap()).unwrap())
                        .bind(r[2].as_i64())
                        .bind(r[3].as_str())
                        .bind(
                            r[4].as_str()
                                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok()),
                        )
                        .execute(&mut *tx)
                        .await
                        .unwrap();
                }
                tx.rollback().await.unwrap();
            });
        });
    });
    g.bench_function("from_backup", |b| {
        b.iter(|| {
            rt.block_on(async {
                let mut tx = db.begin(&ctx).await.unwrap();
                // The same rows as stored: delete them first inside the
                // transaction (rolled back), so keys do not collide.
                sqlx::query(&format!("DELETE FROM {table}"))
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                let mut r = BackupReader::new(&file[..], &key).unwrap();
                loop {
                    match r.next().unwrap() {
                        BackupEvent::Row(v) => insert_pg_row(&mut tx, &s, &v).await.unwrap(),
                        BackupEvent::Sealed(_) => break,
                        _ => {}
                    }
                }
                tx.rollback().await.unwrap();
            });
        });
    });
    g.finish();

    let mut g = c.benchmark_group("backup_sqlite");
    g.sample_size(10)
        .throughput(Throughput::Elements(u64::from(ROWS)));
    g.bench_function("select_rows", |b| {
        b.iter(|| {
            rt.block_on(async {
                let mut n = 0u32;
                let mut rows = sqlx::query(&select).fetch(&mut lite);
                while rows.try_next().await.unwrap().is_some() {
                    n += 1;
                }
                assert_eq!(n, ROWS);
            });
        });
    });
    g.bench_function("write_table", |b| {
        b.iter(|| {
            rt.block_on(async {
                let header = BackupHeader::new(tenant_id, "b", chrono::Utc::now(), Value::Null);
                let mut w = BackupWriter::new(std::io::sink(), &key, header).unwrap();
                let sum = write_sqlite_table(&mut lite, &s, &mut w).await.unwrap();
                w.finish().unwrap();
                assert_eq!(sum.rows, u64::from(ROWS));
            });
        });
    });
    g.finish();

    let mut g = c.benchmark_group("restore_sqlite");
    g.sample_size(10)
        .throughput(Throughput::Elements(u64::from(ROWS)));
    g.bench_function("insert_rows", |b| {
        b.iter(|| {
            rt.block_on(async {
                let mut tx = lite.begin().await.unwrap();
                sqlx::query(&format!("DELETE FROM {table}"))
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                for r in &data {
                    sqlx::query(&insert)
                        .bind(r[0].as_str())
                        .bind(r[1].as_str())
                        .bind(r[2].as_i64())
                        .bind(r[3].as_str())
                        .bind(r[4].as_str())
                        .execute(&mut *tx)
                        .await
                        .unwrap();
                }
                tx.rollback().await.unwrap();
            });
        });
    });
    g.bench_function("from_backup", |b| {
        b.iter(|| {
            rt.block_on(async {
                let mut tx = lite.begin().await.unwrap();
                sqlx::query(&format!("DELETE FROM {table}"))
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                let mut r = BackupReader::new(&file[..], &key).unwrap();
                loop {
                    match r.next().unwrap() {
                        BackupEvent::Row(v) => insert_sqlite_row(&mut tx, &s, &v).await.unwrap(),
                        BackupEvent::Sealed(_) => break,
                        _ => {}
                    }
                }
                tx.rollback().await.unwrap();
            });
        });
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
