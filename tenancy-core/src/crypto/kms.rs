//! A [`KeyProvider`] backed by AWS KMS (feature `aws-kms`).
//!
//! Data keys are generated and unwrapped by KMS (`GenerateDataKey`,
//! `Decrypt`), always with the tenant id in the **encryption context**
//! (`tenancy:tenant_id`), which KMS binds to the ciphertext: a wrapped key
//! of one tenant does not unwrap as another's, whatever key store row it is
//! copied into. KEK rotation re-wraps with `ReEncrypt`, so plaintext keys
//! never leave KMS for it.
//!
//! Two ways to map tenants to KMS keys ([`KmsKeys`]):
//!
//! - **Shared**: one KMS key for every tenant, separated by the encryption
//!   context. One key to manage and pay for. Crypto-shredding then rests on
//!   erasing the tenant's wrapped data keys (which [`Keyring::shred`] does)
//!   — backups that still hold them could be unwrapped while the shared key
//!   lives. [`KeyProvider::destroy`] only logs in this mode.
//! - **Per tenant**: one KMS key per tenant, created on first use under the
//!   alias `alias/<prefix>/<tenant id>`. Destroying a tenant disables its
//!   key and schedules its deletion (7 days, KMS's minimum), which makes
//!   every copy of its wrapped keys — backups included — unreadable.
//!
//! Wrapped keys are the KMS `CiphertextBlob` as returned.
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use tenancy_core::crypto::keys::{InMemoryKeyStore, Keyring};
//! use tenancy_core::crypto::kms::{KmsKeyProvider, KmsKeys};
//!
//! // Build the client as usual, e.g. `aws_sdk_kms::Client::new(&aws_config::load_from_env().await)`.
//! # let client: aws_sdk_kms::Client = unimplemented!();
//! let provider = KmsKeyProvider::new(client, KmsKeys::per_tenant("tenancy"));
//! let keys = Keyring::new(Arc::new(provider), Arc::new(InMemoryKeyStore::default()));
//! # Ok(()) }
//! ```
//!
//! [`Keyring::shred`]: super::keys::Keyring::shred

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_kms::Client;
use aws_sdk_kms::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::{DataKeySpec, KeyUsageType, Tag};
use zeroize::{Zeroize, Zeroizing};

use super::CryptoError;
use super::keys::{KeyProvider, Secret};
use crate::TenantId;

/// The encryption-context key that carries the tenant id.
pub const CONTEXT_KEY: &str = "tenancy:tenant_id";

/// How tenants map to KMS keys. See the [module docs](self).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum KmsKeys {
    /// One KMS key (id, ARN or alias) for all tenants.
    Shared(String),
    /// One KMS key per tenant, found by the alias `alias/<prefix>/<tenant id>`
    /// and created when missing.
    PerTenant {
        /// The alias prefix, e.g. `tenancy` or `myapp/prod`.
        alias_prefix: String,
    },
}

impl KmsKeys {
    /// One shared KMS key.
    pub fn shared(key_id: impl Into<String>) -> Self {
        Self::Shared(key_id.into())
    }

    /// One KMS key per tenant under `alias/<prefix>/`.
    pub fn per_tenant(alias_prefix: impl Into<String>) -> Self {
        Self::PerTenant {
            alias_prefix: alias_prefix.into().trim_matches('/').to_owned(),
        }
    }
}

/// A [`KeyProvider`] over AWS KMS. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct KmsKeyProvider {
    client: Client,
    keys: KmsKeys,
    /// Per-tenant KMS key ids, so an unwrap does not describe the alias.
    key_ids: moka::sync::Cache<TenantId, String>,
}

