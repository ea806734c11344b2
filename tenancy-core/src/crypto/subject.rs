//! Data-subject keys: one key per person (or any other data subject) inside
//! a tenant, so that erasing one subject destroys exactly their data.
//!
//! A tenant's records about one subject — a customer's phone number, tax id,
//! medical history — are encrypted with that subject's own random 256-bit
//! key. The key is stored only wrapped by the tenant's data key (through its
//! [`Keyring`], bound to the subject), in a [`SubjectKeyStore`]: the
//! hierarchy is KEK → tenant data key → subject key. Wrapping with the
//! tenant's cached data key means a new subject, or a subject read for the
//! first time, costs no call to the key provider (a KMS): subject keys keep
//! working through a provider outage exactly as long as tenant keys do. Erasing the
//! subject ([`SubjectKeys::erase`]) removes the wrapped key and leaves a
//! tombstone: every value ever encrypted for the subject is now noise, in
//! the live database **and in every copy of it taken before the erasure**,
//! while the rest of the tenant is untouched. The tombstone also keeps a key
//! from being made for the subject again, so a late write cannot store new
//! readable data about someone who was forgotten.
//!
//! # Where the subject keys live
//!
//! The guarantee about earlier copies holds only if the wrapped subject keys
//! are **not** in those copies: keep the [`SubjectKeyStore`] apart from the
//! database you back up — beside the KEKs (`tenancy_sqlx::sqlite::
//! SqliteSubjectKeyStore`, a small file with secure deletion), or in a secret
//! store of your own. A subject-key store inside the tenant's database would
//! travel with every backup, and a backup plus the live KEK would open the
//! erased subject's data again.
//!
//! # Ciphertexts
//!
//! Values use the ordinary field format ([`super::encrypt`]) with the key
//! version [`SUBJECT_KEY_VERSION`], so code reading a column that holds both
//! tenant-key and subject-key values can tell them apart
//! ([`is_subject_sealed`]). The associated data binds the subject besides
//! the tenant and the caller's context: a value moved to another subject's
//! row does not open.
//!
//! Each subject key encrypts a handful of values over its life. The nonce
//! budget ([`super::NONCE_BUDGET`]) is counted per process, not in the store.
//!
//! ```
//! use std::sync::Arc;
//! use tenancy_core::crypto::keys::{InMemoryKeyStore, Keyring, LocalKeyProvider};
//! use tenancy_core::crypto::subject::{InMemorySubjectKeyStore, SubjectId, SubjectKeys};
//! use tenancy_core::crypto::CryptoError;
//! use tenancy_core::TenantId;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let provider = LocalKeyProvider::new(LocalKeyProvider::master_from_base64(
//!     "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8")?);
//! let keyring = Keyring::new(Arc::new(provider), Arc::new(InMemoryKeyStore::default()));
//! let keys = SubjectKeys::new(Arc::new(keyring), Arc::new(InMemorySubjectKeyStore::default()));
//! let tenant = TenantId::new_v4();
//! let (alice, bob) = (SubjectId::new("customer:alice")?, SubjectId::new("customer:bob")?);
//!
//! let a = keys.encrypt(tenant, &alice, b"customers.pan", b"ABCDE1234F").await?;
//! let b = keys.encrypt(tenant, &bob, b"customers.pan", b"FGHIJ5678K").await?;
//!
//! keys.erase(tenant, &alice).await?;
//! assert_eq!(keys.decrypt(tenant, &alice, b"customers.pan", &a).await, Err(CryptoError::SubjectErased));
//! assert_eq!(keys.decrypt(tenant, &bob, b"customers.pan", &b).await?.as_slice(), b"FGHIJ5678K");
//! // No new key is made for a forgotten subject.
//! assert!(keys.encrypt(tenant, &alice, b"customers.pan", b"again").await.is_err());
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::keys::Keyring;
use super::{CryptoError, DataKey, Plaintext};
use crate::TenantId;

/// The key version written into every ciphertext made with a subject key.
/// Tenant data keys count up from 1 and never reach it.
pub const SUBJECT_KEY_VERSION: u32 = u32::MAX;

/// The longest subject id, in bytes.
pub const MAX_SUBJECT_LEN: usize = 128;

