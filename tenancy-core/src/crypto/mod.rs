//! Per-tenant field encryption and blind indexes.
//!
//! This module holds the parts that need no key storage: the versioned
//! ciphertext format and AES-256-GCM field encryption bound to a tenant and
//! a context ([`DataKey`], [`encrypt`], [`decrypt`]), and keyed blind indexes
//! for equality search over encrypted columns ([`BlindIndexKey`]).
//!
//! # Ciphertext format, version 1
//!
//! ```text
//! byte 0        format version (1)
//! bytes 1..5    key version, u32 big-endian
//! bytes 5..17   nonce, 96 random bits
//! bytes 17..    AES-256-GCM ciphertext followed by its 16-byte tag
//! ```
//!
//! The associated data — authenticated, not stored — is
//! `"tenancy-rs/field/v1" ‖ format version ‖ tenant id (16 bytes) ‖ key
//! version ‖ context length (u32 BE) ‖ context`, where the context is chosen
//! by the caller (for example `customer_profiles.pan` and the row id). A
//! ciphertext therefore opens only for the tenant, key version and context
//! it was made for: copied to another tenant, another column or another row
//! it is an error, never plaintext. The text form is `tnc1:` followed by the
//! bytes in unpadded base64url.
//!
//! Every failure is a [`CryptoError`]; nothing here ever returns ciphertext
//! or garbage as if it were plaintext.

use std::sync::atomic::{AtomicU64, Ordering};

mod field;
pub mod keys;
#[cfg(feature = "aws-kms")]
pub mod kms;
pub mod reencrypt;
pub mod subject;

pub use field::Encrypted;

use aes_gcm::Tag;
use aes_gcm::aead::{AeadInPlace, KeyInit, OsRng, rand_core::RngCore};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::TenantId;

/// The current ciphertext format version.
pub const FORMAT_VERSION: u8 = 1;

/// The prefix of the text encoding.
pub const TEXT_PREFIX: &str = "tnc1:";

const HEADER_LEN: usize = 1 + 4 + 12;
const TAG_LEN: usize = 16;
const AAD_LABEL: &[u8] = b"tenancy-rs/field/v1";

/// Random 96-bit nonces are safe for at most 2^32 messages per key (NIST SP
/// 800-38D); a [`DataKey`] refuses to encrypt past this budget, well below.
pub const NONCE_BUDGET: u64 = (1 << 32) - (1 << 20);

/// Why encryption, decryption or key handling failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CryptoError {
    /// The input is shorter than a ciphertext can be.
    #[error("ciphertext is truncated")]
    Truncated,
    /// The input does not start with a known format version.
    #[error("unknown ciphertext format version {0}")]
    UnknownFormat(u8),
    /// The text form is not `tnc1:` followed by base64url.
    #[error("not an encrypted value: expected tnc1: followed by base64url")]
    NotEncrypted,
    /// No key with this version is available to this tenant (never created,
    /// or destroyed).
    #[error("no key version {0} for this tenant (unknown or destroyed)")]
    UnknownKeyVersion(u32),
    /// Authentication failed: the ciphertext was tampered with, or belongs to
    /// another tenant, key or context.
    #[error("decryption failed: the value was altered or belongs to another tenant or context")]
    Authentication,
    /// The key has encrypted as many values as its nonce budget (or the share
    /// of it granted to this process) allows: rotate it, or grant more.
    #[error("key version {0} reached its nonce budget; rotate to a new key version")]
    NonceBudgetExhausted(u32),
    /// Key material had the wrong length.
    #[error("key material must be 32 bytes")]
    BadKeyLength,
    /// The value inside an [`Encrypted`] field could not be encoded, or its
    /// decrypted bytes are not a value of the expected type.
    #[error("encrypted value does not match the expected type: {0}")]
    Value(String),
    /// The key provider (for example KMS) failed or could not be reached;
    /// details are logged. Retry later; nothing was decrypted.
    #[error("key provider failed: {0}")]
    Provider(String),
    /// The key store failed (details are logged).
    #[error("key store failed: {0}")]
    KeyStore(String),
    /// The data subject was erased: their key is destroyed and nothing
    /// encrypted for them can be decrypted, or encrypted, again.
    #[error("this data subject was erased: their encrypted values can never be read again")]
    SubjectErased,
    /// A data-subject id is not acceptable (see `subject::SubjectId`).
    #[error("bad subject id: {0}")]
    BadSubject(String),
}

