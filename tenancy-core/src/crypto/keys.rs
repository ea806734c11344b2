//! The key hierarchy: a key-encryption key (KEK) per tenant held by a
//! [`KeyProvider`], data keys (DEKs) per tenant and version stored only
//! wrapped by that KEK in a [`KeyStore`], and a [`Keyring`] that ties them
//! together with a cache of unwrapped keys.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use aes_gcm::aead::{AeadInPlace, KeyInit, OsRng, rand_core::RngCore};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use zeroize::Zeroizing;

use super::{BlindIndexKey, CryptoError, DataKey, NONCE_BUDGET, Plaintext};
use crate::TenantId;

/// The largest block of nonces a keyring reserves at once, by default.
const DEFAULT_NONCE_BLOCK: u64 = 1 << 16;
/// The first block reserved for a key just loaded.
const INITIAL_NONCE_BLOCK: u64 = 256;
/// Reservation locks per keyring (tenants hash onto them).
const REFILL_STRIPES: usize = 16;
/// How often one call re-reads the primary version after losing a race.
const ROTATION_ATTEMPTS: usize = 8;

/// A 32-byte secret that is wiped when dropped.
pub type Secret = Zeroizing<[u8; 32]>;

/// Holds tenants' key-encryption keys and wraps and unwraps data keys with
/// them. The tenant id is bound into every wrap (associated data, or the KMS
/// encryption context), so one tenant's wrapped key never opens as another's.
#[async_trait]
pub trait KeyProvider: Send + Sync {
    /// A fresh random data key for `tenant`: the key, and the key wrapped by the tenant's KEK.
    async fn generate(&self, tenant: TenantId) -> Result<(Secret, Vec<u8>), CryptoError>;
    /// Unwraps a data key of `tenant`.
    async fn unwrap(&self, tenant: TenantId, wrapped: &[u8]) -> Result<Secret, CryptoError>;
    /// Starts a new KEK version for `tenant` (older versions still unwrap).
    async fn rotate_kek(&self, tenant: TenantId) -> Result<(), CryptoError>;
    /// Re-wraps a data key under the tenant's current KEK, without exposing data.
    async fn rewrap(&self, tenant: TenantId, wrapped: &[u8]) -> Result<Vec<u8>, CryptoError>;
    /// Destroys every KEK of `tenant`: its wrapped keys can never be unwrapped again.
    async fn destroy(&self, tenant: TenantId) -> Result<(), CryptoError>;
}

fn seal(key: &[u8; 32], aad: &[u8], plain: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let cipher = Aes256Gcm::new(key.into());
    let mut nonce = [0u8; 12];
    OsRng.fill_bytes(&mut nonce);
    let mut out = nonce.to_vec();
    out.extend_from_slice(plain);
    let tag = cipher
        .encrypt_in_place_detached(&Nonce::from(nonce), aad, &mut out[12..])
        .map_err(|_| CryptoError::Authentication)?;
    out.extend_from_slice(&tag);
    Ok(out)
}

fn open(key: &[u8; 32], aad: &[u8], sealed: &[u8]) -> Result<Secret, CryptoError> {
    if sealed.len() != 12 + 32 + 16 {
        return Err(CryptoError::Truncated);
    }
    let cipher = Aes256Gcm::new(key.into());
    let mut nonce = [0u8; 12];
    nonce.copy_from_slice(&sealed[..12]);
    let mut tag = [0u8; 16];
    tag.copy_from_slice(&sealed[44..]);
    let mut out: Secret = Zeroizing::new([0u8; 32]);
    out.copy_from_slice(&sealed[12..44]);
    cipher
        .decrypt_in_place_detached(
            &Nonce::from(nonce),
            aad,
            out.as_mut_slice(),
            &Tag::from(tag),
        )
        .map_err(|_| CryptoError::Authentication)?;
    Ok(out)
}

fn aad(label: &str, tenant: TenantId, version: u32) -> Vec<u8> {
    let mut a = label.as_bytes().to_vec();
    a.extend_from_slice(tenant.as_uuid().as_bytes());
    a.extend_from_slice(&version.to_be_bytes());
    a
}

/// A [`KeyProvider`] with a master key from configuration: per-tenant KEKs
/// are random and kept only wrapped by the master key. For development and
/// single-box deployments; use a KMS in production.
///
/// Built with [`LocalKeyProvider::new`] the wrapped KEKs live **in memory
/// only**: after a restart nothing wrapped by them can be unwrapped — fine
/// for tests, never for data you keep. [`LocalKeyProvider::persistent`] keeps
/// them (still wrapped by the master key) in a file that several processes
/// may share: each operation reads it under a file lock, each change is a
/// read-modify-write of the file as it is on disk, rewritten atomically;
/// `destroy` removes the tenant's KEKs and leaves a tombstone. The file
/// lives beside the master key, not in the database, so a copy of the
/// database taken before a purge holds only data keys wrapped by KEKs that
/// no longer exist.
///
/// Wrapped data keys are `kek version (u32 BE) ‖ nonce ‖ key ‖ tag`.
///
/// ```
/// use tenancy_core::crypto::keys::{KeyProvider, LocalKeyProvider};
/// use tenancy_core::TenantId;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let master = LocalKeyProvider::master_from_base64("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8")?;
/// let provider = LocalKeyProvider::new(master);
/// let tenant = TenantId::new_v4();
/// let (key, wrapped) = provider.generate(tenant).await?;
/// assert_eq!(*provider.unwrap(tenant, &wrapped).await?, *key);
/// assert!(provider.unwrap(TenantId::new_v4(), &wrapped).await.is_err());
/// # Ok(()) }
/// ```
pub struct LocalKeyProvider {
    master: Secret,
    /// In memory (tests) or in a file shared by every process using it.
    keks: KekHome,
}

