//! PgTenantStore, PgMembershipStore and cross-process cache invalidation.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::sync::Arc;
use std::time::Duration;

use chrono::{DurationRound, TimeDelta, Utc};
use tenancy_core::lifecycle::{Lifecycle, Transition};
use tenancy_core::store::{CachedStore, TenantStore, TenantUpdate};
use tenancy_core::{
    Authorizer, Membership, MembershipStore, PlanId, Role, Tenant, TenantContext, TenantId,
    TenantKind, TenantStatus, UserId, authorize,
};
use tenancy_sqlx::{DbError, InvalidationListener, PgMembershipStore, PgTenantStore, migrate};
use tenancy_testkit::TestDb;
use tokio::sync::OnceCell;

static MIGRATED: OnceCell<()> = OnceCell::const_new();

struct Stores {
    env: TestDb,
    /// Reads as the application role.
    read: PgTenantStore,
    /// Writes as the owner (a provisioning role in a real deployment).
    write: PgTenantStore,
}

async fn stores() -> Stores {
    let env = TestDb::from_env().unwrap();
    MIGRATED
        .get_or_init(|| async {
            let owner = env.owner_pool(1).await.unwrap();
            let mut conn = owner.acquire().await.unwrap();
            migrate::run(&mut conn).await.unwrap();
            migrate::run(&mut conn).await.unwrap(); // idempotent
            migrate::grant_system_read(&mut conn, "tenancy_app")
                .await
                .unwrap();
        })
        .await;
    Stores {
        read: PgTenantStore::new(env.app_pool(4).await.unwrap()),
        write: PgTenantStore::new(env.owner_pool(2).await.unwrap()),
        env,
    }
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", &TenantId::new_v4().to_string()[..8])
}

fn micros(t: chrono::DateTime<Utc>) -> chrono::DateTime<Utc> {
    t.duration_trunc(TimeDelta::microseconds(1)).unwrap()
}