/// Whether `ciphertext` was made with a subject key (its key version is
/// [`SUBJECT_KEY_VERSION`]); `false` for tenant-key values and for anything
/// that is not a ciphertext.
///
/// ```
/// use tenancy_core::crypto::{encrypt, DataKey};
/// use tenancy_core::crypto::subject::is_subject_sealed;
/// use tenancy_core::TenantId;
///
/// let tenant_value = encrypt(&DataKey::generate(1), TenantId::new_v4(), b"c", b"x")?;
/// assert!(!is_subject_sealed(&tenant_value));
/// assert!(!is_subject_sealed(b"not a ciphertext"));
/// # Ok::<(), tenancy_core::crypto::CryptoError>(())
/// ```
pub fn is_subject_sealed(ciphertext: &[u8]) -> bool {
    super::key_version(ciphertext).is_ok_and(|v| v == SUBJECT_KEY_VERSION)
}

/// The id of a data subject within a tenant, such as `customer:<uuid>`:
/// 1 to [`MAX_SUBJECT_LEN`] bytes of ASCII letters, digits and `:._@/-`.
///
/// Use opaque ids (a record id), never the person's name or email: the id
/// stays in the tombstone after the erasure.
///
/// ```
/// use tenancy_core::crypto::subject::SubjectId;
///
/// assert_eq!(SubjectId::new("customer:42")?.as_str(), "customer:42");
/// assert!(SubjectId::new("").is_err());
/// assert!(SubjectId::new("customer 42").is_err());
/// # Ok::<(), tenancy_core::crypto::CryptoError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SubjectId(String);

impl SubjectId {
    /// Checks and wraps a subject id.
    pub fn new(id: impl Into<String>) -> Result<Self, CryptoError> {
        let id = id.into();
        let ok = !id.is_empty()
            && id.len() <= MAX_SUBJECT_LEN
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b":._@/-".contains(&b));
        if ok {
            Ok(Self(id))
        } else {
            Err(CryptoError::BadSubject(format!(
                "subject ids are 1 to {MAX_SUBJECT_LEN} ASCII letters, digits or :._@/- (got {} bytes)",
                id.len()
            )))
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for SubjectId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One subject's entry in a [`SubjectKeyStore`]: a live wrapped key, or the
/// tombstone an erasure leaves.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoredSubjectKey {
    /// The tenant.
    pub tenant: TenantId,
    /// The subject.
    pub subject: SubjectId,
    /// The key wrapped by the tenant's data key; `None` once erased.
    pub wrapped: Option<Vec<u8>>,
    /// When the key (or, for a subject erased before any key was made, the
    /// tombstone) was created.
    pub created_at: DateTime<Utc>,
    /// When the subject was erased.
    pub erased_at: Option<DateTime<Utc>>,
}

impl StoredSubjectKey {
    /// A live key.
    pub fn live(
        tenant: TenantId,
        subject: SubjectId,
        wrapped: Vec<u8>,
        created_at: DateTime<Utc>,
    ) -> Self {
        Self {
            tenant,
            subject,
            wrapped: Some(wrapped),
            created_at,
            erased_at: None,
        }
    }

    /// A tombstone.
    pub fn erased(
        tenant: TenantId,
        subject: SubjectId,
        created_at: DateTime<Utc>,
        erased_at: DateTime<Utc>,
    ) -> Self {
        Self {
            tenant,
            subject,
            wrapped: None,
            created_at,
            erased_at: Some(erased_at),
        }
    }

    /// Whether the subject was erased.
    pub fn is_erased(&self) -> bool {
        self.erased_at.is_some()
    }
}

/// Where wrapped subject keys and tombstones are kept. Keep it apart from the
/// database it protects (see the [module documentation](self)).
///
/// Implementations must make [`SubjectKeyStore::erase`] final: the wrapped
/// bytes are gone from the store's storage (not only hidden), and
/// [`SubjectKeyStore::insert`] never replaces a tombstone.
#[async_trait]
pub trait SubjectKeyStore: Send + Sync {
    /// The subject's entry, live or erased.
    async fn get(
        &self,
        tenant: TenantId,
        subject: &SubjectId,
    ) -> Result<Option<StoredSubjectKey>, CryptoError>;

    /// Stores `key` unless the subject already has an entry, and returns
    /// the entry stored afterwards: `key` itself, or the one that was there
    /// first (another process's key, or a tombstone).
    async fn insert(&self, key: StoredSubjectKey) -> Result<StoredSubjectKey, CryptoError>;