impl CryptoError {
    /// Whether the failure is a dependency's — the key provider (a KMS) or
    /// the key store did not answer or failed — rather than the data's: the
    /// same call may succeed a moment later. Web handlers answer 503 with
    /// `Retry-After`; a tampered or foreign value is never retryable.
    ///
    /// ```
    /// use tenancy_core::crypto::CryptoError;
    ///
    /// assert!(CryptoError::Provider("timed out".into()).is_retryable());
    /// assert!(!CryptoError::Authentication.is_retryable());
    /// ```
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Provider(_) | Self::KeyStore(_))
    }
}

/// A 256-bit data-encryption key of one tenant, at one version.
///
/// The key bytes are zeroized when the value is dropped. It counts the
/// values it encrypts and refuses to go past its allowance
/// ([`DataKey::allowance`]), never more than [`NONCE_BUDGET`].
///
/// ```
/// use tenancy_core::crypto::{decrypt, encrypt, DataKey};
/// use tenancy_core::TenantId;
///
/// let tenant = TenantId::new_v4();
/// let key = DataKey::generate(1);
/// let sealed = encrypt(&key, tenant, b"customers.pan:42", b"ABCDE1234F")?;
/// let opened = decrypt(|v| (v == 1).then_some(&key), tenant, b"customers.pan:42", &sealed)?;
/// assert_eq!(opened.as_slice(), b"ABCDE1234F");
///
/// // Another row's context, or another tenant: an error, never plaintext.
/// assert!(decrypt(|_| Some(&key), tenant, b"customers.pan:43", &sealed).is_err());
/// assert!(decrypt(|_| Some(&key), TenantId::new_v4(), b"customers.pan:42", &sealed).is_err());
/// # Ok::<(), tenancy_core::crypto::CryptoError>(())
/// ```
#[derive(ZeroizeOnDrop)]
pub struct DataKey {
    #[zeroize(skip)]
    version: u32,
    bytes: [u8; 32],
    /// The expanded key schedule, built once (aes-gcm zeroizes it on drop).
    #[zeroize(skip)]
    cipher: Aes256Gcm,
    #[zeroize(skip)]
    used: AtomicU64,
    /// How many values this key may encrypt here: [`NONCE_BUDGET`] for a
    /// standalone key; a [`keys::Keyring`] grants blocks reserved in its key
    /// store, so every process together stays within the version's budget.
    #[zeroize(skip)]
    allowed: AtomicU64,
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataKey")
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl DataKey {
    /// A fresh random key.
    pub fn generate(version: u32) -> Self {
        let mut bytes = [0u8; 32];
        OsRng.fill_bytes(&mut bytes);
        Self::from_bytes(version, bytes)
    }

    /// A key from its 32 bytes (for example just unwrapped by a key provider).
    pub fn from_bytes(version: u32, bytes: [u8; 32]) -> Self {
        Self {
            version,
            cipher: Aes256Gcm::new((&bytes).into()),
            bytes,
            used: AtomicU64::new(0),
            allowed: AtomicU64::new(NONCE_BUDGET),
        }
    }

    /// A key from a slice, which must be 32 bytes.
    pub fn from_slice(version: u32, bytes: &[u8]) -> Result<Self, CryptoError> {
        let arr: [u8; 32] = bytes.try_into().map_err(|_| CryptoError::BadKeyLength)?;
        Ok(Self::from_bytes(version, arr))
    }

    /// The key version.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The raw key bytes (for wrapping by a key provider).
    pub fn expose_bytes(&self) -> &[u8; 32] {
        &self.bytes
    }

    /// How many values this key has encrypted (in this process).
    pub fn encryptions(&self) -> u64 {
        self.used.load(Ordering::Acquire)
    }

    /// Sets the encryption count (restore it from storage at load).
    pub fn set_encryptions(&self, n: u64) {
        self.used.store(n, Ordering::Release);
    }

    /// How many values this key may encrypt in total here (its allowance):
    /// [`NONCE_BUDGET`] for a key made with [`DataKey::generate`] or
    /// [`DataKey::from_bytes`]; what the key store granted for a key a
    /// [`keys::Keyring`] loaded.
    ///
    /// ```
    /// use tenancy_core::crypto::{encrypt, CryptoError, DataKey};
    /// use tenancy_core::TenantId;
    ///
    /// let key = DataKey::generate(3).with_allowance(2);
    /// let t = TenantId::new_v4();
    /// encrypt(&key, t, b"c", b"1")?;
    /// encrypt(&key, t, b"c", b"2")?;
    /// assert_eq!(key.remaining(), 0);
    /// assert_eq!(encrypt(&key, t, b"c", b"3"), Err(CryptoError::NonceBudgetExhausted(3)));
    /// key.grant(1); // one more nonce reserved
    /// encrypt(&key, t, b"c", b"3")?;
    /// # Ok::<(), CryptoError>(())
    /// ```
    pub fn allowance(&self) -> u64 {
        self.allowed.load(Ordering::Acquire)
    }

    /// This key, allowed to encrypt at most `n` values (capped at [`NONCE_BUDGET`]).
    pub fn with_allowance(self, n: u64) -> Self {
        self.allowed.store(n.min(NONCE_BUDGET), Ordering::Release);
        self
    }

    /// Allows `n` more encryptions (a block of nonces reserved for this
    /// process); the allowance never exceeds [`NONCE_BUDGET`].
    pub fn grant(&self, n: u64) {
        // The closure always returns Some: the update cannot fail.
        let _ = self
            .allowed
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |a| {
                Some(a.saturating_add(n).min(NONCE_BUDGET))
            });
    }

