//! [`Encrypted<T>`]: a typed, serde-ready encrypted field.

use std::marker::PhantomData;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::keys::Keyring;
use super::{CryptoError, DataKey, Plaintext, decrypt, encrypt, from_text, key_version, to_text};
use crate::TenantId;

/// An encrypted value of type `T`, as it is stored and sent: the ciphertext,
/// serialized as its text form (`tnc1:` + base64url).
///
/// Put it in a struct in place of the plain field; the value inside is
/// JSON-encoded before encryption, so any `Serialize + DeserializeOwned`
/// type fits. Deserializing checks only the envelope (prefix, encoding,
/// length, format version) — the value itself is opened explicitly with the
/// tenant and the same context it was sealed with, which is what keeps a
/// ciphertext copied to another tenant, column or row from opening.
///
/// ```
/// use std::sync::Arc;
/// use serde::{Deserialize, Serialize};
/// use tenancy_core::crypto::Encrypted;
/// use tenancy_core::crypto::keys::{InMemoryKeyStore, Keyring, LocalKeyProvider};
/// use tenancy_core::TenantId;
///
/// #[derive(Serialize, Deserialize)]
/// struct Customer {
///     name: String,
///     pan: Encrypted<String>,
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let keys = Keyring::new(
///     Arc::new(LocalKeyProvider::new(LocalKeyProvider::master_from_base64(
///         "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8")?)),
///     Arc::new(InMemoryKeyStore::default()),
/// );
/// let tenant = TenantId::new_v4();
/// let pan = Encrypted::seal(&keys, tenant, b"customers.pan:42", &"ABCDE1234F".to_string()).await?;
/// let json = serde_json::to_string(&Customer { name: "Asha".into(), pan })?;
/// assert!(json.contains("\"pan\":\"tnc1:"));
/// assert!(!json.contains("ABCDE1234F"));
///
/// let back: Customer = serde_json::from_str(&json)?;
/// assert_eq!(back.pan.open(&keys, tenant, b"customers.pan:42").await?, "ABCDE1234F");
/// assert!(back.pan.open(&keys, tenant, b"customers.pan:43").await.is_err());
/// # Ok(()) }
/// ```
pub struct Encrypted<T> {
    bytes: Vec<u8>,
    _value: PhantomData<fn() -> T>,
}

impl<T> Encrypted<T> {
    /// Wraps ciphertext bytes (as stored in a `bytea` column), checking the envelope.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self, CryptoError> {
        key_version(&bytes)?;
        Ok(Self {
            bytes,
            _value: PhantomData,
        })
    }

    /// Parses the text form (`tnc1:...`), checking the envelope.
    pub fn from_text(text: &str) -> Result<Self, CryptoError> {
        Self::from_bytes(from_text(text)?)
    }

    /// The ciphertext bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The ciphertext bytes, owned.
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }

    /// The text form.
    pub fn to_text(&self) -> String {
        to_text(&self.bytes)
    }

    /// The data-key version that sealed it (a re-encryption job compares it
    /// with the tenant's primary version).
    pub fn key_version(&self) -> u32 {
        // Checked at construction: the envelope is always well formed.
        key_version(&self.bytes).unwrap_or(0)
    }
}

impl<T: Serialize + DeserializeOwned> Encrypted<T> {
    /// Seals `value` for `tenant` and `context` with the tenant's primary key.
    pub async fn seal(
        keys: &Keyring,
        tenant: TenantId,
        context: &[u8],
        value: &T,
    ) -> Result<Self, CryptoError> {
        let plain = encode(value)?;
        Self::from_bytes(keys.encrypt(tenant, context, &plain).await?)
    }

    /// Opens the value; any failure (wrong tenant or context, tampering,
    /// destroyed key, a value of another type) is an error.
    pub async fn open(
        &self,
        keys: &Keyring,
        tenant: TenantId,
        context: &[u8],
    ) -> Result<T, CryptoError> {
        decode(&keys.decrypt(tenant, context, &self.bytes).await?)
    }

    /// Seals `value` with a given data key (no keyring).
    pub fn seal_with(
        key: &DataKey,
        tenant: TenantId,
        context: &[u8],
        value: &T,
    ) -> Result<Self, CryptoError> {
        let plain = encode(value)?;
        Self::from_bytes(encrypt(key, tenant, context, &plain)?)
    }

    /// Opens the value with a given data key (no keyring).
    pub fn open_with(
        &self,
        key: &DataKey,
        tenant: TenantId,
        context: &[u8],
    ) -> Result<T, CryptoError> {
        decode(&decrypt(|_| Some(key), tenant, context, &self.bytes)?)
    }
}

fn encode<T: Serialize>(value: &T) -> Result<Plaintext, CryptoError> {
    serde_json::to_vec(value)
        .map(Plaintext)
        .map_err(|e| CryptoError::Value(e.to_string()))
}

fn decode<T: DeserializeOwned>(plain: &Plaintext) -> Result<T, CryptoError> {
    serde_json::from_slice(plain).map_err(|e| CryptoError::Value(e.to_string()))
}

impl<T> Clone for Encrypted<T> {
    fn clone(&self) -> Self {
        Self {
            bytes: self.bytes.clone(),
            _value: PhantomData,
        }
    }
}

impl<T> PartialEq for Encrypted<T> {
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes
    }
}

impl<T> Eq for Encrypted<T> {}

impl<T> std::fmt::Debug for Encrypted<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Encrypted<{}>(key v{}, {} bytes)",
            std::any::type_name::<T>(),
            self.key_version(),
            self.bytes.len()
        )
    }
}

impl<T> Serialize for Encrypted<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_text())
    }
}

impl<'de, T> Deserialize<'de> for Encrypted<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
        Self::from_text(&text).map_err(serde::de::Error::custom)
    }
}
