//! A tenant of 100 000 customers backed up from its SQLite file and restored
//! into the shared PostgreSQL tables and into another SQLite deployment,
//! through the reference app's own backup and restore: checksums equal, and
//! memory bounded by a constant — the peak resident set rises by less than
//! [`BUDGET_KIB`] for each backup and restore, where holding the backup's
//! rows in memory (the broken twin) rises past it.
//!
//! Its own test binary: the peak resident set is per process.
#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

#[macro_use]
mod common;

use std::io::BufReader;

use common::{Backend, fresh_database, start, tenant};
use insurance_agent::backup::{RestoreOptions, backup_to, restore_from, table_sums};
use insurance_agent::data::Data;
use tenancy_core::TenantContext;
use tenancy_core::backup::{BackupEvent, BackupKey, BackupReader};
use tenancy_testkit::memory::peak_growth_kib;

const CUSTOMERS: u32 = 100_000;
/// The most the resident set may rise during a backup or a restore (KiB).
const BUDGET_KIB: u64 = 48 * 1024;

fn copy_keys(from: &std::path::Path, to: &std::path::Path) {
    for f in ["master.key", "keks.json", "audit.key"] {
        std::fs::copy(from.join(f), to.join(f)).unwrap();
    }
}

#[allow(clippy::print_stdout)] // the figures go to the test log
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100k_customer_tenant_backs_up_and_restores_in_bounded_memory() {
    let key = BackupKey::new([1u8; 32]);
    let source = start(Backend::Sqlite).await;
    let data = &source.running.data;
    let sunrise = tenant(&source, "sunrise-insurance").await;
    // 100 000 customers, written straight into the tenant's file.
    let mut tx = data
        .begin_write(&TenantContext::new(sunrise.clone()))
        .await
        .unwrap();
    let added = insurance_agent::on!(
        tx,
        sqlx::query(&format!(
            "INSERT INTO customers (tenant_id, id, agent_id, first_name, last_name, \
             customer_type, email, created_at) \
             WITH RECURSIVE n(i, h) AS (SELECT 1, hex(randomblob(16)) \
                 UNION ALL SELECT i + 1, hex(randomblob(16)) FROM n WHERE i < {CUSTOMERS}) \
             SELECT c.tenant_id, lower(substr(h, 1, 8) || '-' || substr(h, 9, 4) || '-4' || \
                    substr(h, 14, 3) || '-a' || substr(h, 18, 3) || '-' || substr(h, 21, 12)), \
                    c.agent_id, 'Load', 'Customer ' || i, c.customer_type, \
                    'load' || i || '@example.test', c.created_at \
             FROM n, (SELECT * FROM customers LIMIT 1) AS c"
        )),
        execute
    )
    .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(added, u64::from(CUSTOMERS));

    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("big.backup");
    let (report, backup_kib) = peak_growth_kib(async || {
        backup_to(data, &sunrise, &file, &key, &|_| {})
            .await
            .unwrap()
    })
    .await
    .unwrap();
    let customers = report.manifest.tables["customers"];
    assert!(customers.rows > u64::from(CUSTOMERS));

    // Into the shared PostgreSQL tables.
    let (_db, urls) = fresh_database().await;
    let pg_dir = tempfile::tempdir().unwrap();
    copy_keys(source._dir.path(), pg_dir.path());
    let pg = Data::open_postgres(pg_dir.path(), &urls).await.unwrap();
    let ((in_pg, _), shared_kib) = peak_growth_kib(async || {
        restore_from(&pg, &file, &key, RestoreOptions::default(), &|_, _| {})
            .await
            .unwrap()
    })
    .await
    .unwrap();
    for (table, sum) in table_sums(&pg, &in_pg).await.unwrap() {
        assert_eq!(Some(&sum), report.manifest.tables.get(&table), "{table}");
    }
    drop(pg);

    // Into another SQLite deployment (a file of its own).
    let lite_dir = tempfile::tempdir().unwrap();
    copy_keys(source._dir.path(), lite_dir.path());
    let lite = Data::open(lite_dir.path()).await.unwrap();
    let ((in_file, _), file_kib) = peak_growth_kib(async || {
        restore_from(&lite, &file, &key, RestoreOptions::default(), &|_, _| {})
            .await
            .unwrap()
    })
    .await
    .unwrap();
    for (table, sum) in table_sums(&lite, &in_file).await.unwrap() {
        assert_eq!(Some(&sum), report.manifest.tables.get(&table), "{table}");
    }

    // The broken twin: the backup's rows held in memory.
    let (held, twin_kib) = peak_growth_kib(async || {
        let mut r =
            BackupReader::new(BufReader::new(std::fs::File::open(&file).unwrap()), &key).unwrap();
        let mut rows = Vec::new();
        loop {
            match r.next().unwrap() {
                BackupEvent::Row(v) => rows.push(v),
                BackupEvent::Sealed(_) => return rows.len(),
                _ => {}
            }
        }
    })
    .await
    .unwrap();
    assert!(held > CUSTOMERS as usize);
    let size = std::fs::metadata(&file).unwrap().len() / 1024;
    println!(
        "{} customers, backup {size} KiB; peak RSS growth: backup {backup_kib} KiB, \
         restore into shared tables {shared_kib} KiB, into a SQLite file {file_kib} KiB; \
         rows held in memory {twin_kib} KiB",
        customers.rows
    );
    for (what, kib) in [
        ("backup", backup_kib),
        ("restore into shared tables", shared_kib),
        ("restore into a SQLite file", file_kib),
    ] {
        assert!(
            kib < BUDGET_KIB,
            "{what} grew the resident set by {kib} KiB"
        );
    }
    assert!(
        twin_kib > BUDGET_KIB,
        "the twin holding every row grew only {twin_kib} KiB: the measurement cannot see growth"
    );
    source.running.stop().await.unwrap();
}