    /// How many more values this key may encrypt before it needs a grant.
    pub fn remaining(&self) -> u64 {
        self.allowance().saturating_sub(self.encryptions())
    }

    /// Takes one nonce of the allowance, or refuses once it is spent.
    fn take_nonce(&self) -> Result<(), CryptoError> {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.allowed.load(Ordering::Acquire).min(NONCE_BUDGET)).then_some(n + 1)
            })
            .map(|_| ())
            .map_err(|_| CryptoError::NonceBudgetExhausted(self.version))
    }

    fn cipher(&self) -> &Aes256Gcm {
        &self.cipher
    }
}

// Not secret (tenant id, version, caller context): not wiped.
fn aad(tenant: TenantId, version: u32, context: &[u8]) -> Vec<u8> {
    let mut a = Vec::with_capacity(AAD_LABEL.len() + 1 + 16 + 4 + 4 + context.len());
    a.extend_from_slice(AAD_LABEL);
    a.push(FORMAT_VERSION);
    a.extend_from_slice(tenant.as_uuid().as_bytes());
    a.extend_from_slice(&version.to_be_bytes());
    a.extend_from_slice(
        &u32::try_from(context.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    a.extend_from_slice(context);
    a
}

/// Encrypts `plaintext` for `tenant` and `context` with `key`.
pub fn encrypt(
    key: &DataKey,
    tenant: TenantId,
    context: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    key.take_nonce()?;
    let mut nonce = [0u8; 12];
    OsRng.fill_bytes(&mut nonce);
    let aad = aad(tenant, key.version, context);
    // One buffer, encrypted in place: no second allocation, no copy.
    let mut out = Vec::with_capacity(HEADER_LEN + plaintext.len() + TAG_LEN);
    out.push(FORMAT_VERSION);
    out.extend_from_slice(&key.version.to_be_bytes());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(plaintext);
    let tag = key
        .cipher()
        .encrypt_in_place_detached(&Nonce::from(nonce), &aad, &mut out[HEADER_LEN..])
        .map_err(|_| CryptoError::Authentication)?;
    out.extend_from_slice(&tag);
    Ok(out)
}

/// The key version a ciphertext was made with (read before choosing a key).
pub fn key_version(ciphertext: &[u8]) -> Result<u32, CryptoError> {
    if ciphertext.len() < HEADER_LEN + TAG_LEN {
        return Err(CryptoError::Truncated);
    }
    if ciphertext[0] != FORMAT_VERSION {
        return Err(CryptoError::UnknownFormat(ciphertext[0]));
    }
    let mut v = [0u8; 4];
    v.copy_from_slice(&ciphertext[1..5]);
    Ok(u32::from_be_bytes(v))
}

/// Decrypts a ciphertext of `tenant` and `context`; `keys` returns the key
/// for a version (older versions keep decrypting after a rotation).
/// The plaintext is wiped when dropped (see [`Plaintext`]).
pub fn decrypt<'k>(
    keys: impl FnOnce(u32) -> Option<&'k DataKey>,
    tenant: TenantId,
    context: &[u8],
    ciphertext: &[u8],
) -> Result<Plaintext, CryptoError> {
    let version = key_version(ciphertext)?;
    let key = keys(version).ok_or(CryptoError::UnknownKeyVersion(version))?;
    if key.version != version {
        return Err(CryptoError::UnknownKeyVersion(version));
    }
    let aad = aad(tenant, version, context);
    let mut nonce = [0u8; 12];
    nonce.copy_from_slice(&ciphertext[5..HEADER_LEN]);
    let (body, tag) = ciphertext[HEADER_LEN..].split_at(ciphertext.len() - HEADER_LEN - TAG_LEN);
    let mut tag_bytes = [0u8; TAG_LEN];
    tag_bytes.copy_from_slice(tag);
    let mut plain = Plaintext(body.to_vec());
    key.cipher()
        .decrypt_in_place_detached(
            &Nonce::from(nonce),
            &aad,
            &mut plain.0,
            &Tag::from(tag_bytes),
        )
        .map_err(|_| CryptoError::Authentication)?;
    Ok(plain)
}

/// Decrypted bytes, wiped when dropped.
///
/// The wipe is one `memset` followed by an optimisation barrier
/// ([`std::hint::black_box`] on the wiped buffer and a compiler fence), so
/// the compiler cannot drop it as a dead store. It runs at memory speed,
/// where [`zeroize`]'s byte-by-byte volatile writes made decryption of a
/// 64 KiB value about 18 % slower than raw `aes-gcm`
/// (see `docs/benchmarks.md`). It also wipes on a failed decryption, so
/// partially decrypted bytes of a tampered value never linger.
///
/// ```
/// use tenancy_core::crypto::{decrypt, encrypt, DataKey};
/// use tenancy_core::TenantId;
///
/// let (tenant, key) = (TenantId::new_v4(), DataKey::generate(1));
/// let sealed = encrypt(&key, tenant, b"ctx", b"secret")?;
/// let plain = decrypt(|_| Some(&key), tenant, b"ctx", &sealed)?;
/// assert_eq!(&*plain, b"secret");
/// assert_eq!(plain.len(), 6);
/// # Ok::<(), tenancy_core::crypto::CryptoError>(())
/// ```
pub struct Plaintext(Vec<u8>);

impl Plaintext {
    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.0
    }

    /// The bytes as UTF-8 text.
    pub fn as_str(&self) -> Result<&str, std::str::Utf8Error> {
        std::str::from_utf8(&self.0)
    }
}

