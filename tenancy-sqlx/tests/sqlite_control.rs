//! The SQLite control database: tenant registry and memberships.
#![cfg(feature = "sqlite")]
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::sync::Arc;

use tenancy_core::lifecycle::{Lifecycle, Transition};
use tenancy_core::store::{TenantStore, TenantUpdate, WriteError};
use tenancy_core::{
    DomainName, Membership, MembershipStore, Placement, Role, Tenant, TenantId, TenantStatus,
    UserId,
};
use tenancy_sqlx::DbError;
use tenancy_sqlx::sqlite::SqliteControl;

fn tenant(slug: &str) -> Tenant {
    let id = TenantId::new_v4();
    Tenant::new(id, slug.parse().unwrap(), slug)
        .with_placement(Placement::database(&Placement::name_for(id)).unwrap())
        .with_domain(DomainName::parse(&format!("{slug}.example.com")).unwrap())
}

#[tokio::test]
async fn tenants_round_trip_by_id_slug_and_domain() {
    let dir = tempfile::tempdir().unwrap();
    let control = SqliteControl::open(dir.path().join("control.sqlite3"))
        .await
        .unwrap();
    let store = control.tenants();
    let mut acme = tenant("acme");
    store.create(&acme).await.unwrap();
    acme.version = 1; // as stored
    assert_eq!(*store.by_id(acme.id).await.unwrap().unwrap(), acme);
    assert_eq!(
        *store
            .by_slug(&"acme".parse().unwrap())
            .await
            .unwrap()
            .unwrap(),
        acme
    );
    let domain = DomainName::parse("acme.example.com").unwrap();
    assert_eq!(store.by_domain(&domain).await.unwrap().unwrap().id, acme.id);
    assert!(store.by_id(TenantId::new_v4()).await.unwrap().is_none());

    // Same slug, or same domain: a conflict, nothing written.
    let mut twin = tenant("acme");
    twin.domains.clear();
    assert!(matches!(
        store.create(&twin).await,
        Err(DbError::Conflict(_))
    ));
    let mut thief = tenant("other");
    thief.domains = vec![domain.clone()];
    assert!(matches!(
        store.create(&thief).await,
        Err(DbError::Conflict(_))
    ));
    assert!(store.by_id(thief.id).await.unwrap().is_none());

    // Update: status (through the lifecycle) and domains replaced.
    Lifecycle::new(Arc::new(store.clone()))
        .apply(
            &acme,
            Transition::Suspend {
                reason: "unpaid".into(),
            },
            "test",
        )
        .await
        .unwrap();
    store
        .apply(
            acme.id,
            &TenantUpdate::new()
                .remove_domain(domain.clone())
                .add_domain(DomainName::parse("acme.test").unwrap()),
        )
        .await
        .unwrap();
    assert!(store.by_domain(&domain).await.unwrap().is_none());
    let now = store.by_id(acme.id).await.unwrap().unwrap();
    assert!(matches!(now.status, TenantStatus::Suspended { .. }));
    assert_eq!(now.version, 3);
    assert_eq!(store.list().await.unwrap().len(), 1);
    // Updating an unknown tenant is an error, not an insert.
    assert!(matches!(
        store
            .apply(tenant("ghost").id, &TenantUpdate::new().display_name("x"))
            .await,
        Err(WriteError::NotFound(_))
    ));
    // Reopening finds everything again.
    drop(control);
    let again = SqliteControl::open(dir.path().join("control.sqlite3"))
        .await
        .unwrap();
    assert_eq!(
        again.tenants().by_id(acme.id).await.unwrap().unwrap().id,
        acme.id
    );
}

#[tokio::test]
async fn memberships_are_per_user_and_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let control = SqliteControl::open(dir.path().join("c.sqlite3"))
        .await
        .unwrap();
    let (a, b) = (tenant("a"), tenant("b"));
    control.tenants().create(&a).await.unwrap();
    control.tenants().create(&b).await.unwrap();
    let m = control.memberships();
    let asha = UserId::new("asha");
    m.upsert(&Membership::new(asha.clone(), a.id, Role::Admin))
        .await
        .unwrap();
    m.upsert(&Membership::new(asha.clone(), b.id, Role::Member))
        .await
        .unwrap();
    assert_eq!(
        m.membership(&asha, a.id).await.unwrap().unwrap().role,
        Role::Admin
    );
    assert_eq!(m.memberships_of(&asha).await.unwrap().len(), 2);
    m.upsert(&Membership::new(asha.clone(), a.id, Role::Member))
        .await
        .unwrap();
    assert_eq!(
        m.membership(&asha, a.id).await.unwrap().unwrap().role,
        Role::Member
    );
    assert!(m.remove(&asha, a.id).await.unwrap());
    assert!(m.membership(&asha, a.id).await.unwrap().is_none());
    assert_eq!(m.members_of(b.id).await.unwrap().len(), 1);
    // A membership of an unknown tenant is refused (foreign key).
    assert!(
        m.upsert(&Membership::new(asha, TenantId::new_v4(), Role::Member))
            .await
            .is_err()
    );
}

