//! Lifecycle, provisioning and deprovisioning against PostgreSQL: the
//! pipeline log survives and resumes; offboarding exports the tenant's rows,
//! then purging leaves no row and no usable key of it, and spares others.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use chrono::Duration;
use tenancy_core::audit::AuditSink;
use tenancy_core::crypto::keys::{Keyring, LocalKeyProvider};
use tenancy_core::lifecycle::{Lifecycle, Transition};
use tenancy_core::provision::{
    CreateKeysStep, CreateRecordStep, FnStep, Pipeline, ProvisioningLog, StepStatus,
};
use tenancy_core::settings::TenantSettings;
use tenancy_core::store::TenantStore;
use tenancy_core::{Membership, Role, Tenant, TenantContext, TenantId, TenantStatus, UserId};
use tenancy_sqlx::rls::{ApplyTenantTable, TenantTable};
use tenancy_sqlx::{
    AuditQuery, DbError, Deprovisioner, PgAuditLog, PgKeyStore, PgMembershipStore,
    PgProvisioningLog, PgSettingsStore, PgTenantStore, TenantDb, migrate,
};
use tenancy_testkit::TestDb;
use uuid::Uuid;

const MASTER: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";

fn tenant(slug: &str) -> Tenant {
    let id = TenantId::new_v4();
    Tenant::new(
        id,
        format!("{slug}-{}", &id.to_string()[..8]).parse().unwrap(),
        slug,
    )
}