impl std::ops::Deref for Plaintext {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl PartialEq for Plaintext {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

impl Eq for Plaintext {}

impl AsRef<[u8]> for Plaintext {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for Plaintext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Plaintext({} bytes, redacted)", self.0.len())
    }
}

impl Drop for Plaintext {
    fn drop(&mut self) {
        wipe(&mut self.0);
    }
}

/// Zeroes a buffer at memory speed in a way the optimiser must keep.
fn wipe(buf: &mut [u8]) {
    buf.fill(0);
    std::hint::black_box(&mut *buf);
    std::sync::atomic::compiler_fence(Ordering::SeqCst);
}

/// The text form of a ciphertext: `tnc1:` + unpadded base64url.
pub fn to_text(ciphertext: &[u8]) -> String {
    let mut s = String::from(TEXT_PREFIX);
    URL_SAFE_NO_PAD.encode_string(ciphertext, &mut s);
    s
}

/// Parses the text form.
pub fn from_text(text: &str) -> Result<Vec<u8>, CryptoError> {
    let body = text
        .strip_prefix(TEXT_PREFIX)
        .ok_or(CryptoError::NotEncrypted)?;
    URL_SAFE_NO_PAD
        .decode(body)
        .map_err(|_| CryptoError::NotEncrypted)
}

/// A per-tenant key for blind indexes: HMAC-SHA256 of a normalised value,
/// truncated, so an encrypted column can be searched by equality.
///
/// Derived with HKDF-SHA256 from a tenant's index root secret (kept apart
/// from its data keys) and a purpose label such as the column name, so each
/// column and each tenant get unrelated indexes. Normalise values before
/// indexing (case, spaces, formatting) — [`BlindIndexKey::index`] hashes
/// exactly the bytes it is given.
///
/// ```
/// use tenancy_core::crypto::BlindIndexKey;
/// use tenancy_core::TenantId;
///
/// let (a, b) = (TenantId::new_v4(), TenantId::new_v4());
/// let root = [7u8; 32];
/// let pan_a = BlindIndexKey::derive(&root, a, "customers.pan", 16);
/// let pan_b = BlindIndexKey::derive(&root, b, "customers.pan", 16);
/// assert_eq!(pan_a.index(b"ABCDE1234F"), pan_a.index(b"ABCDE1234F"));
/// assert_ne!(pan_a.index(b"ABCDE1234F"), pan_b.index(b"ABCDE1234F"));
/// assert_eq!(pan_a.index(b"x").len(), 16);
/// ```
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct BlindIndexKey {
    key: [u8; 32],
    #[zeroize(skip)]
    truncate: usize,
}

impl std::fmt::Debug for BlindIndexKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlindIndexKey")
            .field("truncate", &self.truncate)
            .finish_non_exhaustive()
    }
}

