//! Whole-tenant operations on both backends: export, offboarding and purge
//! with crypto-shredding, seeding at scale, migrations.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::path::Path;

use insurance_agent::data::{Data, PgUrls};
use insurance_agent::id::Id;
use insurance_agent::{ops, seed};
use tenancy_core::store::TenantStore;
use tenancy_core::{TenantContext, TenantStatus};
use tenancy_sqlx::AuditQuery;
use tenancy_testkit::TestDb;

/// On PostgreSQL, a fresh database of the test's own.
async fn database(postgres: bool) -> Option<TestDb> {
    if !postgres {
        return None;
    }
    Some(
        TestDb::from_env()
            .unwrap()
            .fresh_database("insurance_ops")
            .await
            .unwrap(),
    )
}

async fn open(dir: &Path, pg: &Option<TestDb>) -> Data {
    let urls = pg.as_ref().map(|db| PgUrls {
        app: db.app_url.clone(),
        owner: db.owner_url.clone(),
        listen: None,
    });
    Data::open_with(dir, urls.as_ref()).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_export_then_offboard_then_purge_shreds_everything() {
    export_then_offboard_then_purge_shreds_everything(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_export_then_offboard_then_purge_shreds_everything() {
    export_then_offboard_then_purge_shreds_everything(true).await;
}

async fn export_then_offboard_then_purge_shreds_everything(postgres: bool) {
    let dir = tempfile::tempdir().unwrap();
    let pg = database(postgres).await;
    let data = open(dir.path(), &pg).await;
    seed::demo(&data).await.unwrap();
    let tenant = data
        .tenant_store()
        .by_slug(&"bharat-agents".parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    let ctx = TenantContext::new((*tenant).clone());

    // Export: every table, sensitive fields decrypted, private files.
    let out = dir.path().join("export");
    let counts = ops::export_to(&data, &tenant, &out, "test").await.unwrap();
    let customers = counts.iter().find(|(t, _)| t == "customers").unwrap().1;
    assert_eq!(customers, 3);
    let text = std::fs::read_to_string(out.join("customers.jsonl")).unwrap();
    assert_eq!(text.lines().count(), 3);
    assert!(text.contains("\"pan\":\"DEMOP"), "{text}");
    assert!(!text.contains("tnc1:"), "no ciphertext in the export");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(out.join("customers.jsonl"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "export files are owner-only");
        // An export never overwrites a file, nor writes through a link
        // planted where one of its files goes.
        let again = ops::export_to(&data, &tenant, &out, "test")
            .await
            .unwrap_err();
        assert_eq!(again.0.status, 409, "{again}");
        let planted = dir.path().join("planted");
        std::fs::create_dir_all(&planted).unwrap();
        let victim = dir.path().join("victim.txt");
        std::fs::write(&victim, b"untouched").unwrap();
        for table in insurance_agent::data::TENANT_TABLES {
            std::os::unix::fs::symlink(&victim, planted.join(format!("{table}.jsonl"))).unwrap();
        }
        let linked = ops::export_to(&data, &tenant, &planted, "test")
            .await
            .unwrap_err();
        assert_eq!(linked.0.status, 409, "{linked}");
        assert_eq!(std::fs::read(&victim).unwrap(), b"untouched");
    }
    // A ciphertext as stored, to check the shredding later.
    let mut tx = data.begin(&ctx).await.unwrap();
    let (id, pan): (Id, String) = insurance_agent::on!(
        tx,
        sqlx::query_as("SELECT id, pan_enc FROM customers WHERE pan_enc IS NOT NULL LIMIT 1"),
        fetch_one
    )
    .unwrap();
    let exports = data
        .audit()
        .query(&mut tx, &AuditQuery::new().action("export"))
        .await
        .unwrap();
    assert_eq!(exports.events.len(), 1, "the export is audited");
    tx.commit().await.unwrap();

    // Purge is refused until offboarding's grace period is over.
    assert_eq!(
        ops::purge(&data, &tenant, ops::PurgeOptions::default())
            .await
            .unwrap_err()
            .0
            .status,
        409
    );
    let offboarding = ops::offboard(&data, &tenant, 30).await.unwrap();
    assert!(matches!(
        offboarding.status,
        TenantStatus::Offboarding { .. }
    ));
    assert_eq!(
        ops::purge(&data, &offboarding, ops::PurgeOptions::default())
            .await
            .unwrap_err()
            .0
            .status,
        409
    );
    // A copy from before the offboarding cannot be used to decide again.
    assert_eq!(
        ops::offboard(&data, &tenant, 0).await.unwrap_err().0.status,
        409
    );
    // (A zero grace period, as an operator would after the real one:
    // restored, then offboarded again.)
    let restored = data
        .transition(
            &offboarding,
            tenancy_core::lifecycle::Transition::Restore,
            "test",
        )
        .await
        .unwrap();
    let restored = ops::offboard(&data, &restored, 0).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    let path = (!postgres).then(|| data.tenant_path(&restored).unwrap());
    // An export is required since offboarding began: the one made before
    // does not count.
    let refused = ops::purge(&data, &restored, ops::PurgeOptions::default())
        .await
        .unwrap_err();
    assert_eq!(refused.0.status, 409, "{refused}");
    assert!(
        refused.to_string().contains("export the tenant first"),
        "{refused}"
    );
    let final_export = dir.path().join("final-export");
    ops::export_to(&data, &restored, &final_export, "dpo")
        .await
        .unwrap();
    if let Some(pg) = &pg {
        // On PostgreSQL the log is tampered with first (as the superuser):
        // the purge still destroys it all, and the certificate says the
        // chain did not verify.
        let su = sqlx::PgPool::connect(&pg.admin_url).await.unwrap();
        sqlx::query(
            "UPDATE tenancy.audit_log SET actor_id = 'someone-else' \
             WHERE tenant_id = $1 AND seq = 1",
        )
        .bind(tenant.id.as_uuid())
        .execute(&su)
        .await
        .unwrap();
    }
    let (gone, cert) = ops::purge(&data, &restored, ops::PurgeOptions::default())
        .await
        .unwrap();
    assert_eq!(cert.record.audit_chain_intact, !postgres, "{cert:?}");
    assert!(matches!(gone.status, TenantStatus::Deleted));
    // The destruction certificate: what was destroyed, signed.
    let r = &cert.record;
    assert_eq!(r.tenant_id, tenant.id);
    assert_eq!(r.rows["customers"], 3, "{r:?}");
    assert!(r.rows.contains_key("payments"));
    assert!(!r.data_key_versions.is_empty(), "{r:?}");
    assert!(r.keks_destroyed);
    assert!(r.audit_events >= 3, "{r:?}");
    let export = r.export.as_ref().unwrap();
    assert_eq!(export.by, "dpo");
    let verifier = ops::certificate_signer(&data).unwrap().verifier();
    assert!(verifier.verify(&cert).is_ok());
    let stored: tenancy_core::destruction::DestructionCertificate = serde_json::from_slice(
        &std::fs::read(
            dir.path()
                .join("certificates")
                .join(format!("{}.json", tenant.id)),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(stored, cert);
    let mut forged = stored.clone();
    forged.record.rows.insert("customers".into(), 0);
    assert!(verifier.verify(&forged).is_err(), "a changed count fails");
    let other = tenancy_core::destruction::CertificateSigner::from_seed([1u8; 32]).verifier();
    assert!(
        other.verify(&stored).is_err(),
        "another key's verifier refuses"
    );
    match path {
        Some(path) => assert!(!path.exists(), "the tenant file is removed"),
        None => {
            // Every row of the tenant is gone from the shared tables (read
            // as the superuser: the policies are forced, so even the owner
            // would see nothing and this check would prove nothing).
            let owner = sqlx::PgPool::connect(&pg.as_ref().unwrap().admin_url)
                .await
                .unwrap();
            for table in insurance_agent::data::TENANT_TABLES {
                let left: i64 = sqlx::query_scalar(&format!(
                    "SELECT count(*) FROM public.{table} WHERE tenant_id = $1"
                ))
                .bind(tenant.id.as_uuid())
                .fetch_one(&owner)
                .await
                .unwrap();
                assert_eq!(left, 0, "{table} rows of the purged tenant");
            }
            // Its audit log too (archived by the owner, then the archive removed).
            let audit_left: i64 =
                sqlx::query_scalar("SELECT count(*) FROM tenancy.audit_log WHERE tenant_id = $1")
                    .bind(tenant.id.as_uuid())
                    .fetch_one(&owner)
                    .await
                    .unwrap();
            assert_eq!(audit_left, 0, "audit rows of the purged tenant");
            assert!(
                !dir.path()
                    .join("audit-archive")
                    .join(tenant.id.to_string())
                    .exists()
            );
            let others: i64 = sqlx::query_scalar("SELECT count(*) FROM public.customers")
                .fetch_one(&owner)
                .await
                .unwrap();
            assert!(others > 0, "other tenants' customers stay");
        }
    }
    assert!(
        data.memberships()
            .members_of(tenant.id)
            .await
            .unwrap()
            .is_empty()
    );
    // Crypto-shredding: the stored ciphertext can never be opened again.
    let ct = tenancy_core::crypto::from_text(&pan).unwrap();
    let context = format!("customers.pan:{id}");
    assert!(
        data.keyring()
            .decrypt(tenant.id, context.as_bytes(), &ct)
            .await
            .is_err()
    );
    // And reopening the data directory (a restart) does not bring keys back.
    drop(data);
    let again = open(dir.path(), &pg).await;
    assert!(
        again
            .keyring()
            .decrypt(tenant.id, context.as_bytes(), &ct)
            .await
            .is_err()
    );
    // Other tenants are untouched.
    let sunrise = again
        .tenant_store()
        .by_slug(&"sunrise-insurance".parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    let member = again.memberships().members_of(sunrise.id).await.unwrap();
    assert_eq!(member.len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_synthetic_seeding_creates_working_tenants_at_scale() {
    synthetic_seeding_creates_working_tenants_at_scale(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_synthetic_seeding_creates_working_tenants_at_scale() {
    synthetic_seeding_creates_working_tenants_at_scale(true).await;
}

async fn synthetic_seeding_creates_working_tenants_at_scale(postgres: bool) {
    let dir = tempfile::tempdir().unwrap();
    let pg = database(postgres).await;
    let data = open(dir.path(), &pg).await;
    for i in 0..5 {
        let t = seed::synthetic(&data, &format!("syn-{i}"), "Synthetic", 200)
            .await
            .unwrap();
        let ctx = TenantContext::new(t.clone());
        let mut tx = data.begin(&ctx).await.unwrap();
        let (customers, agents): (i64, i64) = insurance_agent::on!(
            tx,
            sqlx::query_as(
                "SELECT (SELECT count(*) FROM customers), (SELECT count(*) FROM agents)"
            ),
            fetch_one
        )
        .unwrap();
        tx.commit().await.unwrap();
        assert_eq!((customers, agents), (200, 3));
    }
    assert_eq!(data.tenant_store().list().await.unwrap().len(), 5);
    // Every tenant is at the latest schema: a migration run has nothing to do.
    let report = data.migrate_all(|_| {}).await.unwrap();
    assert_eq!((report.up_to_date, report.migrated.len()), (5, 0));
}