#[tokio::test]
async fn the_key_store_backs_a_keyring_rotation_and_shredding() {
    use std::sync::Arc;
    use tenancy_core::crypto::keys::{Keyring, LocalKeyProvider};
    let dir = tempfile::tempdir().unwrap();
    let control = SqliteControl::open(dir.path().join("c.sqlite3"))
        .await
        .unwrap();
    // One provider for every keyring: LocalKeyProvider keeps its per-tenant
    // KEKs in memory (the keyrings below stand for fresh caches, not restarts).
    let provider = Arc::new(LocalKeyProvider::new(zeroize::Zeroizing::new([9u8; 32])));
    let keyring = Keyring::new(provider.clone(), Arc::new(control.keys()));
    let t = TenantId::new_v4();
    let old = keyring
        .encrypt(t, b"customers.pan", b"ABCDE1234F")
        .await
        .unwrap();
    assert_eq!(keyring.rotate(t).await.unwrap(), 2);
    let new = keyring
        .encrypt(t, b"customers.pan", b"ABCDE1234F")
        .await
        .unwrap();
    assert_ne!(old, new);
    // Through a fresh keyring (no cache): both versions still open.
    let fresh = Keyring::new(provider.clone(), Arc::new(control.keys()));
    assert_eq!(
        &*fresh.decrypt(t, b"customers.pan", &old).await.unwrap(),
        b"ABCDE1234F"
    );
    assert_eq!(
        &*fresh.decrypt(t, b"customers.pan", &new).await.unwrap(),
        b"ABCDE1234F"
    );
    // Wrapped keys only: the plaintext value never reaches the control file.
    let stored: Vec<Vec<u8>> = sqlx::query_scalar("SELECT wrapped FROM tenancy_tenant_keys")
        .fetch_all(control.pool())
        .await
        .unwrap();
    assert_eq!(stored.len(), 2);
    fresh.shred(t).await.unwrap();
    let again = Keyring::new(provider, Arc::new(control.keys()));
    assert!(again.decrypt(t, b"customers.pan", &old).await.is_err());
    assert!(again.decrypt(t, b"customers.pan", &new).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn invitations_are_single_use_tenant_bound_and_expire() {
    use std::sync::Arc;
    use tenancy_core::invite::{Invitations, InviteError};
    let dir = tempfile::tempdir().unwrap();
    let control = SqliteControl::open(dir.path().join("c.sqlite3"))
        .await
        .unwrap();
    let (a, b) = (tenant("inv-a"), tenant("inv-b"));
    control.tenants().create(&a).await.unwrap();
    control.tenants().create(&b).await.unwrap();
    let inv = Arc::new(Invitations::new(
        Arc::new(control.invitations()),
        Arc::new(control.memberships()),
    ));
    let admin = UserId::new("admin");
    let (stored, token) = inv
        .invite(
            a.id,
            "New@Example.com",
            Role::Member,
            &admin,
            chrono::Duration::hours(1),
        )
        .await
        .unwrap();
    // Only the hash is stored.
    let hashes: Vec<Vec<u8>> = sqlx::query_scalar("SELECT token_hash FROM tenancy_invitations")
        .fetch_all(control.pool())
        .await
        .unwrap();
    assert_eq!(hashes, [stored.token_hash.to_vec()]);
    assert!(matches!(
        inv.accept(b.id, token.expose(), &UserId::new("x")).await,
        Err(InviteError::WrongTenant)
    ));
    // Eight concurrent acceptances: exactly one wins.
    let mut tasks = Vec::new();
    for i in 0..8 {
        let (inv, t) = (inv.clone(), token.expose().to_owned());
        tasks.push(tokio::spawn(async move {
            inv.accept(a.id, &t, &UserId::new(format!("u{i}"))).await
        }));
    }
    let mut won = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(m) => {
                won += 1;
                assert_eq!(m.role, Role::Member);
            }
            Err(e) => assert!(matches!(e, InviteError::AlreadyUsed), "{e}"),
        }
    }
    assert_eq!(won, 1);
    assert_eq!(
        control.memberships().members_of(a.id).await.unwrap().len(),
        1
    );
    // Expired.
    let (_, late) = inv
        .invite(
            a.id,
            "late@example.com",
            Role::Viewer,
            &admin,
            chrono::Duration::seconds(1),
        )
        .await
        .unwrap();
    let later = chrono::Utc::now() + chrono::Duration::seconds(5);
    assert!(matches!(
        inv.accept_at(a.id, late.expose(), &UserId::new("late"), later)
            .await,
        Err(InviteError::Expired(_))
    ));
    // Revoked.
    let (r, rt) = inv
        .invite(
            a.id,
            "gone@example.com",
            Role::Viewer,
            &admin,
            chrono::Duration::hours(1),
        )
        .await
        .unwrap();
    assert!(inv.revoke(a.id, r.id).await.unwrap());
    assert!(matches!(
        inv.accept(a.id, rt.expose(), &UserId::new("g")).await,
        Err(InviteError::NotFound)
    ));
}