    /// Destroys the subject's wrapped key and leaves a tombstone (also for a
    /// subject that had no key yet). Returns whether a live key was destroyed.
    async fn erase(
        &self,
        tenant: TenantId,
        subject: &SubjectId,
        at: DateTime<Utc>,
    ) -> Result<bool, CryptoError>;

    /// The tenant's entries in subject order, after `after`, at most `limit`
    /// (for backups and reports).
    async fn list(
        &self,
        tenant: TenantId,
        after: Option<&SubjectId>,
        limit: usize,
    ) -> Result<Vec<StoredSubjectKey>, CryptoError>;

    /// Removes every entry of the tenant, tombstones included (when the
    /// tenant itself is purged). Returns how many were removed.
    async fn purge(&self, tenant: TenantId) -> Result<u64, CryptoError>;
}

/// A [`SubjectKeyStore`] in memory, for tests and examples.
#[derive(Debug, Default)]
pub struct InMemorySubjectKeyStore {
    entries: std::sync::Mutex<BTreeMap<(TenantId, SubjectId), StoredSubjectKey>>,
}

impl InMemorySubjectKeyStore {
    fn entries(
        &self,
    ) -> std::sync::MutexGuard<'_, BTreeMap<(TenantId, SubjectId), StoredSubjectKey>> {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[async_trait]
impl SubjectKeyStore for InMemorySubjectKeyStore {
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
        let entry = entries
            .entry((tenant, subject.clone()))
            .or_insert_with(|| StoredSubjectKey::erased(tenant, subject.clone(), at, at));
        let destroyed = entry.wrapped.is_some();
        if let Some(mut w) = entry.wrapped.take() {
            zeroize::Zeroize::zeroize(&mut w);
        }
        entry.erased_at.get_or_insert(at);
        Ok(destroyed)
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

/// What an erasure did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Erasure {
    /// The tenant.
    pub tenant: TenantId,
    /// The subject.
    pub subject: SubjectId,
    /// Whether a live key was destroyed (`false`: the subject had no key, or
    /// was already erased; the tombstone is there either way).
    pub destroyed_key: bool,
    /// When.
    pub erased_at: DateTime<Utc>,
}

/// Subject keys, ready to use: creates a subject's key on first use, caches
/// unwrapped keys, and erases.
///
/// Unwrapped keys are cached for a minute by default
/// ([`SubjectKeys::with_cache`]). An erasure drops the key from this
/// process's cache at once; another process sharing the store stops using
/// its cached copy within the TTL at the latest.
pub struct SubjectKeys {
    keyring: Arc<Keyring>,
    store: Arc<dyn SubjectKeyStore>,
    cache: moka::future::Cache<(TenantId, SubjectId), Arc<DataKey>>,
    /// Bumped by every erasure and eviction: a load that read the store
    /// before one does not cache what it read.
    epoch: AtomicU64,
    clock: Arc<dyn crate::quota::Clock>,
    audit: Option<Arc<dyn crate::audit::AuditSink>>,
}

impl std::fmt::Debug for SubjectKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubjectKeys").finish_non_exhaustive()
    }
}

fn cache(capacity: u64, ttl: Duration) -> moka::future::Cache<(TenantId, SubjectId), Arc<DataKey>> {
    moka::future::Cache::builder()
        .max_capacity(capacity)
        .time_to_live(ttl)
        .support_invalidation_closures()
        .build()
}

/// What a wrapped subject key is bound to besides the tenant.
fn wrap_context(subject: &SubjectId) -> Vec<u8> {
    let mut c = b"tenancy-rs/subject-key/v1:".to_vec();
    c.extend_from_slice(subject.0.as_bytes());
    c
}

fn context_for(subject: &SubjectId, context: &[u8]) -> Vec<u8> {
    let mut c = Vec::with_capacity(9 + subject.0.len() + 1 + context.len());
    c.extend_from_slice(b"subject:");
    c.extend_from_slice(subject.0.as_bytes());
    c.push(0);
    c.extend_from_slice(context);
    c
}

impl SubjectKeys {
    /// Subject keys wrapped by the tenants' data keys in `keyring` and kept
    /// in `store`; up to 10 000 unwrapped keys cached for 60 seconds.
    pub fn new(keyring: Arc<Keyring>, store: Arc<dyn SubjectKeyStore>) -> Self {
        Self {
            keyring,
            store,
            cache: cache(10_000, Duration::from_secs(60)),
            epoch: AtomicU64::new(0),
            clock: Arc::new(crate::quota::SystemClock),
            audit: None,
        }
    }