enum KekHome {
    Memory(RwLock<KekFile>),
    File(std::path::PathBuf),
}

type KekMap = HashMap<TenantId, BTreeMap<u32, Vec<u8>>>;

/// The wrapped KEKs and the tenants whose KEKs were destroyed (tombstones:
/// a destroyed tenant never gets a KEK again, so nothing can be encrypted
/// under a key that looks like the shredded one's successor).
#[derive(Default)]
struct KekFile {
    keks: KekMap,
    destroyed: std::collections::BTreeSet<TenantId>,
}

/// The file's form: `{"keks": {tenant: {version: base64url}}, "destroyed":
/// [tenant]}` (an older file is the bare `keks` map).
#[derive(serde::Serialize, serde::Deserialize)]
struct KekFileForm {
    keks: HashMap<String, BTreeMap<u32, String>>,
    #[serde(default)]
    destroyed: Vec<String>,
}

fn kek_file_error(path: &std::path::Path, e: impl std::fmt::Display) -> CryptoError {
    CryptoError::KeyStore(format!("KEK file {}: {e}", path.display()))
}

impl std::fmt::Debug for LocalKeyProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalKeyProvider").finish_non_exhaustive()
    }
}

impl KekFile {
    fn read(path: &std::path::Path) -> Result<Self, CryptoError> {
        use base64::Engine as _;
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(kek_file_error(path, e)),
        };
        let form: KekFileForm = serde_json::from_slice::<KekFileForm>(&bytes)
            .or_else(|_| {
                serde_json::from_slice(&bytes).map(|keks| KekFileForm {
                    keks,
                    destroyed: Vec::new(),
                })
            })
            .map_err(|e| kek_file_error(path, e))?;
        let mut out = Self::default();
        for (tenant, versions) in form.keks {
            let tenant: TenantId = tenant.parse().map_err(|e| kek_file_error(path, e))?;
            let mut kept = BTreeMap::new();
            for (v, w) in versions {
                let w = base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(w)
                    .map_err(|e| kek_file_error(path, e))?;
                kept.insert(v, w);
            }
            out.keks.insert(tenant, kept);
        }
        for t in form.destroyed {
            out.destroyed
                .insert(t.parse().map_err(|e| kek_file_error(path, e))?);
        }
        Ok(out)
    }

    /// Writes the file atomically: a private temporary file renamed over it.
    fn write(&self, path: &std::path::Path) -> Result<(), CryptoError> {
        use base64::Engine as _;
        let form = KekFileForm {
            keks: self
                .keks
                .iter()
                .map(|(t, versions)| {
                    let v = versions
                        .iter()
                        .map(|(v, w)| {
                            (
                                *v,
                                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(w),
                            )
                        })
                        .collect();
                    (t.to_string(), v)
                })
                .collect(),
            destroyed: self.destroyed.iter().map(ToString::to_string).collect(),
        };
        let bytes = serde_json::to_vec_pretty(&form).map_err(|e| kek_file_error(path, e))?;
        let tmp = path.with_extension("tmp");
        write_private(&tmp, &bytes).map_err(|e| kek_file_error(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| kek_file_error(path, e))
    }
}

impl LocalKeyProvider {
    /// A provider with this master key.
    pub fn new(master: Secret) -> Self {
        Self {
            master,
            keks: KekHome::Memory(RwLock::new(KekFile::default())),
        }
    }

    /// A provider whose wrapped KEKs are kept in the file at `path` (created
    /// on first use; its contents are useless without the master key, but
    /// keep it private and backed up with the data keys it protects).
    ///
    /// ```
    /// use tenancy_core::crypto::keys::{KeyProvider, LocalKeyProvider};
    /// use tenancy_core::TenantId;
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let dir = std::env::temp_dir().join(format!("kek-doc-{}", TenantId::new_v4()));
    /// std::fs::create_dir_all(&dir)?;
    /// let path = dir.join("keks.json");
    /// let master = || zeroize::Zeroizing::new([7u8; 32]);
    /// let tenant = TenantId::new_v4();
    /// let (key, wrapped) = LocalKeyProvider::persistent(master(), &path)?.generate(tenant).await?;
    /// // A restart: a new provider over the same file unwraps it.
    /// let again = LocalKeyProvider::persistent(master(), &path)?;
    /// assert_eq!(*again.unwrap(tenant, &wrapped).await?, *key);
    /// # std::fs::remove_dir_all(&dir)?;
    /// # Ok(()) }
    /// ```
    ///
    /// Several processes may share the file: every operation reads it under
    /// a lock (shared to read, exclusive to change) and a change is a
    /// read-modify-write of what is on disk **now**, never of a copy held in
    /// memory. So a KEK one process created is used, not replaced, by the
    /// others; a KEK another process destroyed is gone for every process at
    /// its next operation, and never written back; and a destroyed tenant is
    /// remembered (a tombstone) so it never gets a KEK again.
    pub fn persistent(
        master: Secret,
        path: impl Into<std::path::PathBuf>,
    ) -> Result<Self, CryptoError> {
        let path = path.into();
        // Refuse a damaged file now rather than at the first operation.
        KekFile::read(&path)?;
        Ok(Self {
            master,
            keks: KekHome::File(path),
        })
    }

    /// Reads a 32-byte master key from unpadded base64url (as kept in an
    /// environment variable or secrets file).
    pub fn master_from_base64(text: &str) -> Result<Secret, CryptoError> {
        use base64::Engine as _;
        let bytes = Zeroizing::new(
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(text.trim())
                .map_err(|_| CryptoError::BadKeyLength)?,
        );
        let mut out: Secret = Zeroizing::new([0u8; 32]);
        if bytes.len() != 32 {
            return Err(CryptoError::BadKeyLength);
        }
        out.copy_from_slice(&bytes);
        Ok(out)
    }