#[tokio::test]
async fn a_failed_join_gives_the_sqlite_invitation_back() {
    let dir = tempfile::tempdir().unwrap();
    let control = SqliteControl::open(dir.path().join("c.sqlite3"))
        .await
        .unwrap();
    let t = tenant("inv-retry");
    control.tenants().create(&t).await.unwrap();
    tenancy_testkit::invite::a_failed_join_releases_the_invitation(
        std::sync::Arc::new(control.invitations()),
        t.id,
    )
    .await;
}

/// Two processes on one control database (two handles here): a change made
/// through one reaches the other's tenant cache within the watcher's
/// interval — and, the broken twin, a cache without the watcher still
/// serves the old record a second later.
#[tokio::test]
async fn another_processs_change_reaches_the_cache_through_the_change_log() {
    use std::time::{Duration, Instant};
    use tenancy_core::store::CachedStore;
    use tenancy_sqlx::sqlite::SqliteChangeWatcher;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("control.sqlite3");
    let server = SqliteControl::open(&path).await.unwrap();
    let cli = SqliteControl::open(&path).await.unwrap();
    let acme = tenant("acme");
    cli.tenants().create(&acme).await.unwrap();

    let watched = Arc::new(CachedStore::new(server.tenants()));
    let unwatched = Arc::new(CachedStore::new(server.tenants()));
    let _watcher =
        SqliteChangeWatcher::start(&server, watched.clone(), None, Duration::from_millis(100))
            .await
            .unwrap();
    for cache in [&watched, &unwatched] {
        assert!(matches!(
            cache.by_id(acme.id).await.unwrap().unwrap().status,
            TenantStatus::Active
        ));
    }
    let current = cli.tenants().by_id(acme.id).await.unwrap().unwrap();
    Lifecycle::new(Arc::new(cli.tenants()))
        .apply(
            &current,
            Transition::Suspend {
                reason: "unpaid".into(),
            },
            "cli",
        )
        .await
        .unwrap();
    let started = Instant::now();
    loop {
        let t = watched.by_id(acme.id).await.unwrap().unwrap();
        if matches!(t.status, TenantStatus::Suspended { .. }) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "still active after 1 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A new slug and a dropped domain reach it too, under every name.
    cli.tenants()
        .apply(
            acme.id,
            &TenantUpdate::new()
                .slug("acme-group".parse().unwrap())
                .remove_domain(acme.domains[0].clone()),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        watched
            .by_slug(&"acme".parse().unwrap())
            .await
            .unwrap()
            .is_none()
    );
    assert!(watched.by_domain(&acme.domains[0]).await.unwrap().is_none());
    assert_eq!(
        watched
            .by_slug(&"acme-group".parse().unwrap())
            .await
            .unwrap()
            .unwrap()
            .id,
        acme.id
    );
    // The twin: without the watcher the server keeps the old record.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(matches!(
        unwatched.by_id(acme.id).await.unwrap().unwrap().status,
        TenantStatus::Active
    ));
}

#[tokio::test]
async fn membership_administration_table_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let control = SqliteControl::open(dir.path().join("c.sqlite3"))
        .await
        .unwrap();
    let t = tenant("adm");
    control.tenants().create(&t).await.unwrap();
    tenancy_testkit::membership::administration(Arc::new(control.memberships()), &t)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn seats_in_sqlite_are_exact_under_64_concurrent_invitations() {
    let dir = tempfile::tempdir().unwrap();
    let control = SqliteControl::open(dir.path().join("c.sqlite3"))
        .await
        .unwrap();
    let t = tenant("seats");
    control.tenants().create(&t).await.unwrap();
    let report = tenancy_testkit::invite::seats_are_exact(
        Arc::new(control.invitations()),
        Arc::new(control.memberships()),
        t.id,
    )
    .await
    .unwrap();
    println!(
        "seats: path=sqlite issued={} refused={}",
        report.issued, report.refused
    );
}
