//! Tables through the portable backup stream: SQLite → backup →
//! PostgreSQL → backup → SQLite, with every column type, and the
//! order-independent checksums equal at each step; an altered stream is
//! refused before anything is committed.
#![cfg(feature = "sqlite")]
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use chrono::Utc;
use serde_json::{Value, json};
use sqlx::Connection as _;
use tenancy_core::TenantId;
use tenancy_core::backup::{
    BackupEvent, BackupHeader, BackupKey, BackupReader, BackupWriter, ColumnType, Manifest,
};
use tenancy_sqlx::backup::{
    TableSpec, insert_pg_row, insert_sqlite_row, read_pg_table_sum, read_sqlite_table_sum,
    write_pg_table, write_sqlite_table,
};
use tenancy_testkit::TestDb;

fn spec(name: &str) -> TableSpec {
    TableSpec::new(
        name,
        "id",
        &[
            ("id", ColumnType::Uuid),
            ("n", ColumnType::Int),
            ("price", ColumnType::Float),
            ("flag", ColumnType::Bool),
            ("blob", ColumnType::Bytes),
            ("doc", ColumnType::Json),
            ("day", ColumnType::Date),
            ("at", ColumnType::Timestamp),
            ("note", ColumnType::Text),
        ],
    )
}

fn rows(n: u32) -> Vec<Vec<Value>> {
    (0..n)
        .map(|i| {
            vec![
                json!(uuid::Uuid::new_v4().to_string()),
                json!(i64::from(i) * 1_000_000_007),
                json!(f64::from(i) / 4.0),
                json!(i % 2 == 0),
                if i % 3 == 0 {
                    Value::Null
                } else {
                    json!("AAECAwQ")
                },
                json!({"b": i, "a": [1, null, "x"]}),
                json!("2026-02-28"),
                // Nanoseconds: the backup keeps microseconds, as PostgreSQL does.
                json!(format!("2026-12-07T10:00:{:02}.123456789Z", i % 60)),
                if i % 5 == 0 {
                    Value::Null
                } else {
                    json!(format!("note ü {i}"))
                },
            ]
        })
        .collect()
}

const SQLITE_DDL: &str = "(id TEXT PRIMARY KEY, n INTEGER, price REAL, flag INTEGER, blob BLOB, \
                          doc TEXT, day TEXT, at TEXT, note TEXT)";

async fn restore(
    bytes: &[u8],
    key: &BackupKey,
    mut insert: impl AsyncFnMut(&[Value]),
) -> Result<Manifest, tenancy_core::backup::BackupError> {
    let mut r = BackupReader::new(bytes, key)?;
    loop {
        match r.next()? {
            BackupEvent::Row(v) => insert(&v).await,
            BackupEvent::Sealed(m) => return Ok(m),
            _ => {}
        }
    }
}

#[tokio::test]
async fn tables_cross_backends_with_equal_checksums() {
    let key = BackupKey::new([4u8; 32]);
    let header = || BackupHeader::new(TenantId::new_v4(), "t", Utc::now(), Value::Null);
    let dir = tempfile::tempdir().unwrap();
    let mut lite = sqlx::SqliteConnection::connect(&format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("a.sqlite3").display()
    ))
    .await
    .unwrap();
    for t in ["src", "back"] {
        sqlx::query(&format!("CREATE TABLE {t} {SQLITE_DDL}"))
            .execute(&mut lite)
            .await
            .unwrap();
    }
    let src = spec("src");
    for r in rows(500) {
        insert_sqlite_row(&mut lite, &src, &r).await.unwrap();
    }
    let mut first = Vec::new();
    let mut w = BackupWriter::new(&mut first, &key, header()).unwrap();
    write_sqlite_table(&mut lite, &src, &mut w).await.unwrap();
    let m1 = w.finish().unwrap();
    assert_eq!(m1.tables["src"].rows, 500);

    // Into PostgreSQL's own types.
    let env = TestDb::from_env().unwrap();
    let admin = env.admin_pool(1).await.unwrap();
    let table = format!(
        "backup_probe_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    sqlx::query(&format!(
        "CREATE TABLE public.{table} (id uuid PRIMARY KEY, n bigint, price double precision, \
         flag boolean, blob bytea, doc jsonb, day date, at timestamptz, note text)"
    ))
    .execute(&admin)
    .await
    .unwrap();
    let pg = spec(&table);
    let mut conn = admin.acquire().await.unwrap();
    let mut tx = conn.begin().await.unwrap();
    let m = restore(&first, &key, async |v| {
        insert_pg_row(&mut tx, &pg, v).await.unwrap();
    })
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(m, m1);
    let pg_sum = read_pg_table_sum(&mut conn, &pg).await.unwrap();
    assert_eq!(
        pg_sum, m1.tables["src"],
        "the restored table matches its source"
    );

    // And back out of PostgreSQL into SQLite.
    let mut second = Vec::new();
    let mut w = BackupWriter::new(&mut second, &key, header()).unwrap();
    let from_pg = write_pg_table(&mut conn, &pg, &mut w).await.unwrap();
    w.finish().unwrap();
    assert_eq!(from_pg, m1.tables["src"]);
    let back = spec("back");
    restore(&second, &key, async |v| {
        insert_sqlite_row(&mut lite, &back, v).await.unwrap();
    })
    .await
    .unwrap();
    assert_eq!(
        read_sqlite_table_sum(&mut lite, &back).await.unwrap(),
        from_pg
    );

    // A single altered value: refused, at the latest when its table ends.
    let text = String::from_utf8(second)
        .unwrap()
        .replacen("note ü 1", "note u 1", 1);
    let mut inserted = 0;
    let refused = restore(text.as_bytes(), &key, async |_| inserted += 1).await;
    assert!(refused.is_err());
    drop(conn);
    sqlx::query(&format!("DROP TABLE public.{table}"))
        .execute(&admin)
        .await
        .unwrap();
}

