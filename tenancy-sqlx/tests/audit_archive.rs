//! Audit retention and archival on PostgreSQL and on SQLite tenant files:
//! events older than the minimum move into sealed segments and leave the
//! live log, segments older than the maximum are destroyed, and the chain
//! still verifies — live from the checkpoint, whole across archive and live
//! — while truncation and tampering are still found. On PostgreSQL the
//! application role can neither prune nor move a checkpoint, and even the
//! owner cannot delete past the checkpoint; the superuser (the control) can,
//! and verification then reports it.
#![cfg(feature = "sqlite")]
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use chrono::{DateTime, Duration, Utc};
use tenancy_core::audit::archive::{ArchiveDir, Retention};
use tenancy_core::audit::chain::{Anchor, ChainBreak};
use tenancy_core::audit::{Action, AuditEvent};
use tenancy_core::{Placement, Tenant, TenantContext, TenantId};
use tenancy_sqlx::sqlite::{SqliteAuditLog, SqliteTenantDb};
use tenancy_sqlx::tenant_migrate::TenantMigrator;
use tenancy_sqlx::{PgAuditLog, TenantDb, migrate};
use tenancy_testkit::TestDb;

const ROOT: [u8; 32] = [17u8; 32];

/// 40 events, one a day: event `i` is `40 - i` days old, less an hour (so
/// none sits on a retention boundary).
fn events(t: TenantId, now: DateTime<Utc>) -> Vec<AuditEvent> {
    (1..=40)
        .map(|i| {
            AuditEvent::user(t, "agent-1", Action::READ, "customers")
                .with_resource_id(i)
                .at(now - Duration::days(40 - i) + Duration::hours(1))
        })
        .collect()
}

/// Keep 10 days live, 30 in all.
fn retention() -> Retention {
    Retention::days(10, Some(30)).unwrap()
}

fn ctx(id: TenantId) -> TenantContext {
    TenantContext::new(Tenant::new(
        id,
        format!("t-{}", &id.to_string()[..8]).parse().unwrap(),
        "T",
    ))
}

async fn pg_setup() -> (TestDb, TenantDb, PgAuditLog, sqlx::PgPool, sqlx::PgPool) {
    let env = TestDb::from_env().unwrap();
    let owner = env.owner_pool(2).await.unwrap();
    {
        let mut conn = owner.acquire().await.unwrap();
        migrate::run(&mut conn).await.unwrap();
        migrate::grant_system_read(&mut conn, "tenancy_app")
            .await
            .unwrap();
    }
    let db = TenantDb::connect(&env.app_url, env.seal_key().await.unwrap())
        .await
        .unwrap();
    let admin = env.admin_pool(1).await.unwrap();
    let log = PgAuditLog::new(db.clone(), ROOT);
    (env, db, log, owner, admin)
}

async fn pg_seeded(db: &TenantDb, log: &PgAuditLog, now: DateTime<Utc>) -> (TenantId, Anchor) {
    let t = TenantId::new_v4();
    let c = ctx(t);
    let mut tx = db.begin(&c).await.unwrap();
    for e in events(t, now) {
        log.append(&mut tx, e).await.unwrap();
    }
    tx.commit().await.unwrap();
    let anchor = log.verify_chain(t).await.unwrap().anchor().unwrap();
    (t, anchor)
}