impl BlindIndexKey {
    /// Derives the index key of `tenant` for `purpose` from `root`, with
    /// indexes truncated to `truncate` bytes (clamped to 4–32; shorter
    /// indexes leak less and collide more).
    pub fn derive(root: &[u8; 32], tenant: TenantId, purpose: &str, truncate: usize) -> Self {
        let hk = hkdf::Hkdf::<Sha256>::new(Some(tenant.as_uuid().as_bytes()), root);
        let mut info = b"tenancy-rs/blind-index/v1/".to_vec();
        info.extend_from_slice(purpose.as_bytes());
        let mut key = [0u8; 32];
        // 32 bytes is far below HKDF-SHA256's limit of 8160: cannot fail.
        if hk.expand(&info, &mut key).is_err() {
            key = [0u8; 32];
        }
        Self {
            key,
            truncate: truncate.clamp(4, 32),
        }
    }

    /// The index of `normalized`.
    pub fn index(&self, normalized: &[u8]) -> Vec<u8> {
        // HMAC accepts keys of any length: the else branch is unreachable.
        let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(&self.key) else {
            return Vec::new();
        };
        mac.update(normalized);
        let mut out = mac.finalize().into_bytes().to_vec();
        out.truncate(self.truncate);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_layout() {
        let t = TenantId::new_v4();
        let k = DataKey::generate(0x0102_0304);
        let c = encrypt(&k, t, b"ctx", b"hello").unwrap();
        assert_eq!(c[0], FORMAT_VERSION);
        assert_eq!(&c[1..5], &[1, 2, 3, 4]);
        assert_eq!(c.len(), HEADER_LEN + 5 + TAG_LEN);
        assert_eq!(key_version(&c).unwrap(), 0x0102_0304);
    }

    #[test]
    fn nonce_budget_is_enforced() {
        let k = DataKey::generate(9);
        k.set_encryptions(NONCE_BUDGET);
        assert_eq!(
            encrypt(&k, TenantId::new_v4(), b"", b"x"),
            Err(CryptoError::NonceBudgetExhausted(9))
        );
    }
}
