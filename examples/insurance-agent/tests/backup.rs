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
use insurance_agent::backup::{RestoreOptions, backup_to, restore_from, table_sums};
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
        restore_from(&target, &file, &key, RestoreOptions::default(), &|_| {})
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
    assert_eq!(audit.live_rows, logged);
    // A live tenant is not overwritten without `replace`...
    let again = restore_from(&target, &file, &key, RestoreOptions::default(), &|_| {})
        .await
        .unwrap_err();
    assert_eq!(again.0.status, 409, "{again}");
    // ... and is with it, to the same checksums.
    restore_from(
        &target,
        &file,
        &key,
        RestoreOptions { replace: true },
        &|_| {},
    )
    .await
    .unwrap();
    for (table, sum) in table_sums(&target, &restored).await.unwrap() {
        assert_eq!(Some(&sum), report.manifest.tables.get(&table), "{table}");
    }
    // The live tenant's log is append-only: kept, not doubled.
    assert_eq!(audit_of(&target, &restored).await.live_rows, logged);
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
    let pg = Data::open_postgres(pg_dir.path(), &urls).await.unwrap();
    let (in_pg, _) = restore_from(&pg, &back, &key, RestoreOptions::default(), &|_| {})
        .await
        .unwrap();
    assert_eq!(in_pg.placement, tenancy_core::Placement::Shared);
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
        let err = restore_from(&target, &f, &key, RestoreOptions::default(), &|_| {})
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
        &|_| {},
    )
    .await
    .unwrap_err();
    assert_eq!(err.0.status, 422);
    source.running.stop().await.unwrap();
}