#[tokio::test]
async fn postgres_archives_prunes_and_still_verifies() {
    let (_env, db, log, owner, admin) = pg_setup().await;
    let now = Utc::now();
    let (t, anchor) = pg_seeded(&db, &log, now).await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = ArchiveDir::new(tmp.path());

    let run = log
        .archive(&owner, t, &retention(), &dir, now, 8)
        .await
        .unwrap();
    // Events 1..=29 are older than 10 days: 4 segments (8, 8, 8, 5); the
    // first segment's events are all older than 30 days: destroyed.
    assert_eq!(
        (run.segments, run.archived_rows, run.destroyed_rows),
        (4, 29, 8)
    );
    assert_eq!(run.checkpoint.unwrap().seq, 29);
    let live: i64 =
        sqlx::query_scalar("SELECT count(*) FROM tenancy.audit_log WHERE tenant_id = $1")
            .bind(t.as_uuid())
            .fetch_one(&admin)
            .await
            .unwrap();
    assert_eq!(live, 11, "the live log keeps the last 10 days");

    // The live log verifies from the checkpoint, against the earlier anchor.
    let report = log.verify_chain_anchored(t, &[anchor]).await.unwrap();
    assert!(report.is_intact(), "{:?}", report.breaks);
    assert_eq!(report.rows, 11);
    // The whole retained chain verifies too.
    let whole = log.verify_archive(t, &dir, &[anchor]).await.unwrap();
    assert!(whole.is_intact(), "{:?}", whole.chain.breaks);
    assert_eq!(
        (whole.floor, whole.archived_rows, whole.live_rows),
        (8, 21, 11)
    );
    // Appending continues the chain; a second run has nothing to do.
    let mut tx = db.begin(&ctx(t)).await.unwrap();
    assert_eq!(
        log.append(
            &mut tx,
            AuditEvent::user(t, "u", Action::CREATE, "customers")
        )
        .await
        .unwrap(),
        41
    );
    tx.commit().await.unwrap();
    let again = log
        .archive(&owner, t, &retention(), &dir, now, 8)
        .await
        .unwrap();
    assert_eq!(again.archived_rows, 0);
    assert!(log.verify_archive(t, &dir, &[]).await.unwrap().is_intact());

    // Hostile SQL in the tenant's own transaction: no pruning, no moving
    // the checkpoint.
    for sql in [
        "DELETE FROM tenancy.audit_log WHERE tenant_id = (SELECT tenancy.tenant())",
        "UPDATE tenancy.audit_checkpoints SET seq = 40",
        "DELETE FROM tenancy.audit_checkpoints",
        "INSERT INTO tenancy.audit_checkpoints (tenant_id, seq, hash, mac) \
         VALUES ((SELECT tenancy.tenant()), 40, '\\x00', '\\x00')",
    ] {
        let mut tx = db.begin(&ctx(t)).await.unwrap();
        let r = sqlx::query(sql).execute(&mut *tx).await;
        assert!(r.is_err(), "the application role ran: {sql}");
    }
    // The owner cannot delete a live row (past the checkpoint)...
    let owner_delete =
        sqlx::query("DELETE FROM tenancy.audit_log WHERE tenant_id = $1 AND seq = 35")
            .bind(t.as_uuid())
            .execute(&owner)
            .await
            .unwrap();
    assert_eq!(owner_delete.rows_affected(), 0);
    // ... nor move the checkpoint back.
    assert!(
        sqlx::query("UPDATE tenancy.audit_checkpoints SET seq = 5 WHERE tenant_id = $1")
            .bind(t.as_uuid())
            .execute(&owner)
            .await
            .is_err()
    );
    // Control: the superuser can delete the oldest live row, and the live
    // log no longer follows its checkpoint.
    let gone = sqlx::query("DELETE FROM tenancy.audit_log WHERE tenant_id = $1 AND seq = 30")
        .bind(t.as_uuid())
        .execute(&admin)
        .await
        .unwrap();
    assert_eq!(gone.rows_affected(), 1);
    let report = log.verify_chain(t).await.unwrap();
    assert!(
        report.breaks.contains(&ChainBreak::Missing {
            after: 29,
            next: 31
        }),
        "{:?}",
        report.breaks
    );
    // The newest row removed: truncated against an anchor taken before.
    let head = Anchor {
        seq: 41,
        hash: log.verify_chain(t).await.unwrap().head.unwrap().1,
    };
    sqlx::query("DELETE FROM tenancy.audit_log WHERE tenant_id = $1 AND seq = 41")
        .bind(t.as_uuid())
        .execute(&admin)
        .await
        .unwrap();
    let report = log.verify_archive(t, &dir, &[head]).await.unwrap();
    assert!(report.chain.breaks.contains(&ChainBreak::Truncated {
        anchored: 41,
        head: 40
    }));
    // A forged checkpoint (its MAC cannot be made without the chain key).
    sqlx::query("UPDATE tenancy.audit_checkpoints SET mac = $2 WHERE tenant_id = $1")
        .bind(t.as_uuid())
        .bind([0u8; 32].as_slice())
        .execute(&admin)
        .await
        .unwrap();
    let report = log.verify_chain(t).await.unwrap();
    assert!(report.breaks.contains(&ChainBreak::Checkpoint { seq: 29 }));
    assert!(
        log.archive(&owner, t, &retention(), &dir, now, 8)
            .await
            .is_err()
    );
}