    /// Runs `f` on the KEKs as they are now; `change`: under an exclusive
    /// lock, and what `f` leaves is written back (only if `f` succeeded).
    fn with_keks<R>(
        &self,
        change: bool,
        f: impl FnOnce(&mut KekFile) -> Result<R, CryptoError>,
    ) -> Result<R, CryptoError> {
        match &self.keks {
            KekHome::Memory(keks) => {
                let mut keks = keks.write().unwrap_or_else(PoisonError::into_inner);
                f(&mut keks)
            }
            KekHome::File(path) => {
                let lock_path = path.with_extension("lock");
                let lock = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(&lock_path)
                    .map_err(|e| kek_file_error(&lock_path, e))?;
                if change {
                    lock.lock()
                } else {
                    lock.lock_shared()
                }
                .map_err(|e| kek_file_error(&lock_path, e))?;
                let mut keks = KekFile::read(path)?;
                let out = f(&mut keks)?;
                if change {
                    keks.write(path)?;
                }
                drop(lock);
                Ok(out)
            }
        }
    }

    fn open_kek(&self, tenant: TenantId, v: u32, wrapped: &[u8]) -> Result<Secret, CryptoError> {
        open(&self.master, &aad("tenancy-rs/kek/v1", tenant, v), wrapped)
    }

    fn new_kek(&self, keks: &mut KekFile, tenant: TenantId) -> Result<u32, CryptoError> {
        if keks.destroyed.contains(&tenant) {
            return Err(CryptoError::KeyStore(format!(
                "the keys of tenant {tenant} were destroyed; it gets no new key"
            )));
        }
        let versions = keks.keks.entry(tenant).or_default();
        let v = versions.keys().next_back().map_or(1, |v| v + 1);
        let mut kek: Secret = Zeroizing::new([0u8; 32]);
        OsRng.fill_bytes(kek.as_mut_slice());
        versions.insert(
            v,
            seal(
                &self.master,
                &aad("tenancy-rs/kek/v1", tenant, v),
                kek.as_slice(),
            )?,
        );
        Ok(v)
    }

    /// The tenant's KEK at `version` (or its newest), as stored now.
    fn kek(&self, tenant: TenantId, version: Option<u32>) -> Result<(u32, Secret), CryptoError> {
        let (v, wrapped) = self.with_keks(false, |keks| {
            let versions = keks
                .keks
                .get(&tenant)
                .ok_or(CryptoError::UnknownKeyVersion(version.unwrap_or(0)))?;
            match version {
                Some(v) => versions
                    .get(&v)
                    .map(|w| (v, w.clone()))
                    .ok_or(CryptoError::UnknownKeyVersion(v)),
                None => versions
                    .iter()
                    .next_back()
                    .map(|(v, w)| (*v, w.clone()))
                    .ok_or(CryptoError::UnknownKeyVersion(0)),
            }
        })?;
        Ok((v, self.open_kek(tenant, v, &wrapped)?))
    }

    /// The tenant's newest KEK, creating the first one if it has none (in
    /// one locked read-modify-write: concurrent processes agree on one).
    fn current_kek(&self, tenant: TenantId) -> Result<(u32, Secret), CryptoError> {
        if let Ok(found) = self.kek(tenant, None) {
            return Ok(found);
        }
        let (v, wrapped) = self.with_keks(true, |keks| {
            if keks.keks.get(&tenant).is_none_or(BTreeMap::is_empty) {
                self.new_kek(keks, tenant)?;
            }
            keks.keks
                .get(&tenant)
                .and_then(|versions| versions.iter().next_back())
                .map(|(v, w)| (*v, w.clone()))
                .ok_or(CryptoError::UnknownKeyVersion(0))
        })?;
        Ok((v, self.open_kek(tenant, v, &wrapped)?))
    }

    fn wrap_with(
        tenant: TenantId,
        v: u32,
        kek: &Secret,
        key: &[u8; 32],
    ) -> Result<Vec<u8>, CryptoError> {
        let mut out = v.to_be_bytes().to_vec();
        out.extend(seal(kek, &aad("tenancy-rs/dek/v1", tenant, v), key)?);
        Ok(out)
    }
}

#[async_trait]
impl KeyProvider for LocalKeyProvider {
    async fn generate(&self, tenant: TenantId) -> Result<(Secret, Vec<u8>), CryptoError> {
        let (v, kek) = self.current_kek(tenant)?;
        let mut key: Secret = Zeroizing::new([0u8; 32]);
        OsRng.fill_bytes(key.as_mut_slice());
        let wrapped = Self::wrap_with(tenant, v, &kek, &key)?;
        Ok((key, wrapped))
    }

    async fn unwrap(&self, tenant: TenantId, wrapped: &[u8]) -> Result<Secret, CryptoError> {
        if wrapped.len() < 4 {
            return Err(CryptoError::Truncated);
        }
        let mut v = [0u8; 4];
        v.copy_from_slice(&wrapped[..4]);
        let v = u32::from_be_bytes(v);
        let (_, kek) = self.kek(tenant, Some(v))?;
        open(&kek, &aad("tenancy-rs/dek/v1", tenant, v), &wrapped[4..])
    }

    async fn rotate_kek(&self, tenant: TenantId) -> Result<(), CryptoError> {
        self.with_keks(true, |keks| self.new_kek(keks, tenant).map(|_| ()))
    }

    async fn rewrap(&self, tenant: TenantId, wrapped: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let key = self.unwrap(tenant, wrapped).await?;
        let (v, kek) = self.current_kek(tenant)?;
        Self::wrap_with(tenant, v, &kek, &key)
    }

