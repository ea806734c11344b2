//! The cost of the SQLite file-per-tenant door, against a baseline in the
//! same run.
//!
//! Run: `scripts/bench --bench sqlite` (no server needed).
//!
//! One tenant file (WAL, `synchronous = NORMAL`) with 5 000 rows, primary key
//! (tenant_id, id); every variant runs the same point read in a transaction
//! on a one-connection pool:
//!
//! - `point_read/raw_tx` (**baseline**): a plain `SqlitePool` on the same
//!   file with the same connection options, `BEGIN`, read, `COMMIT`.
//! - `point_read/scoped_tx`: `SqliteTenantDb::begin(&ctx)` (pool cache
//!   lookup, placement routing, span), read, commit.
//! - `write/raw_tx` vs `write/scoped_tx`: one `UPDATE` in a
//!   `BEGIN IMMEDIATE` transaction instead of the read.
//! - `sqlite_provision/tenant_file`: provisioning one tenant of the SQLite
//!   model (file created in WAL mode, stamped, migrated); the rate is its
//!   inverse. No baseline: a rate, compared with the other models' in
//!   docs/benchmarks.md.
//! - `sqlite_migrate_1000/noop_check`: `SqliteTenantDb::migrate` across 1 000
//!   tenant files already at the latest version (one short read per file).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use tenancy_benches::interleaved;
use tenancy_core::{Placement, Tenant, TenantContext, TenantId};
use tenancy_sqlx::sqlite::{SqliteTenantDb, guard_table_sql};
use tenancy_sqlx::tenant_migrate::{TenantMigration, TenantMigrator};
use uuid::Uuid;

const ROWS: i64 = 5_000;

struct Setup {
    _dir: tempfile::TempDir,
    ctx: TenantContext,
    probe: String,
    raw: SqlitePool,
    db: SqliteTenantDb,
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let id = TenantId::new_v4();
    let ctx = TenantContext::new(
        Tenant::new(id, "bench".parse().unwrap(), "bench")
            .with_placement(Placement::database(&Placement::name_for(id)).unwrap()),
    );
    let db = SqliteTenantDb::new(dir.path())
        .max_pools(1)
        .connection_budget(1);
    let migrator = TenantMigrator::new(vec![TenantMigration::new(
        1,
        "items",
        &format!(
            "CREATE TABLE items (tenant_id TEXT NOT NULL, id TEXT NOT NULL, value INTEGER NOT NULL, \
             payload TEXT NOT NULL, PRIMARY KEY (tenant_id, id));\n{}",
            guard_table_sql("items")
        ),
    )])
    .unwrap();
    db.provision(ctx.tenant(), &migrator).await.unwrap();
    let path = db.path_of(ctx.tenant()).unwrap();
    let raw = SqlitePoolOptions::new()
        .max_connections(1)
        .min_connections(1)
        .connect_with(
            SqliteConnectOptions::new()
                .filename(&path)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .foreign_keys(true),
        )
        .await
        .unwrap();
    let tenant = id.to_string();
    let mut tx = raw.begin().await.unwrap();
    for i in 0..ROWS {
        sqlx::query("INSERT INTO items (tenant_id, id, value, payload) VALUES (?, ?, ?, ?)")
            .bind(&tenant)
            .bind(Uuid::new_v4().to_string())
            .bind(i)
            .bind("x".repeat(64))
            .execute(&mut *tx)
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
    let probe: String = sqlx::query_scalar("SELECT id FROM items ORDER BY id LIMIT 1 OFFSET 2500")
        .fetch_one(&raw)
        .await
        .unwrap();
    Setup {
        _dir: dir,
        ctx,
        probe,
        raw,
        db,
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Variant {
    RawRead,
    ScopedRead,
    RawWrite,
    ScopedWrite,
}

const READ: &str = "SELECT id, value, payload FROM items WHERE tenant_id = ? AND id = ?";
const WRITE: &str = "UPDATE items SET value = value + 1 WHERE tenant_id = ? AND id = ?";

impl Setup {
    async fn run(&self, v: Variant) {
        let tenant = self.ctx.tenant_id().to_string();
        match v {
            Variant::RawRead => {
                let mut tx = self.raw.begin().await.unwrap();
                let row: (String, i64, String) = sqlx::query_as(READ)
                    .bind(&tenant)
                    .bind(&self.probe)
                    .fetch_one(&mut *tx)
                    .await
                    .unwrap();
                tx.commit().await.unwrap();
                black_box(row);
            }
            Variant::ScopedRead => {
                let mut tx = self.db.begin(&self.ctx).await.unwrap();
                let row: (String, i64, String) = sqlx::query_as(READ)
                    .bind(&tenant)
                    .bind(&self.probe)
                    .fetch_one(&mut *tx)
                    .await
                    .unwrap();
                tx.commit().await.unwrap();
                black_box(row);
            }
            Variant::RawWrite => {
                let mut tx = self.raw.begin_with("BEGIN IMMEDIATE").await.unwrap();
                sqlx::query(WRITE)
                    .bind(&tenant)
                    .bind(&self.probe)
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                tx.commit().await.unwrap();
            }
            Variant::ScopedWrite => {
                let mut tx = self.db.begin_immediate(&self.ctx).await.unwrap();
                sqlx::query(WRITE)
                    .bind(&tenant)
                    .bind(&self.probe)
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                tx.commit().await.unwrap();
            }
        }
    }
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let s = rt.block_on(setup());
    let run = |v| s.run(v);
    interleaved(
        c,
        &rt,
        "sqlite_point_read",
        &[
            ("raw_tx", Variant::RawRead),
            ("scoped_tx", Variant::ScopedRead),
        ],
        run,
    );
    interleaved(
        c,
        &rt,
        "sqlite_write",
        &[
            ("raw_tx", Variant::RawWrite),
            ("scoped_tx", Variant::ScopedWrite),
        ],
        run,
    );
}

fn migrator() -> TenantMigrator {
    TenantMigrator::new(vec![TenantMigration::new(
        1,
        "items",
        &format!(
            "CREATE TABLE items (tenant_id TEXT NOT NULL, id TEXT NOT NULL, value INTEGER NOT NULL, \
             payload TEXT NOT NULL, PRIMARY KEY (tenant_id, id));\n{}",
            guard_table_sql("items")
        ),
    )])
    .unwrap()
}

fn file_tenant() -> Tenant {
    let id = TenantId::new_v4();
    Tenant::new(id, "bench".parse().unwrap(), "bench")
        .with_placement(Placement::database(&Placement::name_for(id)).unwrap())
}

fn scale(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = SqliteTenantDb::new(dir.path());
    let m = migrator();
    let mut g = c.benchmark_group("sqlite_provision");
    g.sample_size(30);
    g.bench_function("tenant_file", |b| {
        b.to_async(&rt)
            .iter(|| async { db.provision(&file_tenant(), &m).await.unwrap() });
    });
    g.finish();

    let dir = tempfile::tempdir().unwrap();
    let db = SqliteTenantDb::new(dir.path());
    let tenants: Vec<Tenant> = (0..1_000).map(|_| file_tenant()).collect();
    rt.block_on(async {
        for t in &tenants {
            db.provision(t, &m).await.unwrap();
        }
    });
    let mut g = c.benchmark_group("sqlite_migrate_1000");
    g.sample_size(10);
    g.bench_function("noop_check", |b| {
        b.to_async(&rt).iter(|| async {
            let r = db.migrate(&m, &tenants, |_| {}).await.unwrap();
            assert_eq!(r.up_to_date, 1_000);
        });
    });
    g.finish();
}

criterion_group!(benches, bench, scale);
criterion_main!(benches);