    /// Caches up to `capacity` unwrapped keys, each for at most `ttl`. The
    /// TTL bounds how long another process keeps using a key erased here.
    pub fn with_cache(mut self, capacity: u64, ttl: Duration) -> Self {
        self.cache = cache(capacity, ttl);
        self
    }

    /// Reads time from `clock` (creation and erasure times).
    pub fn with_clock(mut self, clock: Arc<dyn crate::quota::Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Records erasures (`subject.erased`, actor `system:subject-keys`) as
    /// audit events of the tenant.
    pub fn with_audit(mut self, sink: Arc<dyn crate::audit::AuditSink>) -> Self {
        self.audit = Some(sink);
        self
    }

    /// The store (for backups and reports).
    pub fn store(&self) -> &Arc<dyn SubjectKeyStore> {
        &self.store
    }

    fn now(&self) -> DateTime<Utc> {
        let t = self.clock.now();
        i64::try_from(t.as_secs())
            .ok()
            .and_then(|s| DateTime::from_timestamp(s, t.subsec_nanos()))
            .unwrap_or_else(Utc::now)
    }

    fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    async fn unwrap_entry(&self, entry: &StoredSubjectKey) -> Result<Arc<DataKey>, CryptoError> {
        // A tombstone is final even if a store kept the bytes.
        let (Some(wrapped), None) = (&entry.wrapped, entry.erased_at) else {
            return Err(CryptoError::SubjectErased);
        };
        let secret = self
            .keyring
            .decrypt(entry.tenant, &wrap_context(&entry.subject), wrapped)
            .await?;
        Ok(Arc::new(DataKey::from_slice(SUBJECT_KEY_VERSION, &secret)?))
    }

    /// The subject's key; created when `create` and the subject has none.
    async fn key(
        &self,
        tenant: TenantId,
        subject: &SubjectId,
        create: bool,
    ) -> Result<Arc<DataKey>, CryptoError> {
        let id = (tenant, subject.clone());
        if let Some(k) = self.cache.get(&id).await {
            return Ok(k);
        }
        let epoch = self.epoch();
        let entry = match self.store.get(tenant, subject).await? {
            Some(e) => e,
            None if create => {
                let fresh = DataKey::generate(SUBJECT_KEY_VERSION);
                let wrapped = self
                    .keyring
                    .encrypt(tenant, &wrap_context(subject), fresh.expose_bytes())
                    .await?;
                self.store
                    .insert(StoredSubjectKey::live(
                        tenant,
                        subject.clone(),
                        wrapped,
                        self.now(),
                    ))
                    .await?
            }
            None => return Err(CryptoError::UnknownKeyVersion(SUBJECT_KEY_VERSION)),
        };
        let key = self.unwrap_entry(&entry).await?;
        if self.epoch() == epoch {
            let key = self
                .cache
                .entry(id.clone())
                .or_insert(key)
                .await
                .into_value();
            // An erasure that began after the check above: its own
            // invalidation may have run before this insert, so drop it here.
            if self.epoch() != epoch {
                self.cache.invalidate(&id).await;
            }
            return Ok(key);
        }
        Ok(key)
    }

    /// Encrypts a value about `subject` (creating the subject's key on first
    /// use). Fails with [`CryptoError::SubjectErased`] once the subject was
    /// erased.
    pub async fn encrypt(
        &self,
        tenant: TenantId,
        subject: &SubjectId,
        context: &[u8],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        let key = self.key(tenant, subject, true).await?;
        super::encrypt(&key, tenant, &context_for(subject, context), plaintext)
    }

    /// Decrypts a value about `subject`. Fails with
    /// [`CryptoError::SubjectErased`] once the subject was erased, and with
    /// [`CryptoError::Authentication`] for a value of another subject,
    /// tenant or context.
    pub async fn decrypt(
        &self,
        tenant: TenantId,
        subject: &SubjectId,
        context: &[u8],
        ciphertext: &[u8],
    ) -> Result<Plaintext, CryptoError> {
        let version = super::key_version(ciphertext)?;
        if version != SUBJECT_KEY_VERSION {
            return Err(CryptoError::UnknownKeyVersion(version));
        }
        let key = self.key(tenant, subject, false).await?;
        super::decrypt(
            |_| Some(&key),
            tenant,
            &context_for(subject, context),
            ciphertext,
        )
    }

    /// Whether the subject was erased (`None`: the store has no entry).
    pub async fn erased_at(
        &self,
        tenant: TenantId,
        subject: &SubjectId,
    ) -> Result<Option<DateTime<Utc>>, CryptoError> {
        Ok(self
            .store
            .get(tenant, subject)
            .await?
            .and_then(|e| e.erased_at))
    }

    /// Erases the subject: destroys their key (so nothing ever encrypted for
    /// them decrypts again, from any copy) and leaves a tombstone. Erasing
    /// twice is harmless.
    pub async fn erase(
        &self,
        tenant: TenantId,
        subject: &SubjectId,
    ) -> Result<Erasure, CryptoError> {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        let id = (tenant, subject.clone());
        self.cache.invalidate(&id).await;
        let at = self.now();
        let destroyed_key = self.store.erase(tenant, subject, at).await?;
        // A load that began before the erasure may have cached the key since.
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.cache.invalidate(&id).await;
        tracing::info!(tenant.id = %tenant, subject = %subject, destroyed_key, "data subject erased");
        if let Some(sink) = &self.audit {
            let event = crate::audit::AuditEvent::system(
                tenant,
                "subject-keys",
                "subject.erased",
                "subject_keys",
            )
            .with_details(serde_json::json!({
                "subject": subject.as_str(),
                "destroyed_key": destroyed_key,
            }));
            if let Err(e) = sink.record(event).await {
                tracing::error!(tenant.id = %tenant, error = %e, "subject erasure not audited");
            }
        }
        Ok(Erasure {
            tenant,
            subject: subject.clone(),
            destroyed_key,
            erased_at: at,
        })
    }

    /// Drops the tenant's cached subject keys (after its KEKs are destroyed,
    /// for example).
    pub async fn evict(&self, tenant: TenantId) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        if self
            .cache
            .invalidate_entries_if(move |(t, _), _| *t == tenant)
            .is_err()
        {
            self.cache.invalidate_all();
        }
        self.cache.run_pending_tasks().await;
    }

