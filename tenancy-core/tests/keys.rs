//! The key hierarchy: provider, store, keyring — rotation, KEK rotation,
//! crypto-shredding, caching, blind indexes.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use tenancy_core::TenantId;
use tenancy_core::crypto::keys::{
    InMemoryKeyStore, KeyProvider, KeyState, KeyStore, Keyring, LocalKeyProvider, Secret, StoredKey,
};
use tenancy_core::crypto::{CryptoError, key_version};

const MASTER: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";

/// Counts unwrap calls on the way to a real provider.
struct Counting {
    inner: LocalKeyProvider,
    unwraps: AtomicUsize,
}

#[async_trait]
impl KeyProvider for Counting {
    async fn generate(&self, t: TenantId) -> Result<(Secret, Vec<u8>), CryptoError> {
        self.inner.generate(t).await
    }
    async fn unwrap(&self, t: TenantId, w: &[u8]) -> Result<Secret, CryptoError> {
        self.unwraps.fetch_add(1, Ordering::SeqCst);
        self.inner.unwrap(t, w).await
    }
    async fn rotate_kek(&self, t: TenantId) -> Result<(), CryptoError> {
        self.inner.rotate_kek(t).await
    }
    async fn rewrap(&self, t: TenantId, w: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.inner.rewrap(t, w).await
    }
    async fn destroy(&self, t: TenantId) -> Result<(), CryptoError> {
        self.inner.destroy(t).await
    }
}

/// Counts reads on the way to an in-memory key store.
#[derive(Default)]
struct CountingStore {
    inner: InMemoryKeyStore,
    reads: AtomicUsize,
}

#[async_trait]
impl KeyStore for CountingStore {
    async fn keys(&self, t: TenantId) -> Result<Vec<StoredKey>, CryptoError> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.inner.keys(t).await
    }
    async fn insert(&self, k: StoredKey) -> Result<(), CryptoError> {
        self.inner.insert(k).await
    }
    async fn update(&self, k: StoredKey) -> Result<(), CryptoError> {
        self.inner.update(k).await
    }
    async fn reserve(
        &self,
        t: TenantId,
        version: u32,
        block: u64,
        limit: u64,
    ) -> Result<u64, CryptoError> {
        self.inner.reserve(t, version, block, limit).await
    }
    async fn rotate(&self, retire: u32, next: StoredKey) -> Result<bool, CryptoError> {
        self.inner.rotate(retire, next).await
    }
}

fn provider() -> Arc<Counting> {
    Arc::new(Counting {
        inner: LocalKeyProvider::new(LocalKeyProvider::master_from_base64(MASTER).unwrap()),
        unwraps: AtomicUsize::new(0),
    })
}

#[tokio::test]
async fn cache_hits_make_no_provider_or_store_calls() {
    let p = provider();
    let store = Arc::new(CountingStore::default());
    let keys = Keyring::new(p.clone(), store.clone());
    let t = TenantId::new_v4();
    let sealed = keys.encrypt(t, b"c", b"v").await.unwrap();
    let after_first = p.unwraps.load(Ordering::SeqCst);
    let reads_after_first = store.reads.load(Ordering::SeqCst);
    assert_eq!(after_first, 1, "the first use unwraps the new key once");
    for _ in 0..100 {
        keys.encrypt(t, b"c", b"v").await.unwrap();
        keys.decrypt(t, b"c", &sealed).await.unwrap();
    }
    assert_eq!(p.unwraps.load(Ordering::SeqCst), after_first, "all hits");
    assert_eq!(
        store.reads.load(Ordering::SeqCst),
        reads_after_first,
        "a warm encrypt or decrypt reads no key store"
    );
    // A fresh keyring (cold cache) has to unwrap once.
    let cold = Keyring::new(p.clone(), Arc::new(InMemoryKeyStore::default()));
    let other = TenantId::new_v4();
    cold.encrypt(other, b"c", b"v").await.unwrap();
    assert_eq!(p.unwraps.load(Ordering::SeqCst), after_first + 1);
}

