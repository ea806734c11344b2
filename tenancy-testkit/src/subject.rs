//! One behaviour table for every [`SubjectKeyStore`] (memory, the SQLite
//! vault): subject keys created once under concurrency, erasure that
//! destroys exactly one subject's key, tombstones that stop a key from being
//! made again even by a racing first use — and [`FlagOnlyStore`], the broken
//! twin that marks a subject erased but keeps the wrapped key.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tenancy_core::TenantId;
use tenancy_core::crypto::CryptoError;
use tenancy_core::crypto::keys::{InMemoryKeyStore, KeyProvider, Keyring};
use tenancy_core::crypto::subject::{StoredSubjectKey, SubjectId, SubjectKeyStore, SubjectKeys};

/// Concurrent first uses of one subject in [`erasure`].
pub const FIRST_USES: usize = 32;

/// What [`erasure`] observed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErasureReport {
    /// Distinct keys the store held for a subject after [`FIRST_USES`]
    /// concurrent first uses from separate [`SubjectKeys`] (one expected).
    pub keys_after_race: usize,
    /// Of the values encrypted for a subject while it was being erased,
    /// how many still decrypt afterwards (zero expected).
    pub readable_after_racing_erasure: usize,
}

fn subject(s: &str) -> Result<SubjectId, String> {
    SubjectId::new(s).map_err(|e| e.to_string())
}

/// Runs the table on `store`, with subject keys wrapped by tenant data keys
/// under `provider`'s KEKs. Each [`SubjectKeys`] has a keyring of its own
/// over one shared key store, as separate processes would. An `Err` names
/// the rule that broke.
///
/// 1. values of two subjects decrypt; a value does not open as another
///    subject's or another tenant's;
/// 2. [`FIRST_USES`] concurrent first uses of one subject, each through its
///    own [`SubjectKeys`] (separate processes): one key, every value opens;
/// 3. erasing subject A: A's values fail with `SubjectErased` through a
///    fresh [`SubjectKeys`] (no cache), B's still open, a new value for A is
///    refused, and the store no longer holds A's wrapped key;
/// 4. erasure racing first uses of a new subject: afterwards nothing
///    encrypted for it opens, and no live key is left;
/// 5. entries are listed in subject order page by page; purging the tenant
///    removes its entries and leaves another tenant's.
pub async fn erasure(
    store: Arc<dyn SubjectKeyStore>,
    provider: Arc<dyn KeyProvider>,
) -> Result<ErasureReport, String> {
    let key_store = Arc::new(InMemoryKeyStore::default());
    let fresh = || {
        SubjectKeys::new(
            Arc::new(Keyring::new(provider.clone(), key_store.clone())),
            store.clone(),
        )
    };
    let keys = fresh();
    let (tenant, other) = (TenantId::new_v4(), TenantId::new_v4());
    let (a, b) = (subject("customer:a")?, subject("customer:b")?);

    // 1.
    let mut values = Vec::new();
    for (s, field) in [(&a, "pan"), (&a, "phone"), (&b, "pan")] {
        let ct = keys
            .encrypt(tenant, s, field.as_bytes(), s.as_str().as_bytes())
            .await
            .map_err(|e| format!("1. encrypt: {e}"))?;
        values.push((s.clone(), field, ct));
    }
    for (s, field, ct) in &values {
        let p = fresh()
            .decrypt(tenant, s, field.as_bytes(), ct)
            .await
            .map_err(|e| format!("1. decrypt {s}: {e}"))?;
        if p.as_slice() != s.as_str().as_bytes() {
            return Err("1. a value decrypted to something else".into());
        }
    }
    if keys.decrypt(tenant, &b, b"pan", &values[0].2).await.is_ok() {
        return Err("1. A's value opened as B's".into());
    }
    if keys.decrypt(other, &a, b"pan", &values[0].2).await.is_ok() {
        return Err("1. A's value opened for another tenant".into());
    }

    // 2.
    let c = subject("customer:c")?;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..FIRST_USES {
        let (keys, c) = (fresh(), c.clone());
        tasks.spawn(async move {
            keys.encrypt(tenant, &c, b"f", format!("{i}").as_bytes())
                .await
        });
    }
    let mut raced = Vec::new();
    while let Some(r) = tasks.join_next().await {
        raced.push(
            r.map_err(|e| e.to_string())?
                .map_err(|e| format!("2. {e}"))?,
        );
    }
    let reader = fresh();
    for ct in &raced {
        reader
            .decrypt(tenant, &c, b"f", ct)
            .await
            .map_err(|e| format!("2. a value of the race does not open: {e}"))?;
    }
    let keys_after_race = store
        .list(tenant, None, 100)
        .await
        .map_err(|e| e.to_string())?
        .iter()
        .filter(|k| k.subject == c)
        .count();

    // 3.
    let erasure = keys
        .erase(tenant, &a)
        .await
        .map_err(|e| format!("3. {e}"))?;
    if !erasure.destroyed_key {
        return Err("3. erasing A destroyed no key".into());
    }
    for (s, field, ct) in &values {
        let got = fresh().decrypt(tenant, s, field.as_bytes(), ct).await;
        match (s == &a, got) {
            (true, Err(CryptoError::SubjectErased)) | (false, Ok(_)) => {}
            (true, other) => return Err(format!("3. A's {field} after erasure: {other:?}")),
            (false, Err(e)) => return Err(format!("3. B's {field} after A's erasure: {e}")),
        }
    }
    // The erasing instance too (its cache was dropped).
    if keys.decrypt(tenant, &a, b"pan", &values[0].2).await.is_ok() {
        return Err("3. the erasing instance still opened A's value".into());
    }
    if keys.encrypt(tenant, &a, b"pan", b"again").await.is_ok() {
        return Err("3. a new key was made for an erased subject".into());
    }
    match store.get(tenant, &a).await.map_err(|e| e.to_string())? {
        Some(k) if k.wrapped.is_none() && k.is_erased() => {}
        Some(k) if k.wrapped.is_some() => {
            return Err("3. the store still holds A's wrapped key: a copy of it, with the tenant's keys, opens A's data".into());
        }
        other => return Err(format!("3. A's tombstone: {other:?}")),
    }

    // 4.
    let d = subject("customer:d")?;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..16 {
        let (keys, d) = (fresh(), d.clone());
        tasks.spawn(async move {
            if i == 8 {
                keys.erase(tenant, &d).await.map(|_| None)
            } else {
                keys.encrypt(tenant, &d, b"f", b"late").await.map(Some)
            }
        });
    }
    let mut late = Vec::new();
    while let Some(r) = tasks.join_next().await {
        match r.map_err(|e| e.to_string())? {
            Ok(Some(ct)) => late.push(ct),
            Ok(None) | Err(CryptoError::SubjectErased) => {}
            Err(e) => return Err(format!("4. {e}")),
        }
    }
    let mut readable = 0;
    for ct in &late {
        if fresh().decrypt(tenant, &d, b"f", ct).await.is_ok() {
            readable += 1;
        }
    }
    if store
        .get(tenant, &d)
        .await
        .map_err(|e| e.to_string())?
        .is_some_and(|k| k.wrapped.is_some())
    {
        return Err("4. a live key survived the racing erasure".into());
    }

    // 5.
    keys.encrypt(other, &a, b"f", b"x")
        .await
        .map_err(|e| format!("5. {e}"))?;
    let first = store
        .list(tenant, None, 2)
        .await
        .map_err(|e| e.to_string())?;
    let rest = store
        .list(tenant, first.last().map(|k| &k.subject), 100)
        .await
        .map_err(|e| e.to_string())?;
    let listed: Vec<&str> = first
        .iter()
        .chain(&rest)
        .map(|k| k.subject.as_str())
        .collect();
    if listed != ["customer:a", "customer:b", "customer:c", "customer:d"] {
        return Err(format!("5. listed {listed:?}"));
    }
    let purged = store.purge(tenant).await.map_err(|e| e.to_string())?;
    if purged != 4
        || !store
            .list(tenant, None, 10)
            .await
            .map_err(|e| e.to_string())?
            .is_empty()
    {
        return Err(format!("5. purge removed {purged} of 4"));
    }
    if store
        .get(other, &a)
        .await
        .map_err(|e| e.to_string())?
        .is_none()
    {
        return Err("5. purging one tenant removed another's key".into());
    }
    Ok(ErasureReport {
        keys_after_race,
        readable_after_racing_erasure: readable,
    })
}