    async fn destroy(&self, tenant: TenantId) -> Result<(), CryptoError> {
        self.with_keks(true, |keks| {
            keks.keks.remove(&tenant);
            keks.destroyed.insert(tenant);
            Ok(())
        })
    }
}

/// The lifecycle state of a stored data key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyState {
    /// Encrypts new values (the primary version) and decrypts.
    Primary,
    /// Decrypts only (an older version after rotation).
    Retired,
    /// Gone: nothing it encrypted can be read.
    Destroyed,
}

/// A wrapped data key as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoredKey {
    /// The tenant.
    pub tenant: TenantId,
    /// The version (1, 2, ...). Version 0 is the tenant's blind-index root.
    pub version: u32,
    /// The key wrapped by the tenant's KEK.
    pub wrapped: Vec<u8>,
    /// Its state.
    pub state: KeyState,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// How many nonces of this key have been reserved, by every process
    /// together ([`KeyStore::reserve`]): an upper bound of the values it has encrypted.
    pub reserved: u64,
}

impl StoredKey {
    /// A stored key (for key stores outside this crate).
    pub fn new(
        tenant: TenantId,
        version: u32,
        wrapped: Vec<u8>,
        state: KeyState,
        created_at: DateTime<Utc>,
    ) -> Self {
        Self {
            tenant,
            version,
            wrapped,
            state,
            created_at,
            reserved: 0,
        }
    }

    /// This key with `reserved` nonces already reserved (as read from a store).
    pub fn with_reserved(mut self, reserved: u64) -> Self {
        self.reserved = reserved;
        self
    }
}

/// Where wrapped data keys live. Plaintext keys are never stored.
#[async_trait]
pub trait KeyStore: Send + Sync {
    /// Every key of `tenant`, oldest first.
    async fn keys(&self, tenant: TenantId) -> Result<Vec<StoredKey>, CryptoError>;
    /// Inserts a key (a new version, or the index root).
    async fn insert(&self, key: StoredKey) -> Result<(), CryptoError>;
    /// Replaces a key's wrapped bytes and state.
    async fn update(&self, key: StoredKey) -> Result<(), CryptoError>;
    /// Reserves up to `block` nonces of key `version` of `tenant` for the
    /// caller, atomically across every process sharing the store, so that
    /// the total reserved for that version never exceeds `limit`. Returns
    /// how many were granted: fewer than `block` near the limit, and 0 when
    /// the budget is spent or the version is not the tenant's primary key
    /// (retired keys encrypt nothing new).
    async fn reserve(
        &self,
        tenant: TenantId,
        version: u32,
        block: u64,
        limit: u64,
    ) -> Result<u64, CryptoError>;
    /// Rotates in one atomic step: if version `retire` of `next.tenant` is
    /// still its primary key, marks it retired and inserts `next` (the new
    /// primary) and returns `true`. Returns `false` and changes nothing when
    /// `retire` is no longer primary or `next.version` already exists (another
    /// process rotated first), so concurrent rotations make one new version.
    async fn rotate(&self, retire: u32, next: StoredKey) -> Result<bool, CryptoError>;
}

/// A [`KeyStore`] in memory (tests, examples).
#[derive(Debug, Default)]
pub struct InMemoryKeyStore {
    keys: RwLock<HashMap<TenantId, BTreeMap<u32, StoredKey>>>,
}

#[async_trait]
impl KeyStore for InMemoryKeyStore {
    async fn keys(&self, tenant: TenantId) -> Result<Vec<StoredKey>, CryptoError> {
        Ok(self
            .keys
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&tenant)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default())
    }

    async fn insert(&self, key: StoredKey) -> Result<(), CryptoError> {
        let mut keys = self.keys.write().unwrap_or_else(PoisonError::into_inner);
        let versions = keys.entry(key.tenant).or_default();
        if versions.contains_key(&key.version) {
            return Err(CryptoError::KeyStore(format!(
                "key version {} already exists",
                key.version
            )));
        }
        versions.insert(key.version, key);
        Ok(())
    }

    async fn update(&self, key: StoredKey) -> Result<(), CryptoError> {
        let mut keys = self.keys.write().unwrap_or_else(PoisonError::into_inner);
        let slot = keys
            .get_mut(&key.tenant)
            .and_then(|m| m.get_mut(&key.version))
            .ok_or(CryptoError::UnknownKeyVersion(key.version))?;
        slot.wrapped = key.wrapped;
        slot.state = key.state;
        Ok(())
    }

    async fn reserve(
        &self,
        tenant: TenantId,
        version: u32,
        block: u64,
        limit: u64,
    ) -> Result<u64, CryptoError> {
        let mut keys = self.keys.write().unwrap_or_else(PoisonError::into_inner);
        let key = keys
            .get_mut(&tenant)
            .and_then(|m| m.get_mut(&version))
            .ok_or(CryptoError::UnknownKeyVersion(version))?;
        if key.state != KeyState::Primary {
            return Ok(0);
        }
        let granted = block.min(limit.saturating_sub(key.reserved));
        key.reserved += granted;
        Ok(granted)
    }

    async fn rotate(&self, retire: u32, next: StoredKey) -> Result<bool, CryptoError> {
        let mut keys = self.keys.write().unwrap_or_else(PoisonError::into_inner);
        let versions = keys.entry(next.tenant).or_default();
        let still_primary = versions
            .get(&retire)
            .is_some_and(|k| k.state == KeyState::Primary);
        if !still_primary || versions.contains_key(&next.version) {
            return Ok(false);
        }
        if let Some(old) = versions.get_mut(&retire) {
            old.state = KeyState::Retired;
        }
        versions.insert(next.version, next);
        Ok(true)
    }
}

