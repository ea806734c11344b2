//! The PostgreSQL key store under the crypto key hierarchy.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::sync::Arc;

use tenancy_core::TenantId;
use tenancy_core::crypto::keys::{KeyState, KeyStore, Keyring, LocalKeyProvider};
use tenancy_sqlx::{PgKeyStore, TenantDb, migrate};
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
    let db = TenantDb::connect(&env.app_url).await.unwrap();
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
