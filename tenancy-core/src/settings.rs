//! Per-tenant settings: a key/value store of JSON values where values marked
//! secret are kept encrypted with the tenant's keys.
//!
//! [`TenantSettings`] is the API; a [`SettingsStore`] holds the entries
//! ([`InMemorySettingsStore`] here, `PgSettingsStore` in tenancy-sqlx). A
//! secret is sealed with the tenant's primary data key, its context bound to
//! the setting's key, so it opens only as that setting of that tenant; it is
//! decrypted only by [`TenantSettings::get`] and never shown by
//! [`TenantSettings::list`].
//!
//! ```
//! use std::sync::Arc;
//! use tenancy_core::crypto::keys::{InMemoryKeyStore, Keyring, LocalKeyProvider};
//! use tenancy_core::settings::{InMemorySettingsStore, Setting, TenantSettings};
//! use tenancy_core::TenantId;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let keys = Arc::new(Keyring::new(
//!     Arc::new(LocalKeyProvider::new(LocalKeyProvider::master_from_base64(
//!         "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8")?)),
//!     Arc::new(InMemoryKeyStore::default()),
//! ));
//! let settings = TenantSettings::new(Arc::new(InMemorySettingsStore::default()), keys);
//! let tenant = TenantId::new_v4();
//!
//! settings.set(tenant, "commission.first_year_bps", &1500).await?;
//! settings.set_secret(tenant, "payments.api_key", &"sk_live_123").await?;
//!
//! assert_eq!(settings.get::<u32>(tenant, "commission.first_year_bps").await?, Some(1500));
//! assert_eq!(settings.get::<String>(tenant, "payments.api_key").await?.as_deref(), Some("sk_live_123"));
//!
//! // Listing shows that a secret exists, never its value.
//! let all = settings.list(tenant).await?;
//! assert!(matches!(all.get("payments.api_key"), Some(Setting::Secret { .. })));
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, PoisonError, RwLock};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::TenantId;
use crate::crypto::keys::Keyring;
use crate::crypto::{CryptoError, Encrypted};

/// The longest setting key accepted.
pub const MAX_KEY_LEN: usize = 128;

/// Why a settings operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SettingsError {
    /// The key is empty, too long, or has characters outside `a-z 0-9 . _ -`.
    #[error("invalid setting key {0:?}: use 1-128 characters from a-z, 0-9, '.', '_' and '-'")]
    InvalidKey(String),
    /// The stored value is not of the requested type (or a value could not be encoded).
    #[error("setting {key:?} is not of the requested type: {reason}")]
    Type {
        /// The setting.
        key: String,
        /// What serde said.
        reason: String,
    },
    /// Encrypting or decrypting a secret failed (for example the tenant's keys were destroyed).
    #[error("secret setting failed: {0}")]
    Crypto(#[from] CryptoError),
    /// The store failed (details are logged).
    #[error("settings store failed: {0}")]
    Store(String),
}

/// A stored value: plain JSON, or a sealed secret.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum StoredValue {
    /// A plain JSON value.
    Plain(serde_json::Value),
    /// An encrypted JSON value.
    Secret(Encrypted<serde_json::Value>),
}

/// One entry as a [`SettingsStore`] keeps it.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct SettingEntry {
    /// The setting key.
    pub key: String,
    /// The value.
    pub value: StoredValue,
    /// When it was last written.
    pub updated_at: DateTime<Utc>,
}

impl SettingEntry {
    /// An entry (for stores outside this crate).
    pub fn new(key: String, value: StoredValue, updated_at: DateTime<Utc>) -> Self {
        Self {
            key,
            value,
            updated_at,
        }
    }
}

/// A setting as [`TenantSettings::list`] shows it.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Setting {
    /// A plain value.
    Plain(serde_json::Value),
    /// A secret: its value is not shown.
    Secret {
        /// When it was last written.
        updated_at: DateTime<Utc>,
    },
}

/// Where setting entries live. Implementations scope every call to the tenant.
#[async_trait]
pub trait SettingsStore: Send + Sync {
    /// One entry.
    async fn get(&self, tenant: TenantId, key: &str)
    -> Result<Option<SettingEntry>, SettingsError>;
    /// Every entry of the tenant, by key.
    async fn list(&self, tenant: TenantId) -> Result<Vec<SettingEntry>, SettingsError>;
    /// Inserts or replaces an entry.
    async fn put(&self, tenant: TenantId, entry: SettingEntry) -> Result<(), SettingsError>;
    /// Removes an entry; whether it existed.
    async fn delete(&self, tenant: TenantId, key: &str) -> Result<bool, SettingsError>;
}

/// A [`SettingsStore`] in memory (tests, examples).
#[derive(Debug, Default)]
pub struct InMemorySettingsStore {
    entries: RwLock<HashMap<TenantId, BTreeMap<String, SettingEntry>>>,
}