#[tokio::test]
async fn an_expired_cache_entry_is_unwrapped_again() {
    let p = provider();
    let keys = Keyring::new(p.clone(), Arc::new(InMemoryKeyStore::default()))
        .with_cache(100, std::time::Duration::from_millis(50));
    let t = TenantId::new_v4();
    let sealed = keys.encrypt(t, b"c", b"v").await.unwrap();
    keys.decrypt(t, b"c", &sealed).await.unwrap();
    assert_eq!(p.unwraps.load(Ordering::SeqCst), 1);
    tokio::time::sleep(std::time::Duration::from_millis(120)).await;
    assert_eq!(
        keys.decrypt(t, b"c", &sealed).await.unwrap().as_slice(),
        b"v"
    );
    assert_eq!(
        p.unwraps.load(Ordering::SeqCst),
        2,
        "evicted, so unwrapped again"
    );
}

#[tokio::test]
async fn rotation_keeps_old_versions_readable() {
    let store = Arc::new(InMemoryKeyStore::default());
    let keys = Keyring::new(provider(), store.clone());
    let t = TenantId::new_v4();
    let v1 = keys.encrypt(t, b"c", b"one").await.unwrap();
    assert_eq!(keys.rotate(t).await.unwrap(), 2);
    let v2 = keys.encrypt(t, b"c", b"two").await.unwrap();
    assert_eq!(
        (key_version(&v1).unwrap(), key_version(&v2).unwrap()),
        (1, 2)
    );
    assert_eq!(keys.decrypt(t, b"c", &v1).await.unwrap().as_slice(), b"one");
    assert_eq!(keys.decrypt(t, b"c", &v2).await.unwrap().as_slice(), b"two");
    let states: Vec<KeyState> = store
        .keys(t)
        .await
        .unwrap()
        .iter()
        .map(|k| k.state)
        .collect();
    assert_eq!(states, vec![KeyState::Retired, KeyState::Primary]);
}

#[tokio::test]
async fn nonce_budget_triggers_rotation() {
    let keys =
        Keyring::new(provider(), Arc::new(InMemoryKeyStore::default())).with_rotation_after(5);
    let t = TenantId::new_v4();
    let mut versions = Vec::new();
    for _ in 0..12 {
        versions.push(key_version(&keys.encrypt(t, b"c", b"v").await.unwrap()).unwrap());
    }
    assert_eq!(versions, vec![1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 3, 3]);
}

/// Two keyrings over one store stand for two processes: encrypting
/// concurrently past a small budget, no version encrypts more than the
/// budget, each is rotated once its budget is spent (reserved to the last
/// nonce), and a manual rotation racing another makes one version, not two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyrings_sharing_a_store_share_the_nonce_budget() {
    const BUDGET: u64 = 40;
    let store = Arc::new(InMemoryKeyStore::default());
    let p = provider();
    let ring = || {
        Arc::new(
            Keyring::new(p.clone(), store.clone())
                .with_rotation_after(BUDGET)
                .with_nonce_block(8),
        )
    };
    let (a, b) = (ring(), ring());
    let t = TenantId::new_v4();
    let mut tasks = Vec::new();
    for i in 0..8 {
        let keys = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            let mut versions = Vec::new();
            for _ in 0..50 {
                let sealed = keys.encrypt(t, b"c", b"v").await.unwrap();
                versions.push(key_version(&sealed).unwrap());
            }
            versions
        }));
    }
    let mut per_version = std::collections::BTreeMap::<u32, u64>::new();
    for task in tasks {
        for v in task.await.unwrap() {
            *per_version.entry(v).or_default() += 1;
        }
    }
    assert_eq!(per_version.values().sum::<u64>(), 400);
    assert!(
        per_version.values().all(|n| *n <= BUDGET),
        "{per_version:?}"
    );
    let stored = store.keys(t).await.unwrap();
    assert_eq!(
        stored.iter().map(|k| k.version).collect::<Vec<_>>(),
        (1..=stored.len() as u32).collect::<Vec<_>>()
    );
    for k in &stored[..stored.len() - 1] {
        assert_eq!((k.state, k.reserved), (KeyState::Retired, BUDGET));
    }
}

