//! Re-encrypting a tenant's data under its current key, in batches, resumably.
//!
//! After [`Keyring::rotate`](super::keys::Keyring::rotate), old values still
//! decrypt; [`reencrypt`] moves them to the new primary version so the old
//! one can eventually be retired. It walks the rows of a [`ReencryptSource`]
//! in key order, in batches, and records a checkpoint after each batch. A
//! crash at any point is resumed from the last checkpoint; rows already at
//! the primary version are skipped, so a row is never encrypted twice even
//! when the crash fell between writing a batch and saving its checkpoint.

use std::collections::HashMap;
use std::sync::{PoisonError, RwLock};

use async_trait::async_trait;

use super::CryptoError;
use super::keys::Keyring;
use crate::TenantId;

/// One encrypted value and where it lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncryptedRow {
    /// The row's key, in the order the source walks rows.
    pub key: String,
    /// The encryption context the value was sealed with.
    pub context: Vec<u8>,
    /// The ciphertext.
    pub ciphertext: Vec<u8>,
}

/// The encrypted values of one tenant, readable in key order and writable.
#[async_trait]
pub trait ReencryptSource: Send + Sync {
    /// Up to `limit` rows of `tenant` with keys strictly after `after`, in key order.
    async fn batch(
        &self,
        tenant: TenantId,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<EncryptedRow>, CryptoError>;

    /// Replaces the ciphertexts of these rows (in one transaction, ideally).
    async fn write(&self, tenant: TenantId, rows: &[EncryptedRow]) -> Result<(), CryptoError>;
}

/// Where a job's progress is remembered between runs.
#[async_trait]
pub trait Checkpoints: Send + Sync {
    /// The last row key completed by `job` for `tenant`.
    async fn load(&self, tenant: TenantId, job: &str) -> Result<Option<String>, CryptoError>;
    /// Records that `job` completed every row up to `key`.
    async fn save(&self, tenant: TenantId, job: &str, key: &str) -> Result<(), CryptoError>;
}

/// Checkpoints in memory (tests, single-process jobs).
#[derive(Debug, Default)]
pub struct InMemoryCheckpoints {
    marks: RwLock<HashMap<(TenantId, String), String>>,
}

#[async_trait]
impl Checkpoints for InMemoryCheckpoints {
    async fn load(&self, tenant: TenantId, job: &str) -> Result<Option<String>, CryptoError> {
        Ok(self
            .marks
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&(tenant, job.to_owned()))
            .cloned())
    }

    async fn save(&self, tenant: TenantId, job: &str, key: &str) -> Result<(), CryptoError> {
        self.marks
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert((tenant, job.to_owned()), key.to_owned());
        Ok(())
    }
}

/// How far a re-encryption run got.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Progress {
    /// Rows looked at in this run.
    pub scanned: u64,
    /// Rows re-encrypted in this run.
    pub reencrypted: u64,
    /// Rows already at the primary version (skipped).
    pub already_current: u64,
}

/// Re-encrypts every value of `tenant` in `source` under its primary key.
///
/// `job` names the run for checkpoints (use the target key version, e.g.
/// `"reencrypt-v3"`); `on_progress` is called after each batch.
pub async fn reencrypt(
    keys: &Keyring,
    tenant: TenantId,
    source: &dyn ReencryptSource,
    checkpoints: &dyn Checkpoints,
    job: &str,
    batch_size: usize,
    mut on_progress: impl FnMut(&Progress) + Send,
) -> Result<Progress, CryptoError> {
    let target = keys.primary(tenant).await?.version();
    let mut progress = Progress::default();
    let mut after = checkpoints.load(tenant, job).await?;
    loop {
        let rows = source
            .batch(tenant, after.as_deref(), batch_size.max(1))
            .await?;
        let Some(last) = rows.last().map(|r| r.key.clone()) else {
            break;
        };
        let mut changed = Vec::with_capacity(rows.len());
        for row in rows {
            progress.scanned += 1;
            if super::key_version(&row.ciphertext)? == target {
                progress.already_current += 1;
                continue;
            }
            let plain = keys.decrypt(tenant, &row.context, &row.ciphertext).await?;
            let ciphertext = keys.encrypt(tenant, &row.context, &plain).await?;
            progress.reencrypted += 1;
            changed.push(EncryptedRow { ciphertext, ..row });
        }
        if !changed.is_empty() {
            source.write(tenant, &changed).await?;
        }
        checkpoints.save(tenant, job, &last).await?;
        on_progress(&progress);
        after = Some(last);
    }
    Ok(progress)
}