/// Per-tenant keys, ready to use: creates, caches, rotates and shreds.
///
/// Unwrapped keys are cached (moka: TTL, capacity) so a hit makes no
/// provider call; evicted keys are zeroized when their last user drops them.
///
/// ```
/// use std::sync::Arc;
/// use tenancy_core::crypto::keys::{InMemoryKeyStore, Keyring, LocalKeyProvider};
/// use tenancy_core::TenantId;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let provider = LocalKeyProvider::new(LocalKeyProvider::master_from_base64(
///     "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8")?);
/// let keys = Keyring::new(Arc::new(provider), Arc::new(InMemoryKeyStore::default()));
/// let tenant = TenantId::new_v4();
/// let sealed = keys.encrypt(tenant, b"customers.pan:1", b"ABCDE1234F").await?;
/// assert_eq!(keys.decrypt(tenant, b"customers.pan:1", &sealed).await?.as_slice(), b"ABCDE1234F");
///
/// keys.shred(tenant).await?; // crypto-shredding
/// assert!(keys.decrypt(tenant, b"customers.pan:1", &sealed).await.is_err());
/// # Ok(()) }
/// ```
pub struct Keyring {
    provider: Arc<dyn KeyProvider>,
    store: Arc<dyn KeyStore>,
    cache: moka::future::Cache<(TenantId, u32), Arc<DataKey>>,
    /// Each tenant's primary version and its creation time, so the hot
    /// encrypt path reads neither the store nor the provider.
    primaries: moka::future::Cache<TenantId, (u32, DateTime<Utc>)>,
    /// Bumped by every eviction: a load that read the store before an
    /// eviction does not put what it read back into the caches.
    epoch: std::sync::atomic::AtomicU64,
    /// The nonce budget of one key version, across every process.
    rotate_after: u64,
    /// The largest block of nonces reserved at once.
    nonce_block: u64,
    /// Serialises reservations per tenant (striped), so concurrent
    /// encryptions in this process reserve one block, not one each.
    refills: Box<[tokio::sync::Mutex<()>]>,
    max_age: Option<Duration>,
    clock: Arc<dyn crate::quota::Clock>,
    audit: Option<Arc<dyn crate::audit::AuditSink>>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring").finish_non_exhaustive()
    }
}