/// Holds every rotation until two are in flight, both having read the same
/// primary version: the store must let exactly one of them through.
struct RotationsMeet {
    inner: Arc<InMemoryKeyStore>,
    meet: tokio::sync::Barrier,
}

#[async_trait]
impl KeyStore for RotationsMeet {
    async fn keys(&self, t: TenantId) -> Result<Vec<StoredKey>, CryptoError> {
        self.inner.keys(t).await
    }
    async fn insert(&self, k: StoredKey) -> Result<(), CryptoError> {
        self.inner.insert(k).await
    }
    async fn update(&self, k: StoredKey) -> Result<(), CryptoError> {
        self.inner.update(k).await
    }
    async fn reserve(
        &self,
        t: TenantId,
        version: u32,
        block: u64,
        limit: u64,
    ) -> Result<u64, CryptoError> {
        self.inner.reserve(t, version, block, limit).await
    }
    async fn rotate(&self, retire: u32, next: StoredKey) -> Result<bool, CryptoError> {
        self.meet.wait().await;
        self.inner.rotate(retire, next).await
    }
}

/// Two processes rotating the same version at the same moment (two
/// operators, or both noticing the key's age) make one new version, and
/// both answer with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_rotations_of_one_version_make_one_new_version() {
    let inner = Arc::new(InMemoryKeyStore::default());
    let store = Arc::new(RotationsMeet {
        inner: inner.clone(),
        meet: tokio::sync::Barrier::new(2),
    });
    let p = provider();
    let a = Keyring::new(p.clone(), store.clone());
    let b = Keyring::new(p.clone(), store.clone());
    let t = TenantId::new_v4();
    a.encrypt(t, b"c", b"v").await.unwrap();
    let (x, y) = tokio::join!(a.rotate(t), b.rotate(t));
    assert_eq!((x.unwrap(), y.unwrap()), (2, 2));
    let states: Vec<(u32, KeyState)> = inner
        .keys(t)
        .await
        .unwrap()
        .iter()
        .map(|k| (k.version, k.state))
        .collect();
    assert_eq!(states, vec![(1, KeyState::Retired), (2, KeyState::Primary)]);
}

/// Age rotation seen by two processes at once fires once: the second finds
/// the version already replaced and moves to the new one.
#[tokio::test]
async fn age_rotation_in_two_processes_fires_once() {
    use tenancy_core::quota::ManualClock;
    let clock = ManualClock::new(std::time::Duration::from_secs(1_000_000_000));
    let store = Arc::new(InMemoryKeyStore::default());
    let p = provider();
    let ring = || {
        Keyring::new(p.clone(), store.clone())
            .with_clock(Arc::new(clock.clone()))
            .with_max_age(std::time::Duration::from_secs(3_600))
    };
    let (a, b) = (ring(), ring());
    let t = TenantId::new_v4();
    a.encrypt(t, b"c", b"v").await.unwrap();
    b.encrypt(t, b"c", b"v").await.unwrap(); // both now hold version 1
    clock.advance(std::time::Duration::from_secs(3_601));
    let va = key_version(&a.encrypt(t, b"c", b"v").await.unwrap()).unwrap();
    let vb = key_version(&b.encrypt(t, b"c", b"v").await.unwrap()).unwrap();
    assert_eq!((va, vb), (2, 2));
    assert_eq!(
        store.keys(t).await.unwrap().len(),
        2,
        "one rotation, not two"
    );
}

/// Counts reservations in this "process" only, granting up to the budget
/// from its own count: what a keyring without shared reservations does.
struct PerProcessCounts {
    inner: Arc<InMemoryKeyStore>,
    used: std::sync::Mutex<std::collections::HashMap<u32, u64>>,
}