#[tokio::test]
async fn offboarding_exports_then_purges_one_tenant_and_spares_the_other() {
    let env = TestDb::from_env().unwrap();
    let owner = env.owner_pool(2).await.unwrap();
    {
        let mut conn = owner.acquire().await.unwrap();
        migrate::run(&mut conn).await.unwrap();
        migrate::grant_system_read(&mut conn, "tenancy_app")
            .await
            .unwrap();
        migrate::grant_purge(&mut conn, "tenancy_app")
            .await
            .unwrap();
    }
    let schema = env.fresh_schema("deprov").await.unwrap();
    sqlx::query(&format!(
        "CREATE TABLE \"{schema}\".policies (tenant_id uuid NOT NULL, id uuid NOT NULL, number text NOT NULL, PRIMARY KEY (tenant_id, id))"
    ))
    .execute(&owner)
    .await
    .unwrap();
    let policies = TenantTable::new("policies")
        .schema(&schema)
        .index_on(["id"])
        .grant_to("tenancy_app");
    policies
        .apply(&mut owner.acquire().await.unwrap())
        .await
        .unwrap();

    let db = TenantDb::connect(&env.app_url, env.seal_key().await.unwrap())
        .await
        .unwrap();
    let store = Arc::new(PgTenantStore::new(owner.clone()));
    let audit = Arc::new(PgAuditLog::new(db.clone(), [9u8; 32]));
    let lifecycle = Lifecycle::new(store.clone()).with_audit(audit.clone());
    let provider = Arc::new(LocalKeyProvider::new(
        LocalKeyProvider::master_from_base64(MASTER).unwrap(),
    ));
    let keys = Arc::new(Keyring::new(
        provider.clone(),
        Arc::new(PgKeyStore::new(db.clone())),
    ));
    let settings = TenantSettings::new(Arc::new(PgSettingsStore::new(db.clone())), keys.clone());
    let members = PgMembershipStore::new(owner.clone());

    // Provision both through a pipeline logged in PostgreSQL; the seed step
    // fails once, and the second run resumes there.
    let seed_fails = Arc::new(AtomicBool::new(true));
    let log = Arc::new(PgProvisioningLog::new(owner.clone()));
    let flag = seed_fails.clone();
    let pipeline = Pipeline::new(log.clone())
        .step(CreateRecordStep::new(lifecycle.clone(), store.clone()))
        .step(CreateKeysStep::new(keys.clone()))
        .step(FnStep::new("seed", move |_t: Tenant| {
            let fail = flag.swap(false, Ordering::SeqCst);
            async move {
                if fail {
                    Err("seed data unavailable".to_string())
                } else {
                    Ok(())
                }
            }
        }));
    let (a, b) = (tenant("a"), tenant("b"));
    assert!(pipeline.run(&a).await.is_err());
    let logged = log.steps(a.id).await.unwrap();
    assert_eq!(
        logged.last().map(|r| (r.step.as_str(), r.status)),
        Some(("seed", StepStatus::Failed))
    );
    let resumed = pipeline.run(&a).await.unwrap();
    assert_eq!(resumed.ran, vec!["seed"]);
    pipeline.run(&b).await.unwrap();

    // Data for both.
    let mut sealed = Vec::new();
    for (t, n) in [(&a, 3), (&b, 2)] {
        let ctx = TenantContext::new(t.clone());
        let mut tx = db.begin(&ctx).await.unwrap();
        for i in 0..n {
            sqlx::query(&format!(
                "INSERT INTO {} (tenant_id, id, number) VALUES ($1, $2, $3)",
                policies.qualified_name()
            ))
            .bind(t.id.as_uuid())
            .bind(Uuid::new_v4())
            .bind(format!("POL-{i}"))
            .execute(&mut *tx)
            .await
            .unwrap();
        }
        tx.commit().await.unwrap();
        settings
            .set_secret(t.id, "bank.account", "0012345678")
            .await
            .unwrap();
        sealed.push(
            keys.encrypt(t.id, b"customers.pan:1", b"ABCDE1234F")
                .await
                .unwrap(),
        );
        members
            .upsert(&Membership::new(UserId::new("u1"), t.id, Role::Admin))
            .await
            .unwrap();
    }

    // Not offboarding yet: purge refuses and deletes nothing.
    let job = Deprovisioner::new(db.clone(), lifecycle.clone(), vec![policies.clone()])
        .with_keys(keys.clone())
        .with_audit(audit.clone() as Arc<dyn AuditSink>)
        .with_system_pool(owner.clone());
    let a_now = store.by_id(a.id).await.unwrap().unwrap();
    assert!(matches!(
        job.purge(&a_now).await,
        Err(DbError::Lifecycle(_))
    ));
    // Offboarding with 30 days of grace: still refused.
    let a_off = lifecycle
        .apply(
            &a_now,
            Transition::Offboard {
                grace: Duration::days(30),
            },
            "ops",
        )
        .await
        .unwrap();
    assert!(matches!(
        job.purge(&a_off).await,
        Err(DbError::Lifecycle(_))
    ));
    let a_off = lifecycle
        .apply(&a_off, Transition::Restore, "ops")
        .await
        .unwrap();
    let a_off = lifecycle
        .apply(
            &a_off,
            Transition::Offboard {
                grace: Duration::zero(),
            },
            "ops",
        )
        .await
        .unwrap();

    // Export: A's rows only, one JSON object per line.
    let dir = std::env::temp_dir().join(format!("tenancy-export-{}", Uuid::new_v4()));
    let report = job.export(a.id, &dir).await.unwrap();
    let policies_file = dir.join(format!("{schema}.policies.jsonl"));
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&policies_file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert!(lines.iter().all(|l| l["tenant_id"] == a.id.to_string()));
    assert!(report.files.contains(&(policies_file, 3)));
    let settings_export =
        std::fs::read_to_string(dir.join("tenancy.tenant_settings.jsonl")).unwrap();
    assert_eq!(settings_export.lines().count(), 1);
    assert!(
        !settings_export.contains("0012345678"),
        "secrets leave sealed"
    );

    // Purge.
    let purged = job.purge(&a_off).await.unwrap();
    assert!(purged.deleted.contains(&(format!("{schema}.policies"), 3)));
    let count = |t: &Tenant| {
        let (db, table, t) = (db.clone(), policies.qualified_name(), t.clone());
        async move {
            let mut tx = db.begin(&TenantContext::new(t)).await.unwrap();
            let n: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
                .fetch_one(&mut *tx)
                .await
                .unwrap();
            n
        }
    };
    assert_eq!(count(&a).await, 0);
    assert_eq!(count(&b).await, 2);
    let admin = env.admin_pool(1).await.unwrap();
    let left: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM {} WHERE tenant_id = $1",
        policies.qualified_name()
    ))
    .bind(a.id.as_uuid())
    .fetch_one(&admin)
    .await
    .unwrap();
    assert_eq!(left, 0, "seen by a superuser too");

    // No usable key: a cold keyring cannot open A's data; B's still opens.
    let cold = Keyring::new(provider.clone(), Arc::new(PgKeyStore::new(db.clone())));
    assert!(
        cold.decrypt(a.id, b"customers.pan:1", &sealed[0])
            .await
            .is_err()
    );
    assert!(cold.encrypt(a.id, b"x", b"y").await.is_err());
    assert_eq!(
        cold.decrypt(b.id, b"customers.pan:1", &sealed[1])
            .await
            .unwrap()
            .as_slice(),
        b"ABCDE1234F"
    );
    assert_eq!(
        settings.get::<String>(a.id, "bank.account").await.unwrap(),
        None
    );
    assert_eq!(
        settings
            .get::<String>(b.id, "bank.account")
            .await
            .unwrap()
            .unwrap(),
        "0012345678"
    );
    let memberships: i64 =
        sqlx::query_scalar("SELECT count(*) FROM tenancy.memberships WHERE tenant_id = $1")
            .bind(a.id.as_uuid())
            .fetch_one(&owner)
            .await
            .unwrap();
    assert_eq!(memberships, 0);

    // Deleted, with the whole story in A's audit log, chain intact.
    assert_eq!(
        store.by_id(a.id).await.unwrap().unwrap().status,
        TenantStatus::Deleted
    );
    assert!(matches!(
        store.by_id(b.id).await.unwrap().unwrap().status,
        TenantStatus::Active
    ));
    let events = audit.query(a.id, &AuditQuery::new()).await.unwrap().events;
    let actions: Vec<&str> = events
        .iter()
        .rev()
        .map(|(_, e)| e.action.as_str())
        .collect();
    assert_eq!(
        actions,
        vec![
            "tenant.created",
            "tenant.offboard",
            "tenant.restore",
            "tenant.offboard",
            "tenant.purge",
            "tenant.deprovisioned"
        ]
    );
    assert!(audit.verify_chain(a.id).await.unwrap().is_intact());
    std::fs::remove_dir_all(dir).unwrap();
}