#[async_trait]
impl SettingsStore for InMemorySettingsStore {
    async fn get(
        &self,
        tenant: TenantId,
        key: &str,
    ) -> Result<Option<SettingEntry>, SettingsError> {
        Ok(self
            .entries
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&tenant)
            .and_then(|m| m.get(key).cloned()))
    }

    async fn list(&self, tenant: TenantId) -> Result<Vec<SettingEntry>, SettingsError> {
        Ok(self
            .entries
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&tenant)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default())
    }

    async fn put(&self, tenant: TenantId, entry: SettingEntry) -> Result<(), SettingsError> {
        self.entries
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(tenant)
            .or_default()
            .insert(entry.key.clone(), entry);
        Ok(())
    }

    async fn delete(&self, tenant: TenantId, key: &str) -> Result<bool, SettingsError> {
        Ok(self
            .entries
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .get_mut(&tenant)
            .is_some_and(|m| m.remove(key).is_some()))
    }
}

/// Per-tenant settings with encrypted secrets. See the [module docs](self).
#[derive(Clone)]
pub struct TenantSettings {
    store: Arc<dyn SettingsStore>,
    keys: Arc<Keyring>,
}

impl std::fmt::Debug for TenantSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantSettings").finish_non_exhaustive()
    }
}

/// Checks a setting key: 1–128 characters from `a-z 0-9 . _ -`.
///
/// ```
/// use tenancy_core::settings::validate_key;
/// assert!(validate_key("commission.renewal_bps").is_ok());
/// assert!(validate_key("").is_err());
/// assert!(validate_key("Drop Table").is_err());
/// ```
pub fn validate_key(key: &str) -> Result<(), SettingsError> {
    let ok = !key.is_empty()
        && key.len() <= MAX_KEY_LEN
        && key
            .bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(SettingsError::InvalidKey(
            key.chars().take(MAX_KEY_LEN).collect(),
        ))
    }
}

fn context(key: &str) -> Vec<u8> {
    let mut c = b"tenancy-rs/settings/".to_vec();
    c.extend_from_slice(key.as_bytes());
    c
}

fn type_error(key: &str, e: impl std::fmt::Display) -> SettingsError {
    SettingsError::Type {
        key: key.to_owned(),
        reason: e.to_string(),
    }
}

impl TenantSettings {
    /// Settings over `store`, sealing secrets with `keys`.
    pub fn new(store: Arc<dyn SettingsStore>, keys: Arc<Keyring>) -> Self {
        Self { store, keys }
    }

    /// Sets a plain value.
    pub async fn set<T: Serialize + ?Sized>(
        &self,
        tenant: TenantId,
        key: &str,
        value: &T,
    ) -> Result<(), SettingsError> {
        validate_key(key)?;
        let value = serde_json::to_value(value).map_err(|e| type_error(key, e))?;
        self.put(tenant, key, StoredValue::Plain(value)).await
    }

    /// Sets a secret value: stored encrypted with the tenant's keys.
    pub async fn set_secret<T: Serialize + ?Sized>(
        &self,
        tenant: TenantId,
        key: &str,
        value: &T,
    ) -> Result<(), SettingsError> {
        validate_key(key)?;
        let value = serde_json::to_value(value).map_err(|e| type_error(key, e))?;
        let sealed = Encrypted::seal(&self.keys, tenant, &context(key), &value).await?;
        self.put(tenant, key, StoredValue::Secret(sealed)).await
    }

    async fn put(
        &self,
        tenant: TenantId,
        key: &str,
        value: StoredValue,
    ) -> Result<(), SettingsError> {
        self.store
            .put(tenant, SettingEntry::new(key.to_owned(), value, Utc::now()))
            .await
    }

    /// Reads a value (a secret is decrypted), or `None` when unset.
    pub async fn get<T: DeserializeOwned>(
        &self,
        tenant: TenantId,
        key: &str,
    ) -> Result<Option<T>, SettingsError> {
        validate_key(key)?;
        let Some(entry) = self.store.get(tenant, key).await? else {
            return Ok(None);
        };
        let value = match entry.value {
            StoredValue::Plain(v) => v,
            StoredValue::Secret(sealed) => sealed.open(&self.keys, tenant, &context(key)).await?,
        };
        serde_json::from_value(value)
            .map(Some)
            .map_err(|e| type_error(key, e))
    }

    /// Reads a value, or `default` when unset.
    pub async fn get_or<T: DeserializeOwned>(
        &self,
        tenant: TenantId,
        key: &str,
        default: T,
    ) -> Result<T, SettingsError> {
        Ok(self.get(tenant, key).await?.unwrap_or(default))
    }

    /// Whether a setting exists and is a secret.
    pub async fn is_secret(&self, tenant: TenantId, key: &str) -> Result<bool, SettingsError> {
        validate_key(key)?;
        Ok(matches!(
            self.store.get(tenant, key).await?,
            Some(SettingEntry {
                value: StoredValue::Secret(_),
                ..
            })
        ))
    }

    /// Every setting of the tenant; secrets are listed without their values.
    pub async fn list(&self, tenant: TenantId) -> Result<BTreeMap<String, Setting>, SettingsError> {
        Ok(self
            .store
            .list(tenant)
            .await?
            .into_iter()
            .map(|e| {
                let shown = match e.value {
                    StoredValue::Plain(v) => Setting::Plain(v),
                    StoredValue::Secret(_) => Setting::Secret {
                        updated_at: e.updated_at,
                    },
                };
                (e.key, shown)
            })
            .collect())
    }

    /// Removes a setting; whether it existed.
    pub async fn delete(&self, tenant: TenantId, key: &str) -> Result<bool, SettingsError> {
        validate_key(key)?;
        self.store.delete(tenant, key).await
    }
}