#[async_trait]
impl KeyStore for PerProcessCounts {
    async fn keys(&self, t: TenantId) -> Result<Vec<StoredKey>, CryptoError> {
        self.inner.keys(t).await
    }
    async fn insert(&self, k: StoredKey) -> Result<(), CryptoError> {
        self.inner.insert(k).await
    }
    async fn update(&self, k: StoredKey) -> Result<(), CryptoError> {
        self.inner.update(k).await
    }
    async fn reserve(
        &self,
        _: TenantId,
        version: u32,
        block: u64,
        limit: u64,
    ) -> Result<u64, CryptoError> {
        let mut used = self.used.lock().unwrap();
        let used = used.entry(version).or_default();
        let granted = block.min(limit - *used);
        *used += granted;
        Ok(granted)
    }
    async fn rotate(&self, retire: u32, next: StoredKey) -> Result<bool, CryptoError> {
        self.inner.rotate(retire, next).await
    }
}

/// The broken twin of the test above: each keyring counting alone, the two
/// overshoot the budget of a version they share.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_shared_reservations_the_budget_is_exceeded() {
    const BUDGET: u64 = 40;
    let store = Arc::new(InMemoryKeyStore::default());
    let p = provider();
    let ring = || {
        Arc::new(
            Keyring::new(
                p.clone(),
                Arc::new(PerProcessCounts {
                    inner: store.clone(),
                    used: Default::default(),
                }),
            )
            .with_rotation_after(BUDGET)
            .with_nonce_block(8),
        )
    };
    let (a, b) = (ring(), ring());
    let t = TenantId::new_v4();
    let mut per_version = std::collections::BTreeMap::<u32, u64>::new();
    // Alternate strictly, so both spend the same versions.
    for _ in 0..200 {
        for keys in [&a, &b] {
            let v = key_version(&keys.encrypt(t, b"c", b"v").await.unwrap()).unwrap();
            *per_version.entry(v).or_default() += 1;
        }
    }
    assert!(
        per_version.values().any(|n| *n > BUDGET),
        "per-process counts must overshoot: {per_version:?}"
    );
}

/// Rotation by age, on an injected clock: the key rotates once its age
/// passes `with_max_age` — not a moment before, exactly once — and the old
/// version keeps decrypting. The twin without a maximum age keeps version 1.
#[tokio::test]
async fn age_triggers_rotation_exactly_once() {
    use tenancy_core::quota::ManualClock;
    const DAY: u64 = 86_400;
    let clock = ManualClock::new(std::time::Duration::from_secs(20_000 * DAY));
    let store = Arc::new(InMemoryKeyStore::default());
    let aged = Keyring::new(provider(), store.clone())
        .with_clock(Arc::new(clock.clone()))
        .with_max_age(std::time::Duration::from_secs(90 * DAY));
    let t = TenantId::new_v4();
    let first = aged.encrypt(t, b"c", b"v").await.unwrap();
    assert_eq!(key_version(&first).unwrap(), 1);
    clock.advance(std::time::Duration::from_secs(90 * DAY - 60));
    let v = key_version(&aged.encrypt(t, b"c", b"v").await.unwrap()).unwrap();
    assert_eq!(v, 1, "a minute before the limit");
    clock.advance(std::time::Duration::from_secs(120));
    let mut after = Vec::new();
    for _ in 0..5 {
        after.push(key_version(&aged.encrypt(t, b"c", b"v").await.unwrap()).unwrap());
    }
    assert_eq!(after, vec![2; 5], "rotated once, then the new key is young");
    assert_eq!(store.keys(t).await.unwrap().len(), 2);
    assert_eq!(
        aged.decrypt(t, b"c", &first).await.unwrap().as_slice(),
        b"v"
    );

    let unaged = Keyring::new(provider(), Arc::new(InMemoryKeyStore::default()))
        .with_clock(Arc::new(clock.clone()));
    let u = TenantId::new_v4();
    unaged.encrypt(u, b"c", b"v").await.unwrap();
    clock.advance(std::time::Duration::from_secs(3650 * DAY));
    let v = key_version(&unaged.encrypt(u, b"c", b"v").await.unwrap()).unwrap();
    assert_eq!(v, 1, "without a maximum age, age never rotates");
}