/// The broken twin: "erases" by setting a flag and keeps the wrapped key,
/// as a soft delete would. [`erasure`] must refuse it.
#[derive(Debug, Default)]
pub struct FlagOnlyStore {
    entries: Mutex<BTreeMap<(TenantId, SubjectId), StoredSubjectKey>>,
}

impl FlagOnlyStore {
    fn entries(
        &self,
    ) -> std::sync::MutexGuard<'_, BTreeMap<(TenantId, SubjectId), StoredSubjectKey>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait]
impl SubjectKeyStore for FlagOnlyStore {
    async fn get(
        &self,
        tenant: TenantId,
        subject: &SubjectId,
    ) -> Result<Option<StoredSubjectKey>, CryptoError> {
        Ok(self.entries().get(&(tenant, subject.clone())).cloned())
    }

    async fn insert(&self, key: StoredSubjectKey) -> Result<StoredSubjectKey, CryptoError> {
        Ok(self
            .entries()
            .entry((key.tenant, key.subject.clone()))
            .or_insert(key)
            .clone())
    }

    async fn erase(
        &self,
        tenant: TenantId,
        subject: &SubjectId,
        at: DateTime<Utc>,
    ) -> Result<bool, CryptoError> {
        let mut entries = self.entries();
        let e = entries
            .entry((tenant, subject.clone()))
            .or_insert_with(|| StoredSubjectKey::erased(tenant, subject.clone(), at, at));
        let live = e.erased_at.is_none();
        e.erased_at = Some(at);
        Ok(live)
    }

    async fn list(
        &self,
        tenant: TenantId,
        after: Option<&SubjectId>,
        limit: usize,
    ) -> Result<Vec<StoredSubjectKey>, CryptoError> {
        Ok(self
            .entries()
            .iter()
            .filter(|((t, s), _)| *t == tenant && after.is_none_or(|a| s > a))
            .take(limit)
            .map(|(_, k)| k.clone())
            .collect())
    }

    async fn purge(&self, tenant: TenantId) -> Result<u64, CryptoError> {
        let mut entries = self.entries();
        let before = entries.len();
        entries.retain(|(t, _), _| *t != tenant);
        Ok((before - entries.len()) as u64)
    }
}
