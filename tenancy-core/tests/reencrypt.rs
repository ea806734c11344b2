//! Re-encryption after rotation: batches, checkpoints, crash and resume.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tenancy_core::TenantId;
use tenancy_core::crypto::keys::{InMemoryKeyStore, Keyring, LocalKeyProvider};
use tenancy_core::crypto::reencrypt::{
    Checkpoints, EncryptedRow, InMemoryCheckpoints, ReencryptSource, reencrypt,
};
use tenancy_core::crypto::{CryptoError, key_version};

/// Rows in memory; can be told to fail a write, or a checkpoint save, once.
#[derive(Default)]
struct Table {
    rows: Mutex<BTreeMap<String, EncryptedRow>>,
    writes: Mutex<HashMap<String, usize>>,
    fail_write_at_batch: Mutex<Option<usize>>,
    batches_written: AtomicUsize,
}

#[async_trait]
impl ReencryptSource for Table {
    async fn batch(
        &self,
        _: TenantId,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<EncryptedRow>, CryptoError> {
        let rows = self.rows.lock().unwrap();
        Ok(rows
            .values()
            .filter(|r| after.is_none_or(|a| r.key.as_str() > a))
            .take(limit)
            .cloned()
            .collect())
    }

    async fn write(&self, _: TenantId, rows: &[EncryptedRow]) -> Result<(), CryptoError> {
        let n = self.batches_written.fetch_add(1, Ordering::SeqCst);
        if *self.fail_write_at_batch.lock().unwrap() == Some(n) {
            *self.fail_write_at_batch.lock().unwrap() = None;
            return Err(CryptoError::KeyStore("crash while writing".into()));
        }
        let mut table = self.rows.lock().unwrap();
        let mut writes = self.writes.lock().unwrap();
        for r in rows {
            table.insert(r.key.clone(), r.clone());
            *writes.entry(r.key.clone()).or_insert(0) += 1;
        }
        Ok(())
    }
}

/// Checkpoints that fail once on a given save (a crash after the write).
struct FlakyCheckpoints {
    inner: InMemoryCheckpoints,
    fail_at: Mutex<Option<usize>>,
    saves: AtomicUsize,
}

#[async_trait]
impl Checkpoints for FlakyCheckpoints {
    async fn load(&self, t: TenantId, job: &str) -> Result<Option<String>, CryptoError> {
        self.inner.load(t, job).await
    }
    async fn save(&self, t: TenantId, job: &str, key: &str) -> Result<(), CryptoError> {
        let n = self.saves.fetch_add(1, Ordering::SeqCst);
        if *self.fail_at.lock().unwrap() == Some(n) {
            *self.fail_at.lock().unwrap() = None;
            return Err(CryptoError::KeyStore("crash before checkpoint".into()));
        }
        self.inner.save(t, job, key).await
    }
}

async fn setup(rows: usize) -> (Keyring, TenantId, Table) {
    let keys = Keyring::new(
        Arc::new(LocalKeyProvider::new(
            LocalKeyProvider::master_from_base64("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8")
                .unwrap(),
        )),
        Arc::new(InMemoryKeyStore::default()),
    );
    let tenant = TenantId::new_v4();
    let table = Table::default();
    let mut made = BTreeMap::new();
    for i in 0..rows {
        let key = format!("row-{i:04}");
        let context = format!("customers.pan:{key}").into_bytes();
        let ciphertext = keys
            .encrypt(tenant, &context, format!("secret {i}").as_bytes())
            .await
            .unwrap();
        made.insert(
            key.clone(),
            EncryptedRow {
                key,
                context,
                ciphertext,
            },
        );
    }
    *table.rows.lock().unwrap() = made;
    keys.rotate(tenant).await.unwrap(); // v2 is primary; every row is at v1
    (keys, tenant, table)
}

async fn assert_all_current_and_readable(keys: &Keyring, tenant: TenantId, table: &Table) {
    let rows: Vec<EncryptedRow> = table.rows.lock().unwrap().values().cloned().collect();
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(key_version(&row.ciphertext).unwrap(), 2, "{}", row.key);
        let plain = keys
            .decrypt(tenant, &row.context, &row.ciphertext)
            .await
            .unwrap();
        assert_eq!(plain.as_slice(), format!("secret {i}").as_bytes());
    }
    let writes = table.writes.lock().unwrap();
    assert!(
        writes.values().all(|n| *n == 1),
        "a row was re-encrypted twice: {writes:?}"
    );
}

#[tokio::test]
async fn reencrypts_every_row_in_batches_with_progress() {
    let (keys, tenant, table) = setup(95).await;
    let checkpoints = InMemoryCheckpoints::default();
    let mut reports = Vec::new();
    let p = reencrypt(&keys, tenant, &table, &checkpoints, "to-v2", 10, |p| {
        reports.push(p.reencrypted);
    })
    .await
    .unwrap();
    assert_eq!((p.scanned, p.reencrypted, p.already_current), (95, 95, 0));
    assert_eq!(reports.len(), 10);
    assert_eq!(reports.last(), Some(&95));
    assert_all_current_and_readable(&keys, tenant, &table).await;
    // Running it again does nothing.
    let again = reencrypt(
        &keys,
        tenant,
        &table,
        &InMemoryCheckpoints::default(),
        "to-v2",
        10,
        |_| {},
    )
    .await
    .unwrap();
    assert_eq!((again.reencrypted, again.already_current), (0, 95));
}

#[tokio::test]
async fn crash_while_writing_then_resume() {
    let (keys, tenant, table) = setup(60).await;
    *table.fail_write_at_batch.lock().unwrap() = Some(3);
    let checkpoints = InMemoryCheckpoints::default();
    assert!(
        reencrypt(&keys, tenant, &table, &checkpoints, "to-v2", 10, |_| {})
            .await
            .is_err()
    );
    assert_eq!(
        checkpoints.load(tenant, "to-v2").await.unwrap().as_deref(),
        Some("row-0029")
    );
    let p = reencrypt(&keys, tenant, &table, &checkpoints, "to-v2", 10, |_| {})
        .await
        .unwrap();
    assert_eq!(p.reencrypted, 30, "resumed after the checkpoint");
    assert_all_current_and_readable(&keys, tenant, &table).await;
}

#[tokio::test]
async fn crash_between_write_and_checkpoint_never_encrypts_twice() {
    let (keys, tenant, table) = setup(60).await;
    let checkpoints = FlakyCheckpoints {
        inner: InMemoryCheckpoints::default(),
        fail_at: Mutex::new(Some(2)),
        saves: AtomicUsize::new(0),
    };
    assert!(
        reencrypt(&keys, tenant, &table, &checkpoints, "to-v2", 10, |_| {})
            .await
            .is_err()
    );
    let p = reencrypt(&keys, tenant, &table, &checkpoints, "to-v2", 10, |_| {})
        .await
        .unwrap();
    assert_eq!(
        (p.reencrypted, p.already_current),
        (30, 10),
        "the batch written before the crash is recognised, not redone"
    );
    assert_all_current_and_readable(&keys, tenant, &table).await;
}