#[tokio::test]
async fn kek_rotation_rewraps_without_touching_data() {
    let p = provider();
    let store = Arc::new(InMemoryKeyStore::default());
    let keys = Keyring::new(p.clone(), store.clone());
    let t = TenantId::new_v4();
    let mut rows = Vec::new();
    for i in 0..20 {
        if i == 10 {
            keys.rotate(t).await.unwrap();
        }
        rows.push(
            keys.encrypt(t, format!("row:{i}").as_bytes(), b"secret")
                .await
                .unwrap(),
        );
    }
    let before: Vec<Vec<u8>> = store
        .keys(t)
        .await
        .unwrap()
        .into_iter()
        .map(|k| k.wrapped)
        .collect();
    keys.rotate_kek(t).await.unwrap();
    let after: Vec<Vec<u8>> = store
        .keys(t)
        .await
        .unwrap()
        .into_iter()
        .map(|k| k.wrapped)
        .collect();
    assert_ne!(before, after, "wrapped keys changed");
    assert_eq!(&after[0][..4], &2u32.to_be_bytes(), "wrapped under KEK v2");
    // A cold keyring must unwrap through the new KEK and still read every row.
    let cold = Keyring::new(p, store);
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(
            cold.decrypt(t, format!("row:{i}").as_bytes(), row)
                .await
                .unwrap()
                .as_slice(),
            b"secret"
        );
    }
}

#[tokio::test]
async fn shredding_makes_one_tenant_unreadable_forever_and_spares_others() {
    let p = provider();
    let store = Arc::new(InMemoryKeyStore::default());
    let keys = Keyring::new(p.clone(), store.clone());
    let (a, b) = (TenantId::new_v4(), TenantId::new_v4());
    let a_rows: Vec<Vec<u8>> = {
        let mut v = Vec::new();
        for i in 0..5 {
            if i == 3 {
                keys.rotate(a).await.unwrap();
            }
            v.push(keys.encrypt(a, b"c", b"a-secret").await.unwrap());
        }
        v
    };
    let b_row = keys.encrypt(b, b"c", b"b-secret").await.unwrap();
    keys.blind_index(a, "pan", 16).await.unwrap();
    keys.shred(a).await.unwrap();
    for row in &a_rows {
        assert!(keys.decrypt(a, b"c", row).await.is_err());
    }
    assert!(
        keys.encrypt(a, b"c", b"new").await.is_err(),
        "no new keys for a shredded tenant"
    );
    assert!(keys.blind_index(a, "pan", 16).await.is_err());
    // Not even a cold keyring, nor the raw provider, can recover them.
    let cold = Keyring::new(p.clone(), store.clone());
    for row in &a_rows {
        assert!(cold.decrypt(a, b"c", row).await.is_err());
    }
    assert!(
        store
            .keys(a)
            .await
            .unwrap()
            .iter()
            .all(|k| k.state == KeyState::Destroyed && k.wrapped.is_empty())
    );
    // The other tenant is untouched.
    assert_eq!(
        cold.decrypt(b, b"c", &b_row).await.unwrap().as_slice(),
        b"b-secret"
    );
}

#[tokio::test]
async fn wrapped_keys_are_bound_to_tenant_and_master() {
    let p = LocalKeyProvider::new(LocalKeyProvider::master_from_base64(MASTER).unwrap());
    let (a, b) = (TenantId::new_v4(), TenantId::new_v4());
    let (_, wrapped) = p.generate(a).await.unwrap();
    p.generate(b).await.unwrap();
    assert!(p.unwrap(b, &wrapped).await.is_err(), "another tenant's KEK");
    let mut tampered = wrapped.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    assert_eq!(
        p.unwrap(a, &tampered).await,
        Err(CryptoError::Authentication)
    );
    assert!(LocalKeyProvider::master_from_base64("c2hvcnQ").is_err());
    assert!(LocalKeyProvider::master_from_base64("!!!").is_err());
}

