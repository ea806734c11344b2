//! The PostgreSQL key store under the crypto key hierarchy, and the settings
//! store whose secrets it seals.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::sync::Arc;

use tenancy_core::TenantId;
use tenancy_core::crypto::keys::{KeyState, KeyStore, Keyring, LocalKeyProvider};
use tenancy_core::settings::{Setting, SettingsStore, StoredValue, TenantSettings};
use tenancy_sqlx::{PgKeyStore, PgSettingsStore, TenantDb, migrate};
use tenancy_testkit::TestDb;

const MASTER: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";

async fn setup() -> (TestDb, PgKeyStore, Arc<LocalKeyProvider>) {
    let env = TestDb::from_env().unwrap();
    let owner = env.owner_pool(1).await.unwrap();
    let mut conn = owner.acquire().await.unwrap();
    migrate::run(&mut conn).await.unwrap();
    migrate::grant_system_read(&mut conn, "tenancy_app")
        .await
        .unwrap();
    let db = TenantDb::connect(&env.app_url, env.seal_key().await.unwrap())
        .await
        .unwrap();
    let provider = Arc::new(LocalKeyProvider::new(
        LocalKeyProvider::master_from_base64(MASTER).unwrap(),
    ));
    (env, PgKeyStore::new(db), provider)
}

#[tokio::test]
async fn keyring_over_postgres_rotates_and_shreds() {
    let (env, store, provider) = setup().await;
    let store = Arc::new(store);
    let keys = Keyring::new(provider.clone(), store.clone());
    let (a, b) = (TenantId::new_v4(), TenantId::new_v4());
    let a1 = keys.encrypt(a, b"c", b"a-v1").await.unwrap();
    keys.rotate(a).await.unwrap();
    let a2 = keys.encrypt(a, b"c", b"a-v2").await.unwrap();
    let b1 = keys.encrypt(b, b"c", b"b-v1").await.unwrap();
    let states: Vec<(u32, KeyState)> = store
        .keys(a)
        .await
        .unwrap()
        .iter()
        .map(|k| (k.version, k.state))
        .collect();
    assert_eq!(states, vec![(1, KeyState::Retired), (2, KeyState::Primary)]);

    // A cold keyring reads everything back from PostgreSQL.
    let cold = Keyring::new(provider.clone(), store.clone());
    assert_eq!(
        cold.decrypt(a, b"c", &a1).await.unwrap().as_slice(),
        b"a-v1"
    );
    assert_eq!(
        cold.decrypt(a, b"c", &a2).await.unwrap().as_slice(),
        b"a-v2"
    );

    keys.shred(a).await.unwrap();
    let cold = Keyring::new(provider, store.clone());
    assert!(cold.decrypt(a, b"c", &a1).await.is_err());
    assert!(cold.decrypt(a, b"c", &a2).await.is_err());
    assert_eq!(
        cold.decrypt(b, b"c", &b1).await.unwrap().as_slice(),
        b"b-v1"
    );
    assert!(
        store
            .keys(a)
            .await
            .unwrap()
            .iter()
            .all(|k| k.state == KeyState::Destroyed && k.wrapped.is_empty())
    );

    // Without a tenant, the key table shows nothing.
    let app = env.app_pool(1).await.unwrap();
    let visible: i64 = sqlx::query_scalar("SELECT count(*) FROM tenancy.tenant_keys")
        .fetch_one(&app)
        .await
        .unwrap();
    assert_eq!(visible, 0);
}

#[tokio::test]
async fn stores_are_separate_per_tenant_and_refuse_duplicates() {
    let (_env, store, provider) = setup().await;
    let keys = Keyring::new(provider, Arc::new(store.clone()));
    let (a, b) = (TenantId::new_v4(), TenantId::new_v4());
    keys.encrypt(a, b"c", b"x").await.unwrap();
    assert_eq!(store.keys(a).await.unwrap().len(), 1);
    assert!(store.keys(b).await.unwrap().is_empty());
    let dup = store.keys(a).await.unwrap().remove(0);
    assert!(store.insert(dup).await.is_err());
}

