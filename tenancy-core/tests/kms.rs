//! The AWS KMS key provider against a local KMS-compatible server (moto,
//! started by `scripts/test`). moto enforces the encryption context but not
//! key state, so shredding is checked through the key store and the key's
//! reported state, never by expecting moto to refuse a disabled key.
#![cfg(feature = "aws-kms")]
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use aws_sdk_kms::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_kms::types::KeyState as KmsKeyState;
use tenancy_core::TenantId;
use tenancy_core::crypto::CryptoError;
use tenancy_core::crypto::keys::{
    InMemoryKeyStore, KeyProvider, KeyState, KeyStore, Keyring, Secret,
};
use tenancy_core::crypto::kms::{KmsKeyProvider, KmsKeys};

fn client() -> aws_sdk_kms::Client {
    let url = std::env::var("TENANCY_TEST_KMS_URL").expect(
        "TENANCY_TEST_KMS_URL is not set: run the suite with scripts/test (it starts moto)",
    );
    client_at(&url)
}

fn client_at(url: &str) -> aws_sdk_kms::Client {
    let config = aws_sdk_kms::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(url)
        .credentials_provider(Credentials::new(
            "test",
            "test",
            None,
            None,
            "tenancy-tests",
        ))
        .build();
    aws_sdk_kms::Client::from_conf(config)
}

fn prefix() -> String {
    format!("tenancy-test/{}", TenantId::new_v4())
}

async fn shared_key(client: &aws_sdk_kms::Client) -> String {
    client
        .create_key()
        .send()
        .await
        .unwrap()
        .key_metadata()
        .unwrap()
        .key_id()
        .to_owned()
}

#[tokio::test]
async fn per_tenant_keys_generate_and_unwrap_bound_to_the_tenant() {
    let kms = KmsKeyProvider::new(client(), KmsKeys::per_tenant(prefix()));
    let (a, b) = (TenantId::new_v4(), TenantId::new_v4());
    let (key, wrapped) = kms.generate(a).await.unwrap();
    assert_ne!(wrapped.as_slice(), key.as_slice());
    assert_eq!(*kms.unwrap(a, &wrapped).await.unwrap(), *key);

    // b has no key yet: an unknown key, not a new one made on unwrap.
    assert_eq!(
        kms.unwrap(b, &wrapped).await.unwrap_err(),
        CryptoError::UnknownKeyVersion(0)
    );
    // With its own key, b still cannot open a's wrapped key.
    kms.generate(b).await.unwrap();
    assert!(kms.unwrap(b, &wrapped).await.is_err());
    // Altered bytes: an error, never a key.
    let mut bad = wrapped.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    assert!(kms.unwrap(a, &bad).await.is_err());
    // Each tenant has its own KMS key under its alias.
    let alias = kms.alias(a).unwrap();
    let described = client().describe_key().key_id(alias).send().await.unwrap();
    assert!(described.key_metadata().is_some());
}

#[tokio::test]
async fn a_shared_key_separates_tenants_by_encryption_context() {
    let c = client();
    let kms = KmsKeyProvider::new(c.clone(), KmsKeys::shared(shared_key(&c).await));
    let (a, b) = (TenantId::new_v4(), TenantId::new_v4());
    let (key, wrapped) = kms.generate(a).await.unwrap();
    assert_eq!(*kms.unwrap(a, &wrapped).await.unwrap(), *key);
    // Same KMS key, other tenant in the context: KMS refuses.
    assert_eq!(
        kms.unwrap(b, &wrapped).await.unwrap_err(),
        CryptoError::Authentication
    );
    // KEK rotation re-wraps inside KMS; the data key stays the same.
    kms.rotate_kek(a).await.unwrap();
    let rewrapped = kms.rewrap(a, &wrapped).await.unwrap();
    assert_eq!(*kms.unwrap(a, &rewrapped).await.unwrap(), *key);
    assert!(kms.unwrap(b, &rewrapped).await.is_err());
}

/// Counts every call on the way to KMS.
struct Counting {
    inner: KmsKeyProvider,
    calls: AtomicUsize,
}

#[async_trait]
impl KeyProvider for Counting {
    async fn generate(&self, t: TenantId) -> Result<(Secret, Vec<u8>), CryptoError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.generate(t).await
    }
    async fn unwrap(&self, t: TenantId, w: &[u8]) -> Result<Secret, CryptoError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.unwrap(t, w).await
    }
    async fn rotate_kek(&self, t: TenantId) -> Result<(), CryptoError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.rotate_kek(t).await
    }
    async fn rewrap(&self, t: TenantId, w: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.rewrap(t, w).await
    }
    async fn destroy(&self, t: TenantId) -> Result<(), CryptoError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.destroy(t).await
    }
}