#[tokio::test]
async fn blind_indexes_through_the_keyring() {
    let keys = Keyring::new(provider(), Arc::new(InMemoryKeyStore::default()));
    let (a, b) = (TenantId::new_v4(), TenantId::new_v4());
    let ia = keys.blind_index(a, "customers.pan", 16).await.unwrap();
    let ia2 = keys.blind_index(a, "customers.pan", 16).await.unwrap();
    let ib = keys.blind_index(b, "customers.pan", 16).await.unwrap();
    assert_eq!(ia.index(b"ABCDE1234F"), ia2.index(b"ABCDE1234F"));
    assert_ne!(ia.index(b"ABCDE1234F"), ib.index(b"ABCDE1234F"));
}

/// A key store whose reads wait at a gate the test opens.
struct Gated {
    inner: InMemoryKeyStore,
    gate: tokio::sync::Semaphore,
    reads: AtomicUsize,
}

#[async_trait]
impl KeyStore for Gated {
    async fn keys(&self, t: TenantId) -> Result<Vec<StoredKey>, CryptoError> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        let keys = self.inner.keys(t).await;
        // Read, then wait: the eviction lands while this load is in flight.
        self.gate.acquire().await.unwrap().forget();
        keys
    }
    async fn insert(&self, k: StoredKey) -> Result<(), CryptoError> {
        self.inner.insert(k).await
    }
    async fn update(&self, k: StoredKey) -> Result<(), CryptoError> {
        self.inner.update(k).await
    }
    async fn reserve(
        &self,
        t: TenantId,
        version: u32,
        block: u64,
        limit: u64,
    ) -> Result<u64, CryptoError> {
        self.inner.reserve(t, version, block, limit).await
    }
    async fn rotate(&self, retire: u32, next: StoredKey) -> Result<bool, CryptoError> {
        self.inner.rotate(retire, next).await
    }
}

#[tokio::test]
async fn a_load_in_flight_during_an_eviction_does_not_cache_what_it_read() {
    let store = Arc::new(Gated {
        inner: InMemoryKeyStore::default(),
        gate: tokio::sync::Semaphore::new(0),
        reads: AtomicUsize::new(0),
    });
    let keys = Arc::new(Keyring::new(provider(), store.clone()));
    let t = TenantId::new_v4();
    store.gate.add_permits(10);
    let sealed = keys.encrypt(t, b"c", b"v").await.unwrap();
    keys.evict(t).await;
    // A cold decrypt reads the store, and stops at the gate ...
    let reads = store.reads.load(Ordering::SeqCst);
    let drain = store.gate.available_permits();
    store
        .gate
        .acquire_many(drain as u32)
        .await
        .unwrap()
        .forget();
    let loading = {
        let (keys, sealed) = (keys.clone(), sealed.clone());
        tokio::spawn(async move { keys.decrypt(t, b"c", &sealed).await.map(|p| p.to_vec()) })
    };
    while store.reads.load(Ordering::SeqCst) == reads {
        tokio::task::yield_now().await;
    }
    // ... meanwhile another process shreds the tenant and we are told.
    keys.evict(t).await;
    store.gate.add_permits(10);
    assert_eq!(loading.await.unwrap().unwrap(), b"v");
    // What the in-flight load read was not cached: the next use reads the
    // store again.
    let before = store.reads.load(Ordering::SeqCst);
    keys.decrypt(t, b"c", &sealed).await.unwrap();
    assert!(
        store.reads.load(Ordering::SeqCst) > before,
        "the stale load was cached"
    );
}