impl KmsKeyProvider {
    /// A provider using `client` and the tenant-to-key mapping `keys`.
    pub fn new(client: Client, keys: KmsKeys) -> Self {
        Self {
            client,
            keys,
            key_ids: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(3600))
                .build(),
        }
    }

    /// The alias of a tenant's key in per-tenant mode.
    pub fn alias(&self, tenant: TenantId) -> Option<String> {
        match &self.keys {
            KmsKeys::PerTenant { alias_prefix } => Some(format!("alias/{alias_prefix}/{tenant}")),
            KmsKeys::Shared(_) => None,
        }
    }

    /// The KMS key of `tenant`; in per-tenant mode created when `create` and missing.
    async fn key_id(&self, tenant: TenantId, create: bool) -> Result<String, CryptoError> {
        let alias = match &self.keys {
            KmsKeys::Shared(id) => return Ok(id.clone()),
            KmsKeys::PerTenant { .. } => self.alias(tenant).unwrap_or_default(),
        };
        if let Some(id) = self.key_ids.get(&tenant) {
            return Ok(id);
        }
        match self.client.describe_key().key_id(&alias).send().await {
            Ok(out) => {
                let id = out
                    .key_metadata()
                    .map(|m| m.key_id().to_owned())
                    .ok_or_else(|| CryptoError::Provider("DescribeKey returned no key".into()))?;
                self.key_ids.insert(tenant, id.clone());
                Ok(id)
            }
            Err(e) if e.code() == Some("NotFoundException") && create => {
                self.create_key(tenant, &alias).await
            }
            Err(e) => Err(provider_error("DescribeKey", tenant, &e)),
        }
    }

    async fn create_key(&self, tenant: TenantId, alias: &str) -> Result<String, CryptoError> {
        let tag = Tag::builder()
            .tag_key(CONTEXT_KEY)
            .tag_value(tenant.to_string())
            .build()
            .map_err(|e| CryptoError::Provider(e.to_string()))?;
        let created = self
            .client
            .create_key()
            .description(format!("tenancy-rs key-encryption key of tenant {tenant}"))
            .key_usage(KeyUsageType::EncryptDecrypt)
            .tags(tag)
            .send()
            .await
            .map_err(|e| provider_error("CreateKey", tenant, &e))?;
        let id = created
            .key_metadata()
            .map(|m| m.key_id().to_owned())
            .ok_or_else(|| CryptoError::Provider("CreateKey returned no key".into()))?;
        match self
            .client
            .create_alias()
            .alias_name(alias)
            .target_key_id(&id)
            .send()
            .await
        {
            Ok(_) => {
                tracing::info!(tenant.id = %tenant, kms.key_id = %id, "tenant KMS key created");
                self.key_ids.insert(tenant, id.clone());
                Ok(id)
            }
            // Another process created the tenant's key first: use that one and
            // retire ours.
            Err(e) if e.code() == Some("AlreadyExistsException") => {
                let _ = self
                    .client
                    .schedule_key_deletion()
                    .key_id(&id)
                    .pending_window_in_days(7)
                    .send()
                    .await;
                Box::pin(self.key_id(tenant, false)).await
            }
            Err(e) => Err(provider_error("CreateAlias", tenant, &e)),
        }
    }
}

fn provider_error<E>(op: &str, tenant: TenantId, e: &E) -> CryptoError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match e.code() {
        // Wrong tenant (encryption context), wrong key or altered bytes.
        Some("InvalidCiphertextException" | "IncorrectKeyException") => CryptoError::Authentication,
        Some("NotFoundException" | "DisabledException" | "KMSInvalidStateException") => {
            tracing::warn!(tenant.id = %tenant, op, error = %DisplayErrorContext(e), "tenant KMS key unavailable");
            CryptoError::UnknownKeyVersion(0)
        }
        _ => {
            tracing::error!(tenant.id = %tenant, op, error = %DisplayErrorContext(e), "KMS call failed");
            CryptoError::Provider(format!(
                "KMS {op} failed: {}",
                e.code()
                    .unwrap_or("no error code (network or configuration)")
            ))
        }
    }
}

fn secret_from(blob: Option<Blob>) -> Result<Secret, CryptoError> {
    let mut bytes = Zeroizing::new(blob.map(Blob::into_inner).unwrap_or_default());
    let mut out: Secret = Zeroizing::new([0u8; 32]);
    if bytes.len() != 32 {
        bytes.zeroize();
        return Err(CryptoError::BadKeyLength);
    }
    out.copy_from_slice(&bytes);
    Ok(out)
}

