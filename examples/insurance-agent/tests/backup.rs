//! Tenant backup and restore across backends: a tenant backed up from the
//! shared PostgreSQL tables restores into a SQLite deployment (a file of its
//! own) with every table's checksum equal and the app serving it — sensitive
//! fields decrypting — then back into a fresh PostgreSQL database; a live
//! tenant is not overwritten without `replace`; an altered backup is refused
//! and leaves nothing behind.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

#[macro_use]
mod common;

use std::path::Path;

use common::{Backend, call, fresh_database, login, start, tenant};
use insurance_agent::app::{self, Config, Security};
use insurance_agent::backup::{
    CloneAs, RestoreOptions, backup_to, clone_from, restore_from, table_sums,
};
use insurance_agent::data::{Data, PgUrls};
use serde_json::json;
use tenancy_core::backup::BackupKey;

fn copy_keys(from: &Path, to: &Path) {
    for f in ["master.key", "keks.json"] {
        std::fs::copy(from.join(f), to.join(f)).unwrap();
    }
}

async fn serve(dir: &Path, postgres: Option<PgUrls>) -> app::Running {
    app::start(&Config {
        data_dir: dir.to_owned(),
        bind: "127.0.0.1:0".parse().unwrap(),
        plans: None,
        postgres,
        redis: None,
        security: Security::default(),
        limits: app::Limits::default(),
        billing: Default::default(),
    })
    .await
    .unwrap()
}

/// The tenant's audit chain where it was restored.
async fn audit_of(
    data: &Data,
    t: &tenancy_core::Tenant,
) -> tenancy_core::audit::archive::ArchiveReport {
    let mut tx = data
        .begin(&tenancy_core::TenantContext::new(t.clone()))
        .await
        .unwrap();
    let r = data
        .audit()
        .verify_archive(&mut tx, &data.audit_archive(), &[])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    r
}

/// The details of the newest `action` event in `t`'s log.
async fn last_event(data: &Data, t: &tenancy_core::Tenant, action: &str) -> serde_json::Value {
    let mut tx = data
        .begin(&tenancy_core::TenantContext::new(t.clone()))
        .await
        .unwrap();
    let page = data
        .audit()
        .query(&mut tx, &tenancy_sqlx::AuditQuery::new().action(action))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    page.events.first().unwrap().1.details.clone()
}