/// `TenantDb::begin_snapshot`: two reads of a table see the same rows
/// though another transaction commits between them; with `begin` (the
/// twin) the second read sees the new row.
#[tokio::test]
async fn a_snapshot_transaction_reads_one_instant() {
    use tenancy_core::rls::TenantTable;
    use tenancy_core::{Tenant, TenantContext};
    let env = TestDb::from_env().unwrap();
    let owner = env.owner_pool(1).await.unwrap();
    tenancy_sqlx::migrate::run(&mut owner.acquire().await.unwrap())
        .await
        .unwrap();
    let table = format!(
        "snapshot_probe_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    sqlx::query(&format!(
        "CREATE TABLE {table} (tenant_id uuid NOT NULL, id uuid NOT NULL, \
         PRIMARY KEY (tenant_id, id))"
    ))
    .execute(&owner)
    .await
    .unwrap();
    sqlx::raw_sql(&TenantTable::new(&table).grant_to("tenancy_app").ddl())
        .execute(&owner)
        .await
        .unwrap();
    let pool = tenancy_sqlx::TenantDb::pool_options()
        .max_connections(3)
        .connect(&env.app_url)
        .await
        .unwrap();
    let db = tenancy_sqlx::TenantDb::new(pool, env.seal_key().await.unwrap());
    let id = TenantId::new_v4();
    let ctx = TenantContext::new(Tenant::new(id, "snap".parse().unwrap(), "Snap"));
    let count = format!("SELECT count(*) FROM {table}");
    let insert = async || {
        let mut w = db.begin(&ctx).await.unwrap();
        sqlx::query(&format!("INSERT INTO {table} VALUES ($1, $2)"))
            .bind(id.as_uuid())
            .bind(uuid::Uuid::new_v4())
            .execute(&mut *w)
            .await
            .unwrap();
        w.commit().await.unwrap();
    };
    let mut snap = db.begin_snapshot(&ctx).await.unwrap();
    let mut plain = db.begin(&ctx).await.unwrap();
    let first: i64 = sqlx::query_scalar(&count)
        .fetch_one(&mut *snap)
        .await
        .unwrap();
    let plain_first: i64 = sqlx::query_scalar(&count)
        .fetch_one(&mut *plain)
        .await
        .unwrap();
    insert().await;
    let second: i64 = sqlx::query_scalar(&count)
        .fetch_one(&mut *snap)
        .await
        .unwrap();
    let plain_second: i64 = sqlx::query_scalar(&count)
        .fetch_one(&mut *plain)
        .await
        .unwrap();
    snap.commit().await.unwrap();
    plain.commit().await.unwrap();
    assert_eq!((first, second), (0, 0), "the snapshot holds");
    assert_eq!((plain_first, plain_second), (0, 1), "twin: begin does not");
    sqlx::query(&format!("DROP TABLE {table}"))
        .execute(&env.admin_pool(1).await.unwrap())
        .await
        .unwrap();
}