impl Keyring {
    /// A keyring caching up to 10 000 unwrapped keys for 10 minutes.
    pub fn new(provider: Arc<dyn KeyProvider>, store: Arc<dyn KeyStore>) -> Self {
        Self {
            provider,
            store,
            cache: moka::future::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(Duration::from_secs(600))
                .support_invalidation_closures()
                .build(),
            primaries: moka::future::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(Duration::from_secs(30))
                .build(),
            epoch: std::sync::atomic::AtomicU64::new(0),
            rotate_after: NONCE_BUDGET / 2,
            nonce_block: DEFAULT_NONCE_BLOCK,
            refills: (0..REFILL_STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            max_age: None,
            clock: Arc::new(crate::quota::SystemClock),
            audit: None,
        }
    }

    /// Reads time from `clock` (key creation times and the age check of
    /// [`Keyring::with_max_age`]); the system clock by default.
    pub fn with_clock(mut self, clock: Arc<dyn crate::quota::Clock>) -> Self {
        self.clock = clock;
        self
    }

    fn now(&self) -> DateTime<Utc> {
        let t = self.clock.now();
        i64::try_from(t.as_secs())
            .ok()
            .and_then(|s| DateTime::from_timestamp(s, t.subsec_nanos()))
            .unwrap_or_else(Utc::now)
    }

    /// Records key rotations (`key.rotated`, `kek.rotated`) and destruction
    /// (`keys.destroyed`) as audit events of the tenant, actor `system:keyring`.
    pub fn with_audit(mut self, sink: Arc<dyn crate::audit::AuditSink>) -> Self {
        self.audit = Some(sink);
        self
    }

    async fn audit(&self, tenant: TenantId, action: &str, details: serde_json::Value) {
        let Some(sink) = &self.audit else { return };
        let event = crate::audit::AuditEvent::system(tenant, "keyring", action, "tenant_keys")
            .with_details(details);
        if let Err(e) = sink.record(event).await {
            tracing::error!(tenant.id = %tenant, error = %e, action, "key audit event not recorded");
        }
    }

    /// Caches up to `capacity` unwrapped keys, each for at most `ttl`
    /// (defaults: 10 000, 10 minutes). A shorter TTL bounds how long a key
    /// lives in memory; evicted keys are wiped once no encryption in flight
    /// still holds them.
    pub fn with_cache(mut self, capacity: u64, ttl: Duration) -> Self {
        self.cache = moka::future::Cache::builder()
            .max_capacity(capacity)
            .time_to_live(ttl)
            .support_invalidation_closures()
            .build();
        self
    }

    /// How long a tenant's primary key version is cached (default 30 s).
    /// Another process that has not heard of a rotation keeps encrypting
    /// with the retired version only until its reserved block is spent (the
    /// store grants nothing for a retired version), then reads the new one;
    /// within this TTL at the latest. Retired versions still decrypt, so this
    /// is never a correctness issue, only the delay before a rotation takes
    /// effect everywhere.
    pub fn with_primary_ttl(mut self, ttl: Duration) -> Self {
        self.primaries = moka::future::Cache::builder()
            .max_capacity(10_000)
            .time_to_live(ttl)
            .build();
        self
    }

    /// Rotates a tenant's data key once it has encrypted `n` values — in
    /// every process sharing the key store together (default: half the
    /// nonce budget, about 2^31).
    ///
    /// The budget is enforced, not estimated: each process reserves blocks
    /// of nonces in the key store ([`KeyStore::reserve`]) before it uses
    /// them, and the store never grants more than `n` per key version. When
    /// the store grants nothing more, the keyring rotates — once, whichever
    /// process gets there first ([`KeyStore::rotate`]) — and the others move
    /// to the new version. A process that stops holding a key (restart,
    /// cache expiry) loses at most the rest of its current block, so a
    /// version may end up to one block per process short of `n`, never over.
    pub fn with_rotation_after(mut self, n: u64) -> Self {
        self.rotate_after = n.clamp(1, NONCE_BUDGET);
        self
    }

    /// Reserves nonces in blocks of at most `n` (default 65 536). A key
    /// starts with a small block (256, or `n` if smaller) and doubles it with
    /// each reservation: a busy key reaches the store once per `n`
    /// encryptions, an idle one wastes little when its process lets it go.
    pub fn with_nonce_block(mut self, n: u64) -> Self {
        self.nonce_block = n.max(1);
        self
    }

    /// Rotates a tenant's data key once it is older than `age` (for example 90 days).
    pub fn with_max_age(mut self, age: Duration) -> Self {
        self.max_age = Some(age);
        self
    }

    async fn load(&self, tenant: TenantId, version: u32) -> Result<Arc<DataKey>, CryptoError> {
        if let Some(k) = self.cache.get(&(tenant, version)).await {
            return Ok(k);
        }
        let epoch = self.epoch();
        let stored = self
            .store
            .keys(tenant)
            .await?
            .into_iter()
            .find(|k| k.version == version && k.state != KeyState::Destroyed)
            .ok_or(CryptoError::UnknownKeyVersion(version))?;
        let secret = self.provider.unwrap(tenant, &stored.wrapped).await?;
        // Decrypts at once; encrypts only what the store grants (`primary`).
        let key = Arc::new(DataKey::from_bytes(version, *secret).with_allowance(0));
        if self.epoch() == epoch {
            // Concurrent loads of one key agree on the first one cached, so
            // nonces reserved for it are not stranded on a duplicate.
            return Ok(self
                .cache
                .entry((tenant, version))
                .or_insert(key)
                .await
                .into_value());
        }
        Ok(key)
    }

    fn epoch(&self) -> u64 {
        self.epoch.load(std::sync::atomic::Ordering::Acquire)
    }

    async fn create(&self, tenant: TenantId, version: u32) -> Result<(), CryptoError> {
        let (_, wrapped) = self.provider.generate(tenant).await?;
        self.store
            .insert(StoredKey {
                tenant,
                version,
                wrapped,
                state: if version == 0 {
                    KeyState::Retired
                } else {
                    KeyState::Primary
                },
                created_at: self.now(),
                reserved: 0,
            })
            .await
    }

    /// The primary data key of `tenant`, created on first use, with nonces
    /// reserved for at least one encryption.
    ///
    /// A warm call reads two in-memory caches and makes no store or provider
    /// call. Once the key's reserved nonces are spent it reserves another
    /// block; when the store grants none (the version's budget is spent) or
    /// the key is older than [`Keyring::with_max_age`], it rotates first.
    pub async fn primary(&self, tenant: TenantId) -> Result<Arc<DataKey>, CryptoError> {
        let mut last = 0;
        for _ in 0..ROTATION_ATTEMPTS {
            let (version, created_at) = self.primary_version(tenant).await?;
            last = version;
            let too_old = self.max_age.is_some_and(|age| {
                chrono::Duration::from_std(age).is_ok_and(|age| self.now() - created_at > age)
            });
            if too_old {
                self.rotate_from(tenant, version).await?;
                continue;
            }
            let key = self.load(tenant, version).await?;
            if key.remaining() > 0 {
                return Ok(key);
            }
            let stripe = usize::try_from(tenant.as_uuid().as_u128() % REFILL_STRIPES as u128)
                .unwrap_or_default();
            let _refill = self.refills[stripe].lock().await;
            if key.remaining() > 0 {
                return Ok(key);
            }
            let block = key
                .allowance()
                .clamp(INITIAL_NONCE_BLOCK.min(self.nonce_block), self.nonce_block);
            let granted = self
                .store
                .reserve(tenant, version, block, self.rotate_after)
                .await?;
            if granted > 0 {
                key.grant(granted);
                return Ok(key);
            }
            // The budget is spent, or another process already rotated.
            self.rotate_from(tenant, version).await?;
        }
        Err(CryptoError::NonceBudgetExhausted(last))
    }

    async fn primary_version(&self, tenant: TenantId) -> Result<(u32, DateTime<Utc>), CryptoError> {
        if let Some(p) = self.primaries.get(&tenant).await {
            return Ok(p);
        }
        let epoch = self.epoch();
        let p = self.primary_from_store(tenant).await?;
        if self.epoch() == epoch {
            self.primaries.insert(tenant, p).await;
        }
        Ok(p)
    }

    async fn primary_from_store(
        &self,
        tenant: TenantId,
    ) -> Result<(u32, DateTime<Utc>), CryptoError> {
        for _ in 0..ROTATION_ATTEMPTS {
            let keys = self.store.keys(tenant).await?;
            if keys.iter().any(|k| k.state == KeyState::Destroyed) {
                return Err(CryptoError::UnknownKeyVersion(0));
            }
            if let Some(k) = keys.iter().find(|k| k.state == KeyState::Primary) {
                return Ok((k.version, k.created_at));
            }
            // First use. A concurrent first use may create it too: the
            // loser's insert conflicts, and the next read finds the winner's.
            let next = keys.iter().map(|k| k.version).max().unwrap_or(0) + 1;
            if let Err(e) = self.create(tenant, next).await {
                tracing::debug!(tenant.id = %tenant, error = %e, "first data key created concurrently");
            }
        }
        Err(CryptoError::KeyStore(format!(
            "tenant {tenant} has no primary data key and none could be created"
        )))
    }

    /// Replaces primary version `from` with a new one, unless another
    /// process already did; returns the version this call created.
    async fn rotate_from(&self, tenant: TenantId, from: u32) -> Result<Option<u32>, CryptoError> {
        let keys = self.store.keys(tenant).await?;
        if keys.iter().any(|k| k.state == KeyState::Destroyed) {
            return Err(CryptoError::UnknownKeyVersion(0));
        }
        let still_primary = keys
            .iter()
            .any(|k| k.version == from && k.state == KeyState::Primary);
        let rotated = if still_primary {
            let next = keys.iter().map(|k| k.version).max().unwrap_or(0) + 1;
            let (_, wrapped) = self.provider.generate(tenant).await?;
            let key = StoredKey::new(tenant, next, wrapped, KeyState::Primary, self.now());
            self.store.rotate(from, key).await?.then_some(next)
        } else {
            None
        };
        self.primaries.invalidate(&tenant).await;
        if let Some(next) = rotated {
            tracing::info!(tenant.id = %tenant, version = next, "tenant data key rotated");
            self.audit(
                tenant,
                "key.rotated",
                serde_json::json!({ "version": next }),
            )
            .await;
        }
        Ok(rotated)
    }

    /// Makes a new data key version primary; older versions still decrypt.
    /// If another process rotates at the same moment, one new version is
    /// made, not two, and its number is returned.
    pub async fn rotate(&self, tenant: TenantId) -> Result<u32, CryptoError> {
        let (current, _) = self.primary_from_store(tenant).await?;
        if let Some(next) = self.rotate_from(tenant, current).await? {
            return Ok(next);
        }
        let (now, _) = self.primary_from_store(tenant).await?;
        Ok(now)
    }

    /// Rotates the tenant's KEK and re-wraps every stored key under it,
    /// without touching any encrypted data.
    pub async fn rotate_kek(&self, tenant: TenantId) -> Result<(), CryptoError> {
        self.provider.rotate_kek(tenant).await?;
        for mut k in self.store.keys(tenant).await? {
            if k.state != KeyState::Destroyed {
                k.wrapped = self.provider.rewrap(tenant, &k.wrapped).await?;
                self.store.update(k).await?;
            }
        }
        tracing::info!(tenant.id = %tenant, "tenant key-encryption key rotated; data keys re-wrapped");
        self.audit(tenant, "kek.rotated", serde_json::Value::Null)
            .await;
        Ok(())
    }

    /// The tenant's stored keys, still wrapped (for a backup: they open
    /// only through the same key provider).
    pub async fn export_keys(&self, tenant: TenantId) -> Result<Vec<StoredKey>, CryptoError> {
        self.store.keys(tenant).await
    }

    /// Stores wrapped keys from a backup of the same tenant: versions the
    /// store lacks are inserted, versions it has are left as they are (a
    /// destroyed key is never brought back). Returns how many were inserted.
    pub async fn import_keys(
        &self,
        tenant: TenantId,
        keys: Vec<StoredKey>,
    ) -> Result<u64, CryptoError> {
        let have = self.store.keys(tenant).await?;
        if have.iter().any(|k| k.state == KeyState::Destroyed) {
            return Err(CryptoError::UnknownKeyVersion(0));
        }
        let mut inserted = 0;
        for k in keys {
            if k.tenant != tenant {
                return Err(CryptoError::KeyStore(
                    "a key of another tenant in the import".into(),
                ));
            }
            if have.iter().any(|h| h.version == k.version) {
                continue;
            }
            self.store.insert(k).await?;
            inserted += 1;
        }
        self.evict(tenant).await;
        Ok(inserted)
    }

    /// The tenant's data-key versions in the store and their states
    /// (version 0 is the blind-index root).
    pub async fn versions(&self, tenant: TenantId) -> Result<Vec<(u32, KeyState)>, CryptoError> {
        Ok(self
            .store
            .keys(tenant)
            .await?
            .into_iter()
            .map(|k| (k.version, k.state))
            .collect())
    }

    /// Crypto-shredding: destroys the tenant's KEKs and marks every data key
    /// destroyed, so nothing the tenant ever encrypted can be read again.
    pub async fn shred(&self, tenant: TenantId) -> Result<(), CryptoError> {
        self.provider.destroy(tenant).await?;
        for mut k in self.store.keys(tenant).await? {
            k.state = KeyState::Destroyed;
            k.wrapped.clear();
            self.store.update(k).await?;
        }
        self.evict(tenant).await;
        tracing::warn!(tenant.id = %tenant, "tenant keys destroyed (crypto-shredding)");
        self.audit(tenant, "keys.destroyed", serde_json::Value::Null)
            .await;
        Ok(())
    }

    /// Drops every tenant's unwrapped keys and primary versions from the
    /// caches (for example when a key-change listener may have missed
    /// notifications); the next use of each reads the store again.
    pub async fn evict_all(&self) {
        self.epoch.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        self.cache.invalidate_all();
        self.cache.run_pending_tasks().await;
        self.primaries.invalidate_all();
    }

    /// Drops the tenant's unwrapped keys and primary version from the caches
    /// (for example when another process rotated or shredded them); the next
    /// use reads the store and unwraps again.
    pub async fn evict(&self, tenant: TenantId) {
        self.epoch.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        // Cannot fail (the cache supports invalidation closures); should it
        // ever, drop every cached key rather than keep the tenant's.
        if self
            .cache
            .invalidate_entries_if(move |(t, _), _| *t == tenant)
            .is_err()
        {
            self.cache.invalidate_all();
        }
        self.cache.run_pending_tasks().await;
        self.primaries.invalidate(&tenant).await;
    }

    /// Encrypts a field value for `tenant` with its primary key.
    pub async fn encrypt(
        &self,
        tenant: TenantId,
        context: &[u8],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        let mut result = Err(CryptoError::NonceBudgetExhausted(0));
        // Other tasks may take the last reserved nonces between `primary`
        // and the encryption: then reserve (or rotate) and try again.
        for _ in 0..ROTATION_ATTEMPTS {
            let key = self.primary(tenant).await?;
            result = super::encrypt(&key, tenant, context, plaintext);
            if !matches!(result, Err(CryptoError::NonceBudgetExhausted(_))) {
                break;
            }
        }
        result
    }

    /// Decrypts a field value of `tenant` with whichever version made it.
    pub async fn decrypt(
        &self,
        tenant: TenantId,
        context: &[u8],
        ciphertext: &[u8],
    ) -> Result<Plaintext, CryptoError> {
        let version = super::key_version(ciphertext)?;
        let key = self.load(tenant, version).await?;
        super::decrypt(|_| Some(&key), tenant, context, ciphertext)
    }

    /// The tenant's blind-index key for `purpose`, derived from its index
    /// root (a separate wrapped secret, version 0, shredded with the rest).
    pub async fn blind_index(
        &self,
        tenant: TenantId,
        purpose: &str,
        truncate: usize,
    ) -> Result<BlindIndexKey, CryptoError> {
        let keys = self.store.keys(tenant).await?;
        if keys.iter().any(|k| k.state == KeyState::Destroyed) {
            return Err(CryptoError::UnknownKeyVersion(0));
        }
        if !keys.iter().any(|k| k.version == 0) {
            self.create(tenant, 0).await?;
        }
        let root = self.load(tenant, 0).await?;
        Ok(BlindIndexKey::derive(
            root.expose_bytes(),
            tenant,
            purpose,
            truncate,
        ))
    }
}

/// Writes `bytes` to a new file at `path` that only the owner can read
/// (mode 0600), never through a symbolic link: a leftover file or link at
/// `path` (a crash between write and rename, or a planted link) is removed
/// first, then the file is created exclusively (`O_EXCL`) and synced.
fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut f = options.open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(test)]
mod persistent_tests {
    //! Tests only: a failed unwrap is a failed test.
    use super::*;