/// The customer's PAN as the restored app serves it.
async fn pan_of(running: &app::Running, customer: &str) -> String {
    let admin = login(running.addr, "admin@sunrise.test", "sunrise-insurance").await;
    let r = call(
        running.addr,
        "GET",
        &format!("/customers/{customer}"),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["sensitive"]["pan"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_round_trips_postgres_to_sqlite_and_back() {
    let key = BackupKey::new([6u8; 32]);
    // The source: the shared PostgreSQL tables.
    let source = start(Backend::Postgres).await;
    let agent = login(
        source.running.addr,
        "agent@sunrise.test",
        "sunrise-insurance",
    )
    .await;
    let c = call(
        source.running.addr,
        "POST",
        "/customers",
        Some(&agent),
        Some(json!({
            "first_name": "Ritu", "last_name": "Sen", "customer_type": "individual",
            "sensitive": {"pan": "RITUS1234K", "medical_history": "none"}
        })),
    )
    .await;
    assert_eq!(c.status, 201, "{}", c.text());
    let customer = c.json()["id"].as_str().unwrap().to_owned();
    let sunrise = tenant(&source, "sunrise-insurance").await;
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("sunrise.backup");
    let report = backup_to(&source.running.data, &sunrise, &file, &key, &|_| {})
        .await
        .unwrap();
    let customers = report.manifest.tables["customers"];
    assert!(customers.rows >= 2, "{customers:?}");
    // A backup never overwrites a file.
    assert!(
        backup_to(&source.running.data, &sunrise, &file, &key, &|_| {})
            .await
            .is_err()
    );

    // Into a SQLite deployment sharing the key provider.
    let sqlite_dir = tempfile::tempdir().unwrap();
    copy_keys(source._dir.path(), sqlite_dir.path());
    let target = Data::open(sqlite_dir.path()).await.unwrap();
    let (restored, manifest) =
        restore_from(&target, &file, &key, RestoreOptions::default(), &|_, _| {})
            .await
            .unwrap();
    assert_eq!(restored.id, sunrise.id);
    assert_eq!(manifest, report.manifest);
    for (table, sum) in table_sums(&target, &restored).await.unwrap() {
        assert_eq!(Some(&sum), report.manifest.tables.get(&table), "{table}");
    }
    assert!(
        target.tenant_path(&restored).unwrap().exists(),
        "a file of its own"
    );
    // Its audit log came along: every event, re-chained, verifying.
    let logged = report.manifest.tables["tenancy.audit_log"].rows;
    assert!(logged > 0);
    let audit = audit_of(&target, &restored).await;
    assert!(audit.is_intact(), "{:?}", audit.chain.breaks);
    // Every event, and the restore itself.
    assert_eq!(audit.live_rows, logged + 1);
    // The restore records the source's chain as verified at backup time;
    // this deployment has another audit root, so it could not re-verify.
    let restored_event = last_event(&target, &restored, "restore").await;
    assert_eq!(
        restored_event["source_chain"]["intact"], true,
        "{restored_event}"
    );
    assert_eq!(restored_event["reverified_here"], false, "{restored_event}");
    // A live tenant is not overwritten without `replace`...
    let again = restore_from(&target, &file, &key, RestoreOptions::default(), &|_, _| {})
        .await
        .unwrap_err();
    assert_eq!(again.0.status, 409, "{again}");
    // ... and is with it, to the same checksums.
    restore_from(
        &target,
        &file,
        &key,
        RestoreOptions {
            replace: true,
            ..Default::default()
        },
        &|_, _| {},
    )
    .await
    .unwrap();
    for (table, sum) in table_sums(&target, &restored).await.unwrap() {
        assert_eq!(Some(&sum), report.manifest.tables.get(&table), "{table}");
    }
    // The live tenant's log is append-only: kept, not doubled (one more
    // restore recorded).
    assert_eq!(audit_of(&target, &restored).await.live_rows, logged + 2);
    drop(target);
    // The app serves the restored tenant: its users sign in, fields decrypt.
    let served = serve(sqlite_dir.path(), None).await;
    assert!(served.storage.contains("SQLite"));
    assert!(served.seeded.is_empty(), "nothing seeded over the restore");
    assert_eq!(pan_of(&served, &customer).await, "RITUS1234K");

    // And from the SQLite file into a fresh PostgreSQL database.
    let back = work.path().join("sunrise-from-sqlite.backup");
    let from_sqlite = backup_to(&served.data, &restored, &back, &key, &|_| {})
        .await
        .unwrap();
    assert_eq!(from_sqlite.manifest.tables["customers"], customers);
    served.stop().await.unwrap();
    let (_db, urls) = fresh_database().await;
    let pg_dir = tempfile::tempdir().unwrap();
    copy_keys(source._dir.path(), pg_dir.path());
    // With the audit root restored too, the events re-verify here.
    std::fs::copy(
        sqlite_dir.path().join("audit.key"),
        pg_dir.path().join("audit.key"),
    )
    .unwrap();
    let pg = Data::open_postgres(pg_dir.path(), &urls).await.unwrap();
    let (in_pg, _) = restore_from(&pg, &back, &key, RestoreOptions::default(), &|_, _| {})
        .await
        .unwrap();
    assert_eq!(in_pg.placement, tenancy_core::Placement::Shared);
    let restored_event = last_event(&pg, &in_pg, "restore").await;
    assert_eq!(restored_event["reverified_here"], true, "{restored_event}");
    for (table, sum) in table_sums(&pg, &in_pg).await.unwrap() {
        assert_eq!(
            Some(&sum),
            from_sqlite.manifest.tables.get(&table),
            "{table}"
        );
    }
    drop(pg);
    let served = serve(pg_dir.path(), Some(urls)).await;
    assert_eq!(pan_of(&served, &customer).await, "RITUS1234K");
    served.stop().await.unwrap();
    source.running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_altered_backup_is_refused_and_leaves_nothing() {
    let key = BackupKey::new([6u8; 32]);
    let source = start(Backend::Sqlite).await;
    let sunrise = tenant(&source, "sunrise-insurance").await;
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("b");
    backup_to(&source.running.data, &sunrise, &file, &key, &|_| {})
        .await
        .unwrap();
    let text = std::fs::read_to_string(&file).unwrap();
    let target_dir = tempfile::tempdir().unwrap();
    copy_keys(source._dir.path(), target_dir.path());
    let target = Data::open(target_dir.path()).await.unwrap();
    for (what, altered) in [
        ("a changed value", text.replacen("\"Anil\"", "\"Anjl\"", 1)),
        ("a dropped line", {
            let mut l: Vec<&str> = text.lines().collect();
            l.remove(l.len() / 2);
            l.join("\n") + "\n"
        }),
        (
            "no seal",
            text.lines()
                .take(text.lines().count() - 1)
                .collect::<Vec<_>>()
                .join("\n")
                + "\n",
        ),
    ] {
        assert_ne!(altered, text, "{what}: the alteration changed nothing");
        let f = work.path().join("altered");
        std::fs::write(&f, altered).unwrap();
        let err = restore_from(&target, &f, &key, RestoreOptions::default(), &|_, _| {})
            .await
            .unwrap_err();
        assert_eq!(err.0.status, 422, "{what}: {err}");
        assert!(err.to_string().contains("backup refused"), "{what}: {err}");
        assert!(
            target.tenant(sunrise.id).await.unwrap().is_none(),
            "{what}: nothing restored"
        );
    }
    // Another key: refused too.
    let err = restore_from(
        &target,
        &file,
        &BackupKey::new([7u8; 32]),
        RestoreOptions::default(),
        &|_, _| {},
    )
    .await
    .unwrap_err();
    assert_eq!(err.0.status, 422);
    source.running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_restore_resumes_where_it_stopped() {
    let key = BackupKey::new([8u8; 32]);
    let source = start(Backend::Sqlite).await;
    let sunrise = tenant(&source, "sunrise-insurance").await;
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("b");
    let report = backup_to(&source.running.data, &sunrise, &file, &key, &|_| {})
        .await
        .unwrap();
    assert!(report.manifest.tables["customers"].rows > 0);
    let target_dir = tempfile::tempdir().unwrap();
    copy_keys(source._dir.path(), target_dir.path());
    let target = Data::open(target_dir.path()).await.unwrap();
    let (restored, _) = restore_from(&target, &file, &key, RestoreOptions::default(), &|_, _| {})
        .await
        .unwrap();
    // What a restore stopped after `agents` leaves: the tables before
    // committed and recorded, the ones after empty.
    let mut tx = target
        .begin_write(&tenancy_core::TenantContext::new(restored.clone()))
        .await
        .unwrap();
    for table in ["commissions", "payments", "policies", "customers"] {
        insurance_agent::on!(tx, sqlx::query(&format!("DELETE FROM {table}")), execute).unwrap();
    }
    tx.commit().await.unwrap();
    let progress = insurance_agent::backup::progress_path(&target, restored.id);
    let header = insurance_agent::backup::peek(&file).unwrap();
    let binding = insurance_agent::backup::progress_binding(&header, &report.manifest).unwrap();
    let done = [
        "tenancy.tenant",
        "app.users",
        "tenancy.memberships",
        "tenancy.tenant_keys",
        "tenancy.subject_keys",
        "agents",
    ];
    let resume = RestoreOptions {
        resume: true,
        ..Default::default()
    };
    // The twin: without the record of what was done, the half-restored
    // tenant is a live tenant, and is refused.
    let refused = restore_from(&target, &file, &key, resume, &|_, _| {})
        .await
        .unwrap_err();
    assert_eq!(refused.0.status, 409, "{refused}");
    // A record of another backup's restore does not count either.
    std::fs::create_dir_all(progress.parent().unwrap()).unwrap();
    std::fs::write(
        &progress,
        format!("{} {}\n{}\n", restored.id, "0".repeat(64), done.join("\n")),
    )
    .unwrap();
    let other = restore_from(&target, &file, &key, resume, &|_, _| {})
        .await
        .unwrap_err();
    assert_eq!(other.0.status, 409, "{other}");
    assert!(other.to_string().contains("another backup"), "{other}");
    std::fs::write(&progress, format!("{binding}\n{}\n", done.join("\n"))).unwrap();
    // An interrupted restore is continued only when asked to.
    let unasked = restore_from(&target, &file, &key, RestoreOptions::default(), &|_, _| {})
        .await
        .unwrap_err();
    assert!(unasked.to_string().contains("--resume"), "{unasked}");
    let seen = std::sync::atomic::AtomicU64::new(0);
    restore_from(&target, &file, &key, resume, &|n, _| {
        seen.store(n, std::sync::atomic::Ordering::Relaxed);
    })
    .await
    .unwrap();
    let seen = seen.into_inner();
    // Only the missing tables were loaded (agents were not inserted
    // twice), and every table now sums as in the backup.
    let expected: u64 = ["customers", "policies", "payments", "commissions"]
        .iter()
        .map(|t| report.manifest.tables[*t].rows)
        .sum();
    assert_eq!(seen, expected);
    for (table, sum) in table_sums(&target, &restored).await.unwrap() {
        assert_eq!(Some(&sum), report.manifest.tables.get(&table), "{table}");
    }
    assert!(
        !progress.exists(),
        "the record goes once the restore is done"
    );
    // The private copies restores read are gone too.
    let left: Vec<_> = std::fs::read_dir(progress.parent().unwrap())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".backup"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    source.running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_forgotten_since_the_backup_stays_forgotten() {
    let key = BackupKey::new([8u8; 32]);
    let source = start(Backend::Sqlite).await;
    let addr = source.running.addr;
    let sunrise = tenant(&source, "sunrise-insurance").await;
    let admin = login(addr, "admin@sunrise.test", "sunrise-insurance").await;
    let agent = login(addr, "agent@sunrise.test", "sunrise-insurance").await;
    let c = call(
        addr,
        "POST",
        "/customers",
        Some(&agent),
        Some(json!({
            "first_name": "Mira", "last_name": "Das", "customer_type": "individual",
            "email": "mira@example.test", "sensitive": {"pan": "MIRAD1234K"}
        })),
    )
    .await;
    assert_eq!(c.status, 201, "{}", c.text());
    let id = c.json()["id"].as_str().unwrap().to_owned();
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("b");
    backup_to(&source.running.data, &sunrise, &file, &key, &|_| {})
        .await
        .unwrap();
    let forgot = call(
        addr,
        "POST",
        &format!("/customers/{id}/forget"),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(forgot.status, 200, "{}", forgot.text());
    restore_from(
        &source.running.data,
        &file,
        &key,
        RestoreOptions {
            replace: true,
            ..Default::default()
        },
        &|_, _| {},
    )
    .await
    .unwrap();
    // Replaced from a backup that still holds her name and email: the row
    // is loaded as the erasure left it.
    let mut tx = source
        .running
        .data
        .begin(&tenancy_core::TenantContext::new(sunrise.clone()))
        .await
        .unwrap();
    let row: (String, Option<String>, bool) = insurance_agent::on!(
        tx,
        sqlx::query_as("SELECT first_name, email, active FROM customers WHERE id = $1")
            .bind(insurance_agent::id::Id(uuid::Uuid::parse_str(&id).unwrap())),
        fetch_one
    )
    .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(row, ("[erased]".to_owned(), None, false));
    // Twin: an untouched customer of the same backup comes back as it was.
    let others = call(addr, "GET", "/customers", Some(&admin), None).await;
    assert_eq!(others.status, 200);
    assert!(others.text().contains("Anil"), "{}", others.text());
    source.running.stop().await.unwrap();
}

on_both_backends!(a_backup_restores_as_a_new_tenant_with_its_own_keys);

/// The row and sealed PAN of customer `first_name` in `t`.
async fn ritu(data: &Data, t: &tenancy_core::Tenant) -> (uuid::Uuid, Option<String>, Vec<u8>) {
    let mut tx = data
        .begin(&tenancy_core::TenantContext::new(t.clone()))
        .await
        .unwrap();
    let (id, pan, index): (insurance_agent::id::Id, Option<String>, Option<Vec<u8>>) =
        insurance_agent::on!(
            tx,
            sqlx::query_as(
                "SELECT id, pan_enc, pan_index FROM customers WHERE first_name = 'Ritu'"
            ),
            fetch_one
        )
        .unwrap();
    tx.commit().await.unwrap();
    (id.0, pan, index.unwrap())
}

async fn a_backup_restores_as_a_new_tenant_with_its_own_keys(backend: Backend) {
    let key = BackupKey::new([3u8; 32]);
    let source = start(backend).await;
    let addr = source.running.addr;
    let data = &source.running.data;
    let agent = login(addr, "agent@sunrise.test", "sunrise-insurance").await;
    let c = call(
        addr,
        "POST",
        "/customers",
        Some(&agent),
        Some(json!({
            "first_name": "Ritu", "last_name": "Sen", "customer_type": "individual",
            "sensitive": {"pan": "RITUS1234K", "phone": "+919876543210"}
        })),
    )
    .await;
    assert_eq!(c.status, 201, "{}", c.text());
    // A pending domain challenge: it names this tenant, not a copy.
    let src_admin = login(addr, "admin@sunrise.test", "sunrise-insurance").await;
    let challenge = call(
        addr,
        "POST",
        "/domains",
        Some(&src_admin),
        Some(json!({"domain": "portal.sunrise.test"})),
    )
    .await;
    assert_eq!(challenge.status, 201, "{}", challenge.text());
    let sunrise = tenant(&source, "sunrise-insurance").await;
    assert!(sunrise.settings.get("domain_challenges").is_some());
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("b");
    let report = backup_to(data, &sunrise, &file, &key, &|_| {})
        .await
        .unwrap();
    let clone_as = || CloneAs {
        slug: "sunrise-sandbox".parse().unwrap(),
        name: None,
    };
    let (copy, _) = clone_from(data, &file, &key, clone_as(), &|_, _| {})
        .await
        .unwrap();
    assert_ne!(copy.id, sunrise.id);
    assert_eq!(copy.slug.as_str(), "sunrise-sandbox");
    assert!(copy.domains.is_empty(), "a domain names one tenant");
    assert!(
        copy.settings.get("domain_challenges").is_none(),
        "{}",
        copy.settings
    );
    assert!(matches!(copy.status, tenancy_core::TenantStatus::Active));
    // Every table, every row, under new ids.
    for (table, sum) in table_sums(data, &copy).await.unwrap() {
        assert_eq!(sum.rows, report.manifest.tables[&table].rows, "{table}");
    }
    let (src_id, src_pan, src_index) = ritu(data, &sunrise).await;
    let (copy_id, copy_pan, copy_index) = ritu(data, &copy).await;
    assert_ne!(copy_id, src_id);
    // Re-keyed: other ciphertext, other blind index, and the clone's value
    // does not open under the source tenant's keys.
    assert_ne!(copy_pan, src_pan);
    assert_ne!(copy_index, src_index);
    let sealed = insurance_agent::sensitive::SealedFields {
        pan_enc: copy_pan,
        ..Default::default()
    };
    assert!(
        insurance_agent::sensitive::open(
            data,
            sunrise.id,
            insurance_agent::id::Id(copy_id),
            &sealed
        )
        .await
        .is_err()
    );
    // The app serves the clone to the same members, values decrypting...
    let admin = login(addr, "admin@sunrise.test", "sunrise-sandbox").await;
    let r = call(
        addr,
        "GET",
        &format!("/customers/{copy_id}"),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["sensitive"]["pan"], "RITUS1234K");
    // ... searchable by the clone's own blind index ...
    let found = call(addr, "GET", "/customers?pan=RITUS1234K", Some(&admin), None).await;
    assert_eq!(found.status, 200, "{}", found.text());
    assert_eq!(found.json()["items"][0]["id"], copy_id.to_string());
    // ... and the source is untouched (its id is unknown in the clone).
    let r = call(
        addr,
        "GET",
        &format!("/customers/{src_id}"),
        Some(&src_admin),
        None,
    )
    .await;
    assert_eq!(r.json()["sensitive"]["pan"], "RITUS1234K");
    let r = call(
        addr,
        "GET",
        &format!("/customers/{src_id}"),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(r.status, 404, "{}", r.text());
    // The crossing is in both tenants' logs.
    for t in [&sunrise, &copy] {
        let mut tx = data
            .begin(&tenancy_core::TenantContext::new(t.clone()))
            .await
            .unwrap();
        let page = data
            .audit()
            .query(&mut tx, &tenancy_sqlx::AuditQuery::new().action("clone"))
            .await
            .unwrap();
        tx.commit().await.unwrap();
        assert_eq!(page.events.len(), 1, "{}", t.slug);
    }
    // A taken slug is refused.
    let again = clone_from(data, &file, &key, clone_as(), &|_, _| {})
        .await
        .unwrap_err();
    assert_eq!(again.0.status, 409, "{again}");
    // A source that is not active is not copied (out of its purge, say).
    data.transition(
        &sunrise,
        tenancy_core::lifecycle::Transition::Offboard {
            grace: chrono::Duration::days(30),
        },
        "test",
    )
    .await
    .unwrap();
    let leaving = clone_from(
        data,
        &file,
        &key,
        CloneAs {
            slug: "sunrise-leaving".parse().unwrap(),
            name: None,
        },
        &|_, _| {},
    )
    .await
    .unwrap_err();
    assert_eq!(leaving.0.status, 409, "{leaving}");
    assert!(leaving.to_string().contains("not active"), "{leaving}");
    source.running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_audit_log_is_reported_by_the_backup() {
    let key = BackupKey::new([2u8; 32]);
    let source = start(Backend::Postgres).await;
    let sunrise = tenant(&source, "sunrise-insurance").await;
    let agent = login(
        source.running.addr,
        "agent@sunrise.test",
        "sunrise-insurance",
    )
    .await;
    let c = call(
        source.running.addr,
        "POST",
        "/customers",
        Some(&agent),
        Some(json!({"first_name": "Asha", "last_name": "Rao", "customer_type": "individual"})),
    )
    .await;
    assert_eq!(c.status, 201, "{}", c.text());
    // As the superuser: one event's actor changed in place.
    let su = sqlx::PgPool::connect(&source.pg.as_ref().unwrap().admin_url)
        .await
        .unwrap();
    let changed = sqlx::query(
        "UPDATE tenancy.audit_log SET actor_id = 'someone-else' \
         WHERE tenant_id = $1 AND seq = 1",
    )
    .bind(sunrise.id.as_uuid())
    .execute(&su)
    .await
    .unwrap()
    .rows_affected();
    assert_eq!(changed, 1);
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("b");
    backup_to(&source.running.data, &sunrise, &file, &key, &|_| {})
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    copy_keys(source._dir.path(), dir.path());
    let target = Data::open(dir.path()).await.unwrap();
    let (restored, _) = restore_from(&target, &file, &key, RestoreOptions::default(), &|_, _| {})
        .await
        .unwrap();
    // Re-linked under the target's key the events would verify: the
    // restore event keeps the verdict the backup sealed.
    let event = last_event(&target, &restored, "restore").await;
    assert_eq!(event["source_chain"]["intact"], false, "{event}");
    assert!(
        event["source_chain"]["breaks"][0]
            .as_str()
            .unwrap()
            .contains("Modified"),
        "{event}"
    );
    source.running.stop().await.unwrap();
}