/// The system schema applied as the owner; the owner's pool and the
/// application role's door.
async fn system_schema() -> (sqlx::PgPool, TenantDb) {
    let env = TestDb::from_env().unwrap();
    let owner = env.owner_pool(4).await.unwrap();
    {
        let mut conn = owner.acquire().await.unwrap();
        migrate::run(&mut conn).await.unwrap();
        migrate::grant_system_read(&mut conn, "tenancy_app")
            .await
            .unwrap();
    }
    (
        owner,
        TenantDb::connect(&env.app_url, env.seal_key().await.unwrap())
            .await
            .unwrap(),
    )
}

#[tokio::test]
async fn invitations_in_postgres_are_single_use_and_tenant_bound() {
    use tenancy_core::MembershipStore;
    use tenancy_core::invite::{Invitations, InviteError};
    use tenancy_sqlx::PgInvitationStore;

    let env = TestDb::from_env().unwrap();
    let (owner, db) = system_schema().await;
    let store = PgTenantStore::new(owner.clone());
    let (a, b) = (tenant("inv-a"), tenant("inv-b"));
    store.create(&a).await.unwrap();
    store.create(&b).await.unwrap();
    let members = Arc::new(PgMembershipStore::new(owner.clone()));
    let inv = Invitations::new(
        Arc::new(PgInvitationStore::new(db.clone())),
        members.clone(),
    );
    let admin = UserId::new("admin");

    let (_, token) = inv
        .invite(
            a.id,
            "asha@example.com",
            Role::Member,
            &admin,
            Duration::days(1),
        )
        .await
        .unwrap();
    assert!(matches!(
        inv.accept(b.id, token.expose(), &UserId::new("asha")).await,
        Err(InviteError::WrongTenant)
    ));
    let m = inv
        .accept(a.id, token.expose(), &UserId::new("asha"))
        .await
        .unwrap();
    assert_eq!(m.role, Role::Member);
    assert_eq!(
        members
            .membership(&UserId::new("asha"), a.id)
            .await
            .unwrap()
            .unwrap()
            .role,
        Role::Member
    );
    assert!(matches!(
        inv.accept(a.id, token.expose(), &UserId::new("eve")).await,
        Err(InviteError::AlreadyUsed)
    ));

    // Eight concurrent acceptances of a fresh token: exactly one wins.
    let (_, token) = inv
        .invite(
            a.id,
            "team@example.com",
            Role::Viewer,
            &admin,
            Duration::days(1),
        )
        .await
        .unwrap();
    let token = Arc::new(token.expose().to_owned());
    let mut tasks = Vec::new();
    for i in 0..8 {
        let (inv, token, t) = (inv.clone(), token.clone(), a.id);
        tasks.push(tokio::spawn(async move {
            inv.accept(t, &token, &UserId::new(format!("racer-{i}")))
                .await
                .is_ok()
        }));
    }
    let mut winners = 0;
    for task in tasks {
        winners += usize::from(task.await.unwrap());
    }
    assert_eq!(winners, 1);

    // Expired tokens are refused by the database's own check too.
    let (_, old) = inv
        .invite(
            a.id,
            "late@example.com",
            Role::Viewer,
            &admin,
            Duration::milliseconds(1),
        )
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    assert!(matches!(
        inv.accept(a.id, old.expose(), &UserId::new("late")).await,
        Err(InviteError::Expired(_))
    ));

    // Only hashes are stored, and without a tenant nothing is visible.
    let admin_pool = env.admin_pool(1).await.unwrap();
    let hashes: Vec<Vec<u8>> =
        sqlx::query_scalar("SELECT token_hash FROM tenancy.invitations WHERE tenant_id = $1")
            .bind(a.id.as_uuid())
            .fetch_all(&admin_pool)
            .await
            .unwrap();
    assert_eq!(hashes.len(), 3);
    assert!(
        hashes
            .iter()
            .all(|h| h.len() == 32 && !token.as_bytes().windows(32).any(|w| w == h.as_slice()))
    );
    let app = env.app_pool(1).await.unwrap();
    let visible: i64 = sqlx::query_scalar("SELECT count(*) FROM tenancy.invitations")
        .fetch_one(&app)
        .await
        .unwrap();
    assert_eq!(visible, 0);
}

