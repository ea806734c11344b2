//! Tenant settings with encrypted secrets, and the `Encrypted<T>` field type.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tenancy_core::TenantId;
use tenancy_core::crypto::keys::{InMemoryKeyStore, Keyring, LocalKeyProvider};
use tenancy_core::crypto::{CryptoError, Encrypted};
use tenancy_core::settings::{
    InMemorySettingsStore, Setting, SettingsError, SettingsStore, StoredValue, TenantSettings,
};

const MASTER: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";

fn keyring() -> Arc<Keyring> {
    Arc::new(Keyring::new(
        Arc::new(LocalKeyProvider::new(
            LocalKeyProvider::master_from_base64(MASTER).unwrap(),
        )),
        Arc::new(InMemoryKeyStore::default()),
    ))
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Bank {
    account: String,
    ifsc: String,
}

#[tokio::test]
async fn encrypted_field_round_trips_through_json_and_binds_tenant_and_context() {
    let keys = keyring();
    let (a, b) = (TenantId::new_v4(), TenantId::new_v4());
    let bank = Bank {
        account: "0012345678".into(),
        ifsc: "HDFC0000123".into(),
    };
    let sealed = Encrypted::seal(&keys, a, b"customers.bank:7", &bank)
        .await
        .unwrap();
    let json = serde_json::to_string(&sealed).unwrap();
    assert!(json.starts_with("\"tnc1:"), "{json}");
    assert!(!json.contains("0012345678"));

    let back: Encrypted<Bank> = serde_json::from_str(&json).unwrap();
    assert_eq!(back, sealed);
    assert_eq!(back.key_version(), 1);
    assert_eq!(
        back.open(&keys, a, b"customers.bank:7").await.unwrap(),
        bank
    );
    assert_eq!(
        back.open(&keys, a, b"customers.bank:8").await.unwrap_err(),
        CryptoError::Authentication
    );
    assert!(back.open(&keys, b, b"customers.bank:7").await.is_err());
    // Opened as another type: a typed error, not a panic or garbage.
    let as_number: Encrypted<u64> = Encrypted::from_bytes(sealed.into_bytes()).unwrap();
    assert!(matches!(
        as_number.open(&keys, a, b"customers.bank:7").await,
        Err(CryptoError::Value(_))
    ));
}

#[test]
fn malformed_encrypted_fields_do_not_deserialize() {
    for bad in [
        "\"ABCDE1234F\"",
        "\"tnc1:\"",
        "\"tnc1:!!!\"",
        "\"tnc1:AAAA\"",
        "42",
        "null",
    ] {
        assert!(
            serde_json::from_str::<Encrypted<String>>(bad).is_err(),
            "{bad} accepted"
        );
    }
}

#[tokio::test]
async fn plain_and_secret_settings() {
    let store = Arc::new(InMemorySettingsStore::default());
    let s = TenantSettings::new(store.clone(), keyring());
    let (a, b) = (TenantId::new_v4(), TenantId::new_v4());

    s.set(a, "commission.first_year_bps", &1500u32)
        .await
        .unwrap();
    s.set_secret(a, "payments.api_key", "sk_live_a")
        .await
        .unwrap();
    s.set_secret(b, "payments.api_key", "sk_live_b")
        .await
        .unwrap();

    assert_eq!(
        s.get::<u32>(a, "commission.first_year_bps").await.unwrap(),
        Some(1500)
    );
    assert_eq!(
        s.get::<String>(a, "payments.api_key")
            .await
            .unwrap()
            .unwrap(),
        "sk_live_a"
    );
    assert_eq!(
        s.get::<String>(b, "payments.api_key")
            .await
            .unwrap()
            .unwrap(),
        "sk_live_b"
    );
    assert_eq!(
        s.get::<u32>(b, "commission.first_year_bps").await.unwrap(),
        None
    );
    assert_eq!(
        s.get_or(b, "commission.first_year_bps", 1000u32)
            .await
            .unwrap(),
        1000
    );
    assert!(s.is_secret(a, "payments.api_key").await.unwrap());
    assert!(!s.is_secret(a, "commission.first_year_bps").await.unwrap());

    // The store holds ciphertext only.
    let raw = store.get(a, "payments.api_key").await.unwrap().unwrap();
    let StoredValue::Secret(sealed) = raw.value else {
        panic!("secret stored in plain: {raw:?}")
    };
    assert!(!String::from_utf8_lossy(sealed.as_bytes()).contains("sk_live_a"));

    // Listing never shows a secret's value.
    let listed = s.list(a).await.unwrap();
    assert_eq!(
        listed.get("commission.first_year_bps"),
        Some(&Setting::Plain(serde_json::json!(1500)))
    );
    assert!(matches!(
        listed.get("payments.api_key"),
        Some(Setting::Secret { .. })
    ));
    assert!(!format!("{listed:?}").contains("sk_live"));

    assert!(s.delete(a, "payments.api_key").await.unwrap());
    assert!(!s.delete(a, "payments.api_key").await.unwrap());
    assert_eq!(s.get::<String>(a, "payments.api_key").await.unwrap(), None);
}

#[tokio::test]
async fn a_secret_moved_to_another_key_or_tenant_does_not_open() {
    let store = Arc::new(InMemorySettingsStore::default());
    let s = TenantSettings::new(store.clone(), keyring());
    let (a, b) = (TenantId::new_v4(), TenantId::new_v4());
    s.set_secret(a, "smtp.password", "hunter2").await.unwrap();
    s.set_secret(b, "smtp.password", "other").await.unwrap();
    let entry = store.get(a, "smtp.password").await.unwrap().unwrap();

    // Copied under another key of the same tenant.
    let mut moved = entry.clone();
    moved.key = "smtp.user".into();
    store.put(a, moved).await.unwrap();
    assert!(matches!(
        s.get::<String>(a, "smtp.user").await,
        Err(SettingsError::Crypto(CryptoError::Authentication))
    ));
    // Copied into another tenant.
    store.put(b, entry).await.unwrap();
    assert!(matches!(
        s.get::<String>(b, "smtp.password").await,
        Err(SettingsError::Crypto(_))
    ));
}

#[tokio::test]
async fn shredded_tenant_secrets_fail_closed_and_bad_input_is_typed() {
    let keys = keyring();
    let s = TenantSettings::new(Arc::new(InMemorySettingsStore::default()), keys.clone());
    let t = TenantId::new_v4();
    s.set_secret(t, "bank.account", "0012345678").await.unwrap();
    s.set(t, "plan.note", "hello").await.unwrap();
    keys.shred(t).await.unwrap();
    assert!(matches!(
        s.get::<String>(t, "bank.account").await,
        Err(SettingsError::Crypto(CryptoError::UnknownKeyVersion(_)))
    ));
    assert!(matches!(
        s.set_secret(t, "bank.account", "new").await,
        Err(SettingsError::Crypto(_))
    ));

    for key in ["", "UPPER", "a b", "x'; DROP TABLE t; --", &"k".repeat(129)] {
        assert!(matches!(
            s.set(t, key, &1).await,
            Err(SettingsError::InvalidKey(_))
        ));
    }
    assert!(matches!(
        s.get::<u32>(t, "plan.note").await,
        Err(SettingsError::Type { .. })
    ));
}
