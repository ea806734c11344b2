//! The cost of data-subject keys, against baselines in the same run.
//!
//! Run: `scripts/bench --bench subject`.
//!
//! - `subject_encrypt/tenant_key` (**baseline**): encrypting a 10-byte
//!   field with the tenant's data key (`Keyring::encrypt`, warm) — what a
//!   field costs without subject keys.
//! - `subject_encrypt/subject_key`: the same field with the subject's own
//!   key (`SubjectKeys::encrypt`, warm: one cache lookup more).
//! - `subject_erase/delete_row` (**baseline**): deleting one row of a
//!   SQLite file with default settings — the hand-written "forget".
//! - `subject_erase/erase`: `SubjectKeys::erase` on the SQLite vault:
//!   tombstone, secure deletion, a synced rollback journal, cache eviction.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs,
    clippy::print_stdout
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use criterion::{Criterion, criterion_group, criterion_main};
use tenancy_core::TenantId;
use tenancy_core::crypto::keys::{InMemoryKeyStore, Keyring, LocalKeyProvider};
use tenancy_core::crypto::subject::{SubjectId, SubjectKeys};
use tenancy_sqlx::sqlite::SqliteSubjectKeyStore;

fn subject(n: u64) -> SubjectId {
    SubjectId::new(format!("customer:{n}")).unwrap()
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let tenant = TenantId::new_v4();
    let (keyring, keys, plain) = rt.block_on(async {
        let provider = LocalKeyProvider::new(zeroize::Zeroizing::new([7u8; 32]));
        let keyring = Arc::new(Keyring::new(
            Arc::new(provider),
            Arc::new(InMemoryKeyStore::default()),
        ));
        let vault = SqliteSubjectKeyStore::open(dir.path().join("subjects.sqlite3"))
            .await
            .unwrap();
        let keys = SubjectKeys::new(keyring.clone(), Arc::new(vault));
        // The hand-written baseline: the same table, default settings.
        let plain = sqlx::SqlitePool::connect_with(
            sqlx::sqlite::SqliteConnectOptions::new()
                .filename(dir.path().join("plain.sqlite3"))
                .create_if_missing(true),
        )
        .await
        .unwrap();
        sqlx::query(
            "CREATE TABLE keys (tenant_id TEXT, subject TEXT, wrapped BLOB, \
             PRIMARY KEY (tenant_id, subject))",
        )
        .execute(&plain)
        .await
        .unwrap();
        (keyring, keys, plain)
    });
    let one = subject(0);
    rt.block_on(async {
        keyring.encrypt(tenant, b"f", b"x").await.unwrap();
        keys.encrypt(tenant, &one, b"f", b"x").await.unwrap();
    });

    let mut g = c.benchmark_group("subject_encrypt");
    g.bench_function("tenant_key", |b| {
        b.to_async(&rt).iter(|| async {
            keyring
                .encrypt(tenant, b"customers.pan", b"ABCDE1234F")
                .await
                .unwrap()
        });
    });
    g.bench_function("subject_key", |b| {
        b.to_async(&rt).iter(|| async {
            keys.encrypt(tenant, &one, b"customers.pan", b"ABCDE1234F")
                .await
                .unwrap()
        });
    });
    g.finish();

    // Each iteration erases a fresh subject that has a key (made outside
    // the timing), and deletes a fresh row.
    let next = AtomicU64::new(1);
    let mut g = c.benchmark_group("subject_erase");
    g.bench_function("delete_row", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let plain = plain.clone();
            async move {
                let mut total = std::time::Duration::ZERO;
                for i in 0..iters {
                    sqlx::query("INSERT INTO keys VALUES ($1, $2, randomblob(64))")
                        .bind(tenant.to_string())
                        .bind(format!("customer:{i}"))
                        .execute(&plain)
                        .await
                        .unwrap();
                    let t = std::time::Instant::now();
                    sqlx::query("DELETE FROM keys WHERE tenant_id = $1 AND subject = $2")
                        .bind(tenant.to_string())
                        .bind(format!("customer:{i}"))
                        .execute(&plain)
                        .await
                        .unwrap();
                    total += t.elapsed();
                }
                total
            }
        });
    });
    g.bench_function("erase", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let (keys, next) = (&keys, &next);
            async move {
                let mut total = std::time::Duration::ZERO;
                for _ in 0..iters {
                    let s = subject(next.fetch_add(1, Ordering::Relaxed));
                    keys.encrypt(tenant, &s, b"f", b"x").await.unwrap();
                    let t = std::time::Instant::now();
                    keys.erase(tenant, &s).await.unwrap();
                    total += t.elapsed();
                }
                total
            }
        });
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