#[tokio::test]
async fn postgres_refuses_to_archive_a_broken_chain() {
    let (_env, db, log, owner, admin) = pg_setup().await;
    let now = Utc::now();
    let (t, _) = pg_seeded(&db, &log, now).await;
    sqlx::query("UPDATE tenancy.audit_log SET action = 'login' WHERE tenant_id = $1 AND seq = 3")
        .bind(t.as_uuid())
        .execute(&admin)
        .await
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = ArchiveDir::new(tmp.path());
    let err = log
        .archive(&owner, t, &retention(), &dir, now, 100)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("Modified { seq: 3 }"), "{err}");
    assert!(dir.paths(t).unwrap().is_empty(), "nothing sealed");
}

#[tokio::test]
async fn sqlite_archives_prunes_and_still_verifies() {
    let tmp = tempfile::tempdir().unwrap();
    let db = SqliteTenantDb::new(tmp.path().join("tenants"));
    let t = TenantId::new_v4();
    let c = TenantContext::new(
        Tenant::new(t, "archive-a".parse().unwrap(), "A")
            .with_placement(Placement::database(&Placement::name_for(t)).unwrap()),
    );
    db.provision(c.tenant(), &TenantMigrator::new(Vec::new()).unwrap())
        .await
        .unwrap();
    let log = SqliteAuditLog::new(ROOT);
    let now = Utc::now();
    let mut tx = db.begin_immediate(&c).await.unwrap();
    for e in events(t, now) {
        log.append(&mut tx, e).await.unwrap();
    }
    let anchor = log.verify_chain(&mut tx).await.unwrap().anchor().unwrap();
    tx.commit().await.unwrap();
    let dir = ArchiveDir::new(tmp.path().join("archive"));

    let mut tx = db.begin_immediate(&c).await.unwrap();
    let run = log
        .archive(&mut tx, &retention(), &dir, now, 8)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    // Expiry waits for the archival to commit: nothing destroyed yet...
    assert_eq!(
        (run.segments, run.archived_rows, run.destroyed_rows),
        (4, 29, 0)
    );
    // ... and the next run destroys the expired segment.
    let mut tx = db.begin_immediate(&c).await.unwrap();
    let run = log
        .archive(&mut tx, &retention(), &dir, now, 8)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        (run.segments, run.archived_rows, run.destroyed_rows),
        (0, 0, 8)
    );

    let mut tx = db.begin_immediate(&c).await.unwrap();
    let report = log.verify_chain_anchored(&mut tx, &[anchor]).await.unwrap();
    assert!(report.is_intact(), "{:?}", report.breaks);
    let whole = log.verify_archive(&mut tx, &dir, &[anchor]).await.unwrap();
    assert!(whole.is_intact(), "{:?}", whole.chain.breaks);
    assert_eq!(
        (whole.floor, whole.archived_rows, whole.live_rows),
        (8, 21, 11)
    );
    assert_eq!(
        log.append(&mut tx, AuditEvent::user(t, "u", Action::CREATE, "x"))
            .await
            .unwrap(),
        41
    );
    // The file's triggers refuse deleting a live row or moving the
    // checkpoint back; archived rows are already gone.
    for sql in [
        "DELETE FROM tenancy_audit_log WHERE seq = 35",
        "UPDATE tenancy_audit_checkpoint SET seq = 5",
        "DELETE FROM tenancy_audit_checkpoint",
    ] {
        assert!(sqlx::query(sql).execute(&mut *tx).await.is_err(), "{sql}");
    }
    tx.commit().await.unwrap();

    // Control: with the trigger dropped (anyone who can edit the file), the
    // deletion happens — and verification reports it.
    let file = tmp
        .path()
        .join("tenants")
        .join(format!("{}.sqlite3", Placement::name_for(t)));
    let pool =
        sqlx::SqlitePool::connect_with(sqlx::sqlite::SqliteConnectOptions::new().filename(&file))
            .await
            .unwrap();
    sqlx::raw_sql(
        "DROP TRIGGER tenancy_audit_log_no_delete; DELETE FROM tenancy_audit_log WHERE seq = 30",
    )
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
    let mut tx = db.begin_immediate(&c).await.unwrap();
    let report = log.verify_archive(&mut tx, &dir, &[]).await.unwrap();
    assert!(report.chain.breaks.contains(&ChainBreak::Missing {
        after: 29,
        next: 31
    }));
    // A removed segment is found too.
    let (_, _, p) = dir.paths(t).unwrap().remove(1);
    std::fs::remove_file(p).unwrap();
    let report = log.verify_archive(&mut tx, &dir, &[]).await.unwrap();
    assert!(
        report
            .chain
            .breaks
            .iter()
            .any(|b| matches!(b, ChainBreak::Missing { after: 16, .. })),
        "{:?}",
        report.chain.breaks
    );
    tx.commit().await.unwrap();
}