    /// Removes every subject key and tombstone of the tenant (when the
    /// tenant is purged, after its KEKs are destroyed). Returns how many.
    pub async fn purge(&self, tenant: TenantId) -> Result<u64, CryptoError> {
        self.evict(tenant).await;
        self.store.purge(tenant).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::keys::{InMemoryKeyStore, LocalKeyProvider};

    fn keys() -> SubjectKeys {
        let provider = LocalKeyProvider::new(zeroize::Zeroizing::new([9u8; 32]));
        let keyring = Keyring::new(Arc::new(provider), Arc::new(InMemoryKeyStore::default()));
        SubjectKeys::new(
            Arc::new(keyring),
            Arc::new(InMemorySubjectKeyStore::default()),
        )
    }

    #[tokio::test]
    async fn values_are_bound_to_their_subject() {
        let k = keys();
        let t = TenantId::new_v4();
        let (a, b) = (SubjectId::new("a").unwrap(), SubjectId::new("b").unwrap());
        let ct = k.encrypt(t, &a, b"c", b"v").await.unwrap();
        assert!(is_subject_sealed(&ct));
        k.encrypt(t, &b, b"c", b"w").await.unwrap();
        assert_eq!(
            k.decrypt(t, &b, b"c", &ct).await,
            Err(CryptoError::Authentication)
        );
        assert_eq!(
            k.decrypt(TenantId::new_v4(), &a, b"c", &ct).await,
            Err(CryptoError::UnknownKeyVersion(SUBJECT_KEY_VERSION))
        );
    }

    #[tokio::test]
    async fn a_subject_erased_before_any_key_never_gets_one() {
        let k = keys();
        let t = TenantId::new_v4();
        let s = SubjectId::new("customer:1").unwrap();
        let e = k.erase(t, &s).await.unwrap();
        assert!(!e.destroyed_key);
        assert_eq!(
            k.encrypt(t, &s, b"c", b"v").await,
            Err(CryptoError::SubjectErased)
        );
        assert!(k.erased_at(t, &s).await.unwrap().is_some());
    }
}