    fn master(b: u8) -> Secret {
        Zeroizing::new([b; 32])
    }

    #[tokio::test]
    async fn kek_files_survive_restarts_rotation_and_shredding() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keks.json");
        let tenant = TenantId::new_v4();
        let p = LocalKeyProvider::persistent(master(1), &path).unwrap();
        let (k1, w1) = p.generate(tenant).await.unwrap();
        p.rotate_kek(tenant).await.unwrap();
        let (_, w2) = p.generate(tenant).await.unwrap();
        drop(p);

        // Restart: both KEK versions are back.
        let p = LocalKeyProvider::persistent(master(1), &path).unwrap();
        assert_eq!(*p.unwrap(tenant, &w1).await.unwrap(), *k1);
        assert_eq!(
            &w2[..4],
            &2u32.to_be_bytes(),
            "new keys use the rotated KEK"
        );
        assert!(p.unwrap(tenant, &w2).await.is_ok());
        // The file alone, with another master key, unwraps nothing.
        let wrong = LocalKeyProvider::persistent(master(2), &path).unwrap();
        assert!(wrong.unwrap(tenant, &w1).await.is_err());
        // Shredding is kept too.
        p.destroy(tenant).await.unwrap();
        let p = LocalKeyProvider::persistent(master(1), &path).unwrap();
        assert!(p.unwrap(tenant, &w1).await.is_err());
        // The in-memory provider, by contrast, forgets everything on restart.
        let mem = LocalKeyProvider::new(master(1));
        let (_, w) = mem.generate(tenant).await.unwrap();
        assert!(
            LocalKeyProvider::new(master(1))
                .unwrap(tenant, &w)
                .await
                .is_err()
        );
    }

    /// The KEK file is the owner's alone, and a link planted where its
    /// temporary file goes is replaced, not written through.
    #[cfg(unix)]
    #[tokio::test]
    async fn the_kek_file_is_private_and_never_written_through_a_link() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keks.json");
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"untouched").unwrap();
        std::os::unix::fs::symlink(&victim, path.with_extension("tmp")).unwrap();
        let p = LocalKeyProvider::persistent(master(1), &path).unwrap();
        p.generate(TenantId::new_v4()).await.unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "KEK file mode {mode:o}");
        assert_eq!(std::fs::read(&victim).unwrap(), b"untouched");
        assert!(
            !std::fs::symlink_metadata(&path)
                .unwrap()
                .file_type()
                .is_symlink()
        );
    }

    #[tokio::test]
    async fn a_damaged_kek_file_is_an_error_not_an_empty_keyring() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keks.json");
        std::fs::write(&path, b"{not json").unwrap();
        assert!(matches!(
            LocalKeyProvider::persistent(master(1), &path),
            Err(CryptoError::KeyStore(_))
        ));
    }

    #[tokio::test]
    async fn a_kek_that_cannot_be_saved_wraps_nothing() {
        let dir = tempfile::tempdir().unwrap();
        // A directory where the file should be: every save fails.
        let path = dir.path().join("keks.json");
        std::fs::create_dir(path.with_extension("tmp")).unwrap();
        let p = LocalKeyProvider::persistent(master(1), &path).unwrap();
        let tenant = TenantId::new_v4();
        assert!(p.generate(tenant).await.is_err());
        assert!(
            p.generate(tenant).await.is_err(),
            "not silently kept in memory"
        );
    }
}