#[async_trait]
impl KeyProvider for KmsKeyProvider {
    async fn generate(&self, tenant: TenantId) -> Result<(Secret, Vec<u8>), CryptoError> {
        let key_id = self.key_id(tenant, true).await?;
        let mut out = self
            .client
            .generate_data_key()
            .key_id(key_id)
            .key_spec(DataKeySpec::Aes256)
            .encryption_context(CONTEXT_KEY, tenant.to_string())
            .send()
            .await
            .map_err(|e| provider_error("GenerateDataKey", tenant, &e))?;
        let key = secret_from(out.plaintext.take())?;
        let wrapped = out
            .ciphertext_blob
            .take()
            .map(Blob::into_inner)
            .ok_or_else(|| {
                CryptoError::Provider("GenerateDataKey returned no ciphertext".into())
            })?;
        Ok((key, wrapped))
    }

    async fn unwrap(&self, tenant: TenantId, wrapped: &[u8]) -> Result<Secret, CryptoError> {
        let key_id = self.key_id(tenant, false).await?;
        let mut out = self
            .client
            .decrypt()
            .key_id(key_id)
            .ciphertext_blob(Blob::new(wrapped))
            .encryption_context(CONTEXT_KEY, tenant.to_string())
            .send()
            .await
            .map_err(|e| provider_error("Decrypt", tenant, &e))?;
        secret_from(out.plaintext.take())
    }

    async fn rotate_kek(&self, tenant: TenantId) -> Result<(), CryptoError> {
        let key_id = self.key_id(tenant, true).await?;
        self.client
            .rotate_key_on_demand()
            .key_id(key_id)
            .send()
            .await
            .map_err(|e| provider_error("RotateKeyOnDemand", tenant, &e))?;
        Ok(())
    }

    async fn rewrap(&self, tenant: TenantId, wrapped: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let key_id = self.key_id(tenant, false).await?;
        let context = tenant.to_string();
        let mut out = self
            .client
            .re_encrypt()
            .ciphertext_blob(Blob::new(wrapped))
            .source_key_id(&key_id)
            .source_encryption_context(CONTEXT_KEY, &context)
            .destination_key_id(&key_id)
            .destination_encryption_context(CONTEXT_KEY, &context)
            .send()
            .await
            .map_err(|e| provider_error("ReEncrypt", tenant, &e))?;
        out.ciphertext_blob
            .take()
            .map(Blob::into_inner)
            .ok_or_else(|| CryptoError::Provider("ReEncrypt returned no ciphertext".into()))
    }

    async fn destroy(&self, tenant: TenantId) -> Result<(), CryptoError> {
        let Some(alias) = self.alias(tenant) else {
            tracing::warn!(
                tenant.id = %tenant,
                "shared KMS key: the tenant's wrapped keys are erased from the key store, \
                 the KMS key itself is kept for the other tenants"
            );
            return Ok(());
        };
        let key_id = match self.key_id(tenant, false).await {
            Ok(id) => id,
            // Never created, or already gone: nothing left to destroy.
            Err(CryptoError::UnknownKeyVersion(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        self.client
            .disable_key()
            .key_id(&key_id)
            .send()
            .await
            .map_err(|e| provider_error("DisableKey", tenant, &e))?;
        self.client
            .schedule_key_deletion()
            .key_id(&key_id)
            .pending_window_in_days(7)
            .send()
            .await
            .map_err(|e| provider_error("ScheduleKeyDeletion", tenant, &e))?;
        self.client
            .delete_alias()
            .alias_name(alias)
            .send()
            .await
            .map_err(|e| provider_error("DeleteAlias", tenant, &e))?;
        self.key_ids.invalidate(&tenant);
        tracing::warn!(tenant.id = %tenant, kms.key_id = %key_id, "tenant KMS key disabled and scheduled for deletion");
        Ok(())
    }
}