#[tokio::test]
async fn settings_in_postgres_keep_secrets_sealed_and_tenants_apart() {
    let (env, store, provider) = setup().await;
    let keys = Arc::new(Keyring::new(provider, Arc::new(store)));
    let db = TenantDb::connect(&env.app_url, env.seal_key().await.unwrap())
        .await
        .unwrap();
    let pg = Arc::new(PgSettingsStore::new(db));
    let settings = TenantSettings::new(pg.clone(), keys.clone());
    let (a, b) = (TenantId::new_v4(), TenantId::new_v4());

    settings
        .set(a, "commission.renewal_bps", &500)
        .await
        .unwrap();
    settings
        .set_secret(a, "bank.account", "0012345678")
        .await
        .unwrap();
    settings
        .set_secret(a, "bank.account", "0099999999")
        .await
        .unwrap(); // upsert
    settings
        .set_secret(b, "bank.account", "0055555555")
        .await
        .unwrap();

    assert_eq!(
        settings
            .get::<String>(a, "bank.account")
            .await
            .unwrap()
            .unwrap(),
        "0099999999"
    );
    assert_eq!(
        settings
            .get::<String>(b, "bank.account")
            .await
            .unwrap()
            .unwrap(),
        "0055555555"
    );
    assert_eq!(
        settings
            .get::<i64>(b, "commission.renewal_bps")
            .await
            .unwrap(),
        None
    );
    let listed = settings.list(a).await.unwrap();
    assert_eq!(listed.len(), 2);
    assert!(matches!(
        listed.get("bank.account"),
        Some(Setting::Secret { .. })
    ));

    // The table holds ciphertext only; read as the owner (bypassing nothing
    // but seeing raw bytes), no plaintext appears.
    let owner = env.owner_pool(1).await.unwrap();
    let seal = env.seal_key().await.unwrap();
    let mut tx = owner
        .begin_with(tenancy_core::rls::begin_sql(a, &seal))
        .await
        .unwrap();
    let raw: Vec<u8> =
        sqlx::query_scalar("SELECT secret FROM tenancy.tenant_settings WHERE key = 'bank.account'")
            .fetch_one(&mut *tx)
            .await
            .unwrap();
    tx.rollback().await.unwrap();
    assert!(!String::from_utf8_lossy(&raw).contains("0099999999"));
    let StoredValue::Secret(sealed) = pg.get(a, "bank.account").await.unwrap().unwrap().value
    else {
        panic!("secret stored in plain")
    };
    assert_eq!(sealed.as_bytes(), raw.as_slice());

    // Without a tenant the application role sees no settings at all.
    let app = env.app_pool(1).await.unwrap();
    let visible: i64 = sqlx::query_scalar("SELECT count(*) FROM tenancy.tenant_settings")
        .fetch_one(&app)
        .await
        .unwrap();
    assert_eq!(visible, 0);

    // Shredding tenant a leaves its secret unreadable and b's intact.
    keys.shred(a).await.unwrap();
    assert!(settings.get::<String>(a, "bank.account").await.is_err());
    assert_eq!(
        settings
            .get::<i64>(a, "commission.renewal_bps")
            .await
            .unwrap(),
        Some(500)
    );
    assert_eq!(
        settings
            .get::<String>(b, "bank.account")
            .await
            .unwrap()
            .unwrap(),
        "0055555555"
    );
    assert!(settings.delete(b, "bank.account").await.unwrap());
    assert!(!settings.delete(b, "bank.account").await.unwrap());
}

#[tokio::test]
async fn another_process_stops_decrypting_at_once_when_a_tenant_is_shredded() {
    let (env, store, provider) = setup().await;
    let store = Arc::new(store);
    // Three "processes": A shreds; B listens for key changes; C does not.
    let a = Keyring::new(provider.clone(), store.clone());
    let b = Arc::new(Keyring::new(provider.clone(), store.clone()));
    let c = Keyring::new(provider.clone(), store.clone());
    let pool = env.app_pool(1).await.unwrap();
    let _listener = tenancy_sqlx::KeyInvalidationListener::start(&pool, b.clone())
        .await
        .unwrap();
    let (t, other) = (TenantId::new_v4(), TenantId::new_v4());
    let sealed = a.encrypt(t, b"ctx", b"secret").await.unwrap();
    let kept = a.encrypt(other, b"ctx", b"kept").await.unwrap();
    // B and C have the tenant's data key cached.
    for k in [&*b, &c] {
        assert_eq!(
            k.decrypt(t, b"ctx", &sealed).await.unwrap().as_slice(),
            b"secret"
        );
        assert_eq!(
            k.decrypt(other, b"ctx", &kept).await.unwrap().as_slice(),
            b"kept"
        );
    }
    a.shred(t).await.unwrap();
    // B hears of it and can no longer decrypt (within a few seconds at most).
    let mut refused = false;
    for _ in 0..100 {
        if b.decrypt(t, b"ctx", &sealed).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(
        refused,
        "the listening keyring still decrypts a shredded tenant"
    );
    // C, without the listener, still decrypts from its cache: the gap the
    // listener closes (and the proof that B was refused for that reason).
    assert_eq!(
        c.decrypt(t, b"ctx", &sealed).await.unwrap().as_slice(),
        b"secret"
    );
    // The other tenant is unaffected in B.
    assert_eq!(
        b.decrypt(other, b"ctx", &kept).await.unwrap().as_slice(),
        b"kept"
    );
}