#[tokio::test]
async fn tenants_round_trip_through_postgres() {
    let s = stores().await;
    let parent = Tenant::new(
        TenantId::new_v4(),
        unique("prov").parse().unwrap(),
        "Provider",
    );
    s.write.create(&parent).await.unwrap();
    let mut t = Tenant::new(
        TenantId::new_v4(),
        unique("office").parse().unwrap(),
        "Office",
    )
    .with_kind(TenantKind::new("regional-office"))
    .with_parent(parent.id)
    .with_plan(PlanId::new("professional"))
    .with_status(TenantStatus::Trial {
        ends_at: Utc::now() + TimeDelta::days(14),
    })
    .with_domain(format!("{}.example.test", unique("d")).parse().unwrap())
    .with_settings(serde_json::json!({"brand": {"color": "#0a6"}}));
    t.created_at = micros(t.created_at);
    t.updated_at = micros(t.updated_at);
    if let TenantStatus::Trial { ends_at } = &mut t.status {
        *ends_at = micros(*ends_at);
    }
    s.write.create(&t).await.unwrap();
    t.version = 1; // as stored

    let by_id = s.read.by_id(t.id).await.unwrap().unwrap();
    assert_eq!(*by_id, t);
    assert_eq!(*s.read.by_slug(&t.slug).await.unwrap().unwrap(), t);
    assert_eq!(*s.read.by_domain(&t.domains[0]).await.unwrap().unwrap(), t);
    assert!(s.read.by_id(TenantId::new_v4()).await.unwrap().is_none());
    assert!(
        s.read
            .by_slug(&"no-such-tenant-xyz".parse().unwrap())
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn uniqueness_is_enforced_and_updates_replace_domains() {
    let s = stores().await;
    let d1 = format!("{}.example.test", unique("one"));
    let a = Tenant::new(TenantId::new_v4(), unique("a").parse().unwrap(), "A")
        .with_domain(d1.parse().unwrap());
    s.write.create(&a).await.unwrap();
    let same_slug = Tenant::new(TenantId::new_v4(), a.slug.clone(), "Copy");
    assert!(matches!(
        s.write.create(&same_slug).await,
        Err(DbError::Conflict(_))
    ));
    let same_domain = Tenant::new(TenantId::new_v4(), unique("b").parse().unwrap(), "B")
        .with_domain(d1.parse().unwrap());
    assert!(matches!(
        s.write.create(&same_domain).await,
        Err(DbError::Conflict(_))
    ));

    let d2 = format!("{}.example.test", unique("two"));
    let suspended = Lifecycle::new(Arc::new(s.write.clone()))
        .apply(
            &s.read.by_id(a.id).await.unwrap().unwrap(),
            Transition::Suspend {
                reason: "unpaid invoice".into(),
            },
            "test",
        )
        .await
        .unwrap();
    let renamed = s
        .write
        .apply(
            a.id,
            &TenantUpdate::new()
                .slug(unique("a2").parse().unwrap())
                .remove_domain(d1.parse().unwrap())
                .add_domain(d2.parse().unwrap()),
        )
        .await
        .unwrap();
    assert_eq!(renamed.status, suspended.status);
    assert_eq!(renamed.version, 3);
    let got = s.read.by_id(a.id).await.unwrap().unwrap();
    assert_eq!(got.slug, renamed.slug);
    assert_eq!(got.domains, renamed.domains);
    assert_eq!(got.status, renamed.status);
    assert!(
        s.read
            .by_domain(&d1.parse().unwrap())
            .await
            .unwrap()
            .is_none()
    );
    assert!(s.read.by_slug(&a.slug).await.unwrap().is_none());
}

#[tokio::test]
async fn the_application_role_cannot_write_tenants() {
    let s = stores().await;
    let t = Tenant::new(TenantId::new_v4(), unique("nope").parse().unwrap(), "Nope");
    let err = s.read.create(&t).await.unwrap_err();
    assert!(err.to_string().contains("permission denied"), "{err}");
}

#[tokio::test]
async fn memberships_in_postgres_drive_authorization() {
    let s = stores().await;
    let t = Tenant::new(TenantId::new_v4(), unique("m").parse().unwrap(), "M");
    s.write.create(&t).await.unwrap();
    let writer = PgMembershipStore::new(s.env.owner_pool(1).await.unwrap());
    let reader = Arc::new(PgMembershipStore::new(s.env.app_pool(1).await.unwrap()));
    let user = UserId::new(unique("user"));
    writer
        .upsert(
            &Membership::new(user.clone(), t.id, Role::Viewer)
                .with_grant("reports:export".parse().unwrap()),
        )
        .await
        .unwrap();
    let m = reader.membership(&user, t.id).await.unwrap().unwrap();
    assert_eq!((m.role, m.grants.len()), (Role::Viewer, 1));
    assert_eq!(reader.memberships_of(&user).await.unwrap().len(), 1);

    let authz = Authorizer::new(reader.clone(), Arc::new(s.read.clone()));
    let ctx = authz
        .authorize_user(&TenantContext::new(t.clone()), user.clone())
        .await
        .unwrap();
    assert!(authorize(&ctx, "reports:export").is_ok());
    assert!(authorize(&ctx, "policies:create").is_err());

    assert!(writer.remove(&user, t.id).await.unwrap());
    assert!(reader.membership(&user, t.id).await.unwrap().is_none());
}

async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..100 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for: {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_invalidate_caches_in_every_process() {
    let s = stores().await;
    let t = Tenant::new(
        TenantId::new_v4(),
        unique("cache").parse().unwrap(),
        "Before",
    );
    s.write.create(&t).await.unwrap();

    // Two "processes": two pools, two caches, each with its own listener.
    let mut caches = Vec::new();
    let mut listeners = Vec::new();
    for _ in 0..2 {
        let pool = s.env.app_pool(2).await.unwrap();
        let cache = Arc::new(
            CachedStore::builder(PgTenantStore::new(pool.clone()))
                .ttl(Duration::from_secs(3600))
                .negative_ttl(Duration::from_secs(3600))
                .build(),
        );
        listeners.push(
            InvalidationListener::start(&pool, cache.clone())
                .await
                .unwrap(),
        );
        caches.push(cache);
    }
    // A third cache without a listener shows what would happen otherwise.
    let stale = CachedStore::builder(s.read.clone())
        .ttl(Duration::from_secs(3600))
        .build();
    let new_slug: tenancy_core::TenantSlug = unique("cache-new").parse().unwrap();
    for c in &caches {
        assert_eq!(c.by_id(t.id).await.unwrap().unwrap().display_name, "Before");
        assert!(c.by_slug(&new_slug).await.unwrap().is_none()); // a cached miss
    }
    stale.by_id(t.id).await.unwrap();

    s.write
        .apply(
            t.id,
            &TenantUpdate::new()
                .display_name("After")
                .slug(new_slug.clone()),
        )
        .await
        .unwrap();

    for c in &caches {
        eventually("the rename reaches every cache", || async {
            c.by_id(t.id).await.unwrap().unwrap().display_name == "After"
        })
        .await;
        // The cached miss for the new slug was dropped too, and the old slug is gone.
        assert_eq!(c.by_slug(&new_slug).await.unwrap().unwrap().id, t.id);
        assert!(c.by_slug(&t.slug).await.unwrap().is_none());
    }
    assert_eq!(
        stale.by_id(t.id).await.unwrap().unwrap().display_name,
        "Before",
        "control: without a listener the cache stays stale until its TTL"
    );
    drop(listeners);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_survives_its_connection_being_killed() {
    let s = stores().await;
    let t = Tenant::new(
        TenantId::new_v4(),
        unique("killed").parse().unwrap(),
        "Before",
    );
    s.write.create(&t).await.unwrap();
    let pool = s.env.app_pool(2).await.unwrap();
    let cache = Arc::new(
        CachedStore::builder(PgTenantStore::new(pool.clone()))
            .ttl(Duration::from_secs(3600))
            .build(),
    );
    let _listener = InvalidationListener::start(&pool, cache.clone())
        .await
        .unwrap();
    assert_eq!(
        cache.by_id(t.id).await.unwrap().unwrap().display_name,
        "Before"
    );
    // Kill every connection listening for tenant changes (ours included).
    let admin = s.env.admin_pool(1).await.unwrap();
    let listening = "SELECT pid FROM pg_stat_activity \
                     WHERE query LIKE 'LISTEN%tenancy_tenant_changed%' AND usename = 'tenancy_app'";
    let killed: Vec<i32> = sqlx::query_scalar(listening)
        .fetch_all(&admin)
        .await
        .unwrap();
    assert!(!killed.is_empty());
    for pid in &killed {
        sqlx::query("SELECT pg_terminate_backend($1)")
            .bind(pid)
            .execute(&admin)
            .await
            .unwrap();
    }
    // It listens again on a new connection ...
    eventually("a new listening connection", || async {
        let now: Vec<i32> = sqlx::query_scalar(listening)
            .fetch_all(&admin)
            .await
            .unwrap();
        now.iter().any(|p| !killed.contains(p))
    })
    .await;
    // ... and a change made after that still reaches the cache: cache the
    // old record again (after the listener's post-reconnect reset has run),
    // so only the notification can replace it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        cache.by_id(t.id).await.unwrap().unwrap().display_name,
        "Before"
    );
    s.write
        .apply(t.id, &TenantUpdate::new().display_name("After"))
        .await
        .unwrap();
    eventually(
        "the change reaches the cache after the reconnect",
        || async { cache.by_id(t.id).await.unwrap().unwrap().display_name == "After" },
    )
    .await;
}

#[tokio::test]
async fn membership_administration_table_on_postgres() {
    let s = stores().await;
    let t = Tenant::new(TenantId::new_v4(), unique("adm").parse().unwrap(), "Adm");
    s.write.create(&t).await.unwrap();
    let writer = PgMembershipStore::new(s.env.owner_pool(2).await.unwrap());
    tenancy_testkit::membership::administration(Arc::new(writer), &t)
        .await
        .unwrap();
}
