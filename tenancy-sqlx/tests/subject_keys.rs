//! The SQLite subject-key vault: the shared erasure table, tombstones that
//! survive a restart, and erasure that leaves none of the wrapped key's
//! bytes in the file — with the broken twin (the same update without
//! secure deletion) leaving them there.
#![cfg(feature = "sqlite")]
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::sync::Arc;

use sqlx::sqlite::SqliteConnectOptions;
use tenancy_core::TenantId;
use tenancy_core::crypto::CryptoError;
use tenancy_core::crypto::keys::{InMemoryKeyStore, Keyring, LocalKeyProvider};
use tenancy_core::crypto::subject::{SubjectId, SubjectKeyStore, SubjectKeys};
use tenancy_sqlx::sqlite::SqliteSubjectKeyStore;

fn provider() -> Arc<LocalKeyProvider> {
    Arc::new(LocalKeyProvider::new(zeroize::Zeroizing::new([5u8; 32])))
}

fn keyring(key_store: &Arc<InMemoryKeyStore>) -> Arc<Keyring> {
    Arc::new(Keyring::new(provider(), key_store.clone()))
}

#[tokio::test]
async fn the_sqlite_vault_passes_the_erasure_table() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteSubjectKeyStore::open(dir.path().join("subjects.sqlite3"))
        .await
        .unwrap();
    let report = tenancy_testkit::subject::erasure(Arc::new(store), provider())
        .await
        .unwrap();
    assert_eq!(report.keys_after_race, 1);
    assert_eq!(report.readable_after_racing_erasure, 0);
}

#[tokio::test]
async fn tombstones_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("subjects.sqlite3");
    let tenant = TenantId::new_v4();
    let s = SubjectId::new("customer:1").unwrap();
    let key_store = Arc::new(InMemoryKeyStore::default());
    let ct = {
        let keys = SubjectKeys::new(
            keyring(&key_store),
            Arc::new(SqliteSubjectKeyStore::open(&path).await.unwrap()),
        );
        let ct = keys.encrypt(tenant, &s, b"f", b"v").await.unwrap();
        keys.erase(tenant, &s).await.unwrap();
        ct
    };
    let keys = SubjectKeys::new(
        keyring(&key_store),
        Arc::new(SqliteSubjectKeyStore::open(&path).await.unwrap()),
    );
    assert_eq!(
        keys.decrypt(tenant, &s, b"f", &ct).await,
        Err(CryptoError::SubjectErased)
    );
    assert_eq!(
        keys.encrypt(tenant, &s, b"f", b"v").await,
        Err(CryptoError::SubjectErased)
    );
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Every byte of the vault on disk: the file and any journal beside it.
fn on_disk(dir: &std::path::Path) -> Vec<u8> {
    let mut all = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        all.extend(std::fs::read(e.unwrap().path()).unwrap());
    }
    all
}

/// Stores 50 subjects' keys, erases subject 7, and returns its wrapped key
/// and the vault's bytes afterwards. `secure` false deletes the row the same way on
/// a connection without secure deletion (the broken twin).
async fn erase_and_read(secure: bool) -> (Vec<u8>, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("subjects.sqlite3");
    let store = SqliteSubjectKeyStore::open(&path).await.unwrap();
    let key_store = Arc::new(InMemoryKeyStore::default());
    let keys = SubjectKeys::new(keyring(&key_store), Arc::new(store.clone()));
    let tenant = TenantId::new_v4();
    for i in 0..50 {
        let s = SubjectId::new(format!("customer:{i}")).unwrap();
        keys.encrypt(tenant, &s, b"f", b"v").await.unwrap();
    }
    let victim = SubjectId::new("customer:7").unwrap();
    let wrapped = store
        .get(tenant, &victim)
        .await
        .unwrap()
        .unwrap()
        .wrapped
        .unwrap();
    assert!(contains(&on_disk(dir.path()), &wrapped));
    if secure {
        keys.erase(tenant, &victim).await.unwrap();
        store.pool().close().await;
    } else {
        store.pool().close().await;
        let pool = sqlx::SqlitePool::connect_with(
            SqliteConnectOptions::new()
                .filename(&path)
                .pragma("secure_delete", "OFF"),
        )
        .await
        .unwrap();
        sqlx::query("DELETE FROM tenancy_subject_keys WHERE tenant_id = $1 AND subject = $2")
            .bind(tenant.to_string())
            .bind(victim.as_str())
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
    }
    (wrapped, on_disk(dir.path()))
}

#[tokio::test]
async fn an_erased_key_leaves_no_bytes_in_the_vault_file() {
    let (wrapped, disk) = erase_and_read(true).await;
    assert!(
        !contains(&disk, &wrapped),
        "the erased key is still on disk"
    );
    // Not even a 16-byte piece of it.
    assert!(wrapped.windows(16).all(|w| !contains(&disk, w)));
}

#[tokio::test]
async fn control_without_secure_deletion_the_key_stays_on_disk() {
    let (wrapped, disk) = erase_and_read(false).await;
    assert!(
        contains(&disk, &wrapped),
        "without secure_delete the freed cell keeps the key's bytes"
    );
}