#[tokio::test]
async fn the_database_probe_checks_the_tenant_data_path() {
    use std::time::Duration;
    use tenancy_core::health::{Status, TenantHealth};
    use tenancy_sqlx::DatabaseProbe;

    let env = TestDb::from_env().unwrap();
    let db = TenantDb::connect(&env.app_url, env.seal_key().await.unwrap())
        .await
        .unwrap();
    let t = tenant("probe");
    let health = TenantHealth::new(Duration::from_secs(5)).probe(DatabaseProbe::new(db.clone()));
    let r = health.check(&t).await;
    assert_eq!(r.status, Status::Healthy, "{r:?}");

    // The probe goes through the tenant's placement: a schema tenant is
    // healthy while its schema exists, a database tenant while its
    // database does.
    let routed = TenantDb::connect(&env.app_url, env.seal_key().await.unwrap())
        .await
        .unwrap()
        .with_databases(tenancy_sqlx::DatabaseRouter::new(
            env.app_url.parse().unwrap(),
        ));
    let placed = TenantHealth::new(Duration::from_secs(5)).probe(DatabaseProbe::new(routed));
    let schema = env.fresh_schema("probe").await.unwrap();
    let in_schema =
        tenant("probe-schema").with_placement(tenancy_core::Placement::schema(&schema).unwrap());
    let r = placed.check(&in_schema).await;
    assert_eq!(r.status, Status::Healthy, "{r:?}");
    let gone = tenant("probe-gone")
        .with_placement(tenancy_core::Placement::schema("t_no_such_schema").unwrap());
    let r = placed.check(&gone).await;
    assert_eq!(r.status, Status::Unhealthy, "{r:?}");
    assert!(r.probes[0].detail.contains("does not exist"), "{r:?}");
    let no_db = tenant("probe-db")
        .with_placement(tenancy_core::Placement::database("t_no_such_database").unwrap());
    let r = placed.check(&no_db).await;
    assert_eq!(r.status, Status::Unhealthy, "{r:?}");

    db.close().await;
    let r = health.check(&t).await;
    assert_eq!(r.status, Status::Unhealthy, "{r:?}");
}

#[tokio::test]
async fn a_failed_join_gives_the_postgres_invitation_back() {
    let (owner, db) = system_schema().await;
    let t = tenant("inv-retry");
    PgTenantStore::new(owner.clone()).create(&t).await.unwrap();
    tenancy_testkit::invite::a_failed_join_releases_the_invitation(
        Arc::new(tenancy_sqlx::PgInvitationStore::new(db)),
        t.id,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn seats_in_postgres_are_exact_under_64_concurrent_invitations() {
    let (owner, db) = system_schema().await;
    let t = tenant("seats");
    PgTenantStore::new(owner.clone()).create(&t).await.unwrap();
    let report = tenancy_testkit::invite::seats_are_exact(
        Arc::new(tenancy_sqlx::PgInvitationStore::new(db.clone())),
        Arc::new(PgMembershipStore::new(owner.clone())),
        t.id,
    )
    .await
    .unwrap();
    println!(
        "seats: path=postgres issued={} refused={}",
        report.issued, report.refused
    );
    // The twin: counting then inserting without the lock over-issues.
    let twin = tenant("seats-twin");
    PgTenantStore::new(owner.clone())
        .create(&twin)
        .await
        .unwrap();
    let err = tenancy_testkit::invite::seats_are_exact(
        Arc::new(tenancy_testkit::invite::UnlockedSeats(Arc::new(
            tenancy_sqlx::PgInvitationStore::new(db),
        ))),
        Arc::new(PgMembershipStore::new(owner)),
        twin.id,
    )
    .await
    .unwrap_err();
    println!("seats: path=postgres-unlocked {err}");
    assert!(err.starts_with("1."), "{err}");
}