#[tokio::test]
async fn keyring_over_kms_caches_rotates_and_shreds() {
    let kms = Arc::new(Counting {
        inner: KmsKeyProvider::new(client(), KmsKeys::per_tenant(prefix())),
        calls: AtomicUsize::new(0),
    });
    let store = Arc::new(InMemoryKeyStore::default());
    let keys = Keyring::new(kms.clone(), store.clone());
    let (a, b) = (TenantId::new_v4(), TenantId::new_v4());

    let a1 = keys
        .encrypt(a, b"customers.pan:1", b"ABCDE1234F")
        .await
        .unwrap();
    let b1 = keys
        .encrypt(b, b"customers.pan:1", b"ZZZZZ9999Z")
        .await
        .unwrap();
    let warm = kms.calls.load(Ordering::SeqCst);
    for _ in 0..50 {
        keys.encrypt(a, b"customers.pan:1", b"x").await.unwrap();
        keys.decrypt(a, b"customers.pan:1", &a1).await.unwrap();
    }
    assert_eq!(
        kms.calls.load(Ordering::SeqCst),
        warm,
        "cache hits call KMS 0 times"
    );

    // A cold keyring unwraps through KMS exactly once per key.
    let cold = Keyring::new(kms.clone(), store.clone());
    cold.decrypt(a, b"customers.pan:1", &a1).await.unwrap();
    cold.decrypt(a, b"customers.pan:1", &a1).await.unwrap();
    assert_eq!(kms.calls.load(Ordering::SeqCst), warm + 1);

    // Data-key rotation and KEK rotation keep everything readable.
    keys.rotate(a).await.unwrap();
    let a2 = keys.encrypt(a, b"customers.pan:1", b"v2").await.unwrap();
    keys.rotate_kek(a).await.unwrap();
    let cold = Keyring::new(kms.clone(), store.clone());
    assert_eq!(
        cold.decrypt(a, b"customers.pan:1", &a1)
            .await
            .unwrap()
            .as_slice(),
        b"ABCDE1234F"
    );
    assert_eq!(
        cold.decrypt(a, b"customers.pan:1", &a2)
            .await
            .unwrap()
            .as_slice(),
        b"v2"
    );

    // Shredding: the wrapped keys are erased, the tenant's KMS key is
    // disabled and pending deletion, its alias gone; b is untouched.
    let alias = kms.inner.alias(a).unwrap();
    let key_id = client()
        .describe_key()
        .key_id(&alias)
        .send()
        .await
        .unwrap()
        .key_metadata()
        .unwrap()
        .key_id()
        .to_owned();
    keys.shred(a).await.unwrap();
    assert!(
        store
            .keys(a)
            .await
            .unwrap()
            .iter()
            .all(|k| k.state == KeyState::Destroyed && k.wrapped.is_empty())
    );
    let cold = Keyring::new(kms.clone(), store.clone());
    assert!(cold.decrypt(a, b"customers.pan:1", &a1).await.is_err());
    assert!(cold.decrypt(a, b"customers.pan:1", &a2).await.is_err());
    assert!(cold.encrypt(a, b"customers.pan:1", b"new").await.is_err());
    let state = client()
        .describe_key()
        .key_id(&key_id)
        .send()
        .await
        .unwrap()
        .key_metadata()
        .unwrap()
        .key_state()
        .cloned();
    assert_eq!(state, Some(KmsKeyState::PendingDeletion));
    assert!(
        client().describe_key().key_id(&alias).send().await.is_err(),
        "alias removed"
    );
    assert_eq!(
        cold.decrypt(b, b"customers.pan:1", &b1)
            .await
            .unwrap()
            .as_slice(),
        b"ZZZZZ9999Z"
    );
}

#[tokio::test]
async fn an_unreachable_kms_is_a_provider_error() {
    // The discard port: nothing listens there.
    let kms = KmsKeyProvider::new(
        client_at("http://127.0.0.1:9"),
        KmsKeys::shared("alias/none"),
    );
    assert!(matches!(
        kms.generate(TenantId::new_v4()).await,
        Err(CryptoError::Provider(_))
    ));
}
