//! The audit log in PostgreSQL: append-only under RLS, hash-chained per
//! tenant, written in the business transaction, queryable.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use chrono::{Duration, Utc};
use tenancy_core::audit::chain::ChainBreak;
use tenancy_core::audit::{Action, AuditEvent, AuditSink, ComplianceRules};
use tenancy_core::{Tenant, TenantContext, TenantId};
use tenancy_sqlx::{AuditQuery, DbError, PgAuditLog, TenantDb, migrate};
use tenancy_testkit::TestDb;

const ROOT: [u8; 32] = [42u8; 32];

async fn setup() -> (TestDb, TenantDb, PgAuditLog) {
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
    let log = PgAuditLog::new(db.clone(), ROOT).with_rules(
        ComplianceRules::default()
            .pii_field("customers.pan")
            .financial_resource("payments")
            .bulk_threshold(100),
    );
    (env, db, log)
}

fn ctx() -> TenantContext {
    let id = TenantId::new_v4();
    TenantContext::new(Tenant::new(
        id,
        format!("t-{}", &id.to_string()[..8]).parse().unwrap(),
        "T",
    ))
}

async fn seed(log: &PgAuditLog, t: TenantId, n: u64) {
    for i in 1..=n {
        log.record(
            AuditEvent::user(t, "agent-1", Action::READ, "customers")
                .with_resource_id(i)
                .with_details(serde_json::json!({"i": i, "note": "seed", "nested": {"b": 1, "a": [1.5, null]}})),
        )
        .await
        .unwrap();
    }
}

#[tokio::test]
async fn events_commit_and_roll_back_with_the_change_they_describe() {
    let (_env, db, log) = setup().await;
    let c = ctx();
    let mut tx = db.begin(&c).await.unwrap();
    log.append(
        &mut tx,
        AuditEvent::from_context(&c, Action::DELETE, "policies").with_resource_id(1),
    )
    .await
    .unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(
        log.query(c.tenant_id(), &AuditQuery::new())
            .await
            .unwrap()
            .events
            .len(),
        0
    );

    let mut tx = db.begin(&c).await.unwrap();
    let seq = log
        .append(
            &mut tx,
            AuditEvent::from_context(&c, Action::DELETE, "policies").with_resource_id(1),
        )
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(seq, 1);
    let page = log.query(c.tenant_id(), &AuditQuery::new()).await.unwrap();
    assert_eq!(page.events.len(), 1);
    assert!(page.events[0].1.flags.high_risk, "a delete is high risk");

    // An event of another tenant cannot ride in this transaction.
    let mut tx = db.begin(&c).await.unwrap();
    let foreign = AuditEvent::system(TenantId::new_v4(), "x", Action::READ, "r");
    assert!(matches!(
        log.append(&mut tx, foreign).await,
        Err(DbError::Mismatch(_))
    ));
}

#[tokio::test]
async fn concurrent_appends_keep_one_intact_chain() {
    let (_env, _db, log) = setup().await;
    let t = TenantId::new_v4();
    let mut tasks = Vec::new();
    for w in 0..8 {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..10 {
                log.record(
                    AuditEvent::system(t, &format!("worker-{w}"), Action::UPDATE, "things")
                        .with_resource_id(i),
                )
                .await
                .unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let report = log.verify_chain(t).await.unwrap();
    assert!(report.is_intact(), "{report:?}");
    assert_eq!(report.rows, 80);
    assert_eq!(report.head.unwrap().0, 80);
}

/// Runs `sql` as the table owner, lifting FORCE ROW LEVEL SECURITY for the
/// duration — what a DBA or an attacker with the owner's password can do.
async fn tamper(env: &TestDb, sql: &str, t: TenantId) {
    let owner = env.owner_pool(1).await.unwrap();
    let mut tx = owner.begin().await.unwrap();
    sqlx::query("ALTER TABLE tenancy.audit_log NO FORCE ROW LEVEL SECURITY")
        .execute(&mut *tx)
        .await
        .unwrap();
    let done = sqlx::query(sql)
        .bind(t.as_uuid())
        .execute(&mut *tx)
        .await
        .unwrap();
    assert_eq!(done.rows_affected(), 1, "{sql}");
    sqlx::query("ALTER TABLE tenancy.audit_log FORCE ROW LEVEL SECURITY")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
}

#[tokio::test]
async fn verification_detects_owner_updates_deletes_and_inserts() {
    let (env, _db, log) = setup().await;

    let updated = TenantId::new_v4();
    seed(&log, updated, 5).await;
    assert!(
        log.verify_chain(updated).await.unwrap().is_intact(),
        "intact after a jsonb round trip"
    );
    tamper(
        &env,
        "UPDATE tenancy.audit_log SET actor_id = 'someone-else' WHERE tenant_id = $1 AND seq = 3",
        updated,
    )
    .await;
    assert_eq!(
        log.verify_chain(updated).await.unwrap().breaks,
        vec![ChainBreak::Modified { seq: 3 }]
    );

    let deleted = TenantId::new_v4();
    seed(&log, deleted, 5).await;
    tamper(
        &env,
        "DELETE FROM tenancy.audit_log WHERE tenant_id = $1 AND seq = 2",
        deleted,
    )
    .await;
    let breaks = log.verify_chain(deleted).await.unwrap().breaks;
    assert!(
        breaks.contains(&ChainBreak::Missing { after: 1, next: 3 }),
        "{breaks:?}"
    );

    let inserted = TenantId::new_v4();
    seed(&log, inserted, 5).await;
    // The intruder copies the last row's hash as prev_hash and makes up a hash.
    tamper(
        &env,
        "INSERT INTO tenancy.audit_log (tenant_id, seq, at, actor_kind, actor_id, action, resource_type, prev_hash, hash) \
         SELECT tenant_id, 6, now(), 'user', 'intruder', 'read', 'customers', hash, sha256(hash) \
         FROM tenancy.audit_log WHERE tenant_id = $1 AND seq = 5",
        inserted,
    )
    .await;
    assert_eq!(
        log.verify_chain(inserted).await.unwrap().breaks,
        vec![ChainBreak::Modified { seq: 6 }]
    );

    let edited_details = TenantId::new_v4();
    seed(&log, edited_details, 3).await;
    tamper(&env, "UPDATE tenancy.audit_log SET details = jsonb_set(details, '{note}', '\"edited\"') WHERE tenant_id = $1 AND seq = 1", edited_details).await;
    assert_eq!(
        log.verify_chain(edited_details).await.unwrap().breaks,
        vec![ChainBreak::Modified { seq: 1 }]
    );

    // Deleting the newest rows leaves a valid, shorter chain: only a head
    // recorded earlier, outside the database, shows it.
    let truncated = TenantId::new_v4();
    seed(&log, truncated, 5).await;
    let anchor = log.verify_chain(truncated).await.unwrap().anchor().unwrap();
    assert_eq!(anchor.seq, 5);
    let stored: tenancy_core::audit::chain::Anchor = anchor.to_string().parse().unwrap();
    tamper(
        &env,
        "DELETE FROM tenancy.audit_log WHERE tenant_id = $1 AND seq = 5",
        truncated,
    )
    .await;
    let report = log.verify_chain(truncated).await.unwrap();
    assert!(report.is_intact(), "the chain alone cannot tell");
    assert_eq!(
        log.verify_chain_anchored(truncated, &[stored])
            .await
            .unwrap()
            .breaks,
        vec![ChainBreak::Truncated {
            anchored: 5,
            head: 4
        }]
    );
    // The log grows again over the removed position: still a valid chain,
    // but the row at the anchor is another one.
    seed(&log, truncated, 2).await;
    assert!(log.verify_chain(truncated).await.unwrap().is_intact());
    assert_eq!(
        log.verify_chain_anchored(truncated, &[stored])
            .await
            .unwrap()
            .breaks,
        vec![ChainBreak::AnchorMismatch { seq: 5 }]
    );
    // A later, longer chain still satisfies an older anchor.
    let intact = TenantId::new_v4();
    seed(&log, intact, 2).await;
    let early = log.verify_chain(intact).await.unwrap().anchor().unwrap();
    seed(&log, intact, 2).await;
    assert!(
        log.verify_chain_anchored(intact, &[early])
            .await
            .unwrap()
            .is_intact()
    );

    // Someone with the table but without the application's root secret.
    let other_root = PgAuditLog::new(
        TenantDb::connect(&env.app_url, env.seal_key().await.unwrap())
            .await
            .unwrap(),
        [1u8; 32],
    );
    assert!(!other_root.verify_chain(updated).await.unwrap().is_intact());
}

#[tokio::test]
async fn the_application_role_cannot_change_or_delete_audit_rows_nor_see_other_tenants() {
    let (env, db, log) = setup().await;
    let (a, b) = (ctx(), ctx());
    seed(&log, a.tenant_id(), 2).await;
    seed(&log, b.tenant_id(), 1).await;

    for sql in [
        "UPDATE tenancy.audit_log SET action = 'x'",
        "DELETE FROM tenancy.audit_log",
        "TRUNCATE tenancy.audit_log",
    ] {
        let mut tx = db.begin(&a).await.unwrap();
        let err = sqlx::query(sql).execute(&mut *tx).await.unwrap_err();
        let code = err
            .as_database_error()
            .and_then(sqlx::error::DatabaseError::code)
            .map(|c| c.to_string());
        assert_eq!(code.as_deref(), Some("42501"), "{sql}: {err}");
    }

    let mut tx = db.begin(&a).await.unwrap();
    let visible: i64 = sqlx::query_scalar("SELECT count(*) FROM tenancy.audit_log")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(visible, 2, "only a's rows");
    // Inserting a row for b from a's transaction violates the policy.
    let err = sqlx::query(
        "INSERT INTO tenancy.audit_log (tenant_id, seq, at, actor_kind, actor_id, action, resource_type, prev_hash, hash) \
         VALUES ($1, 99, now(), 'user', 'u', 'read', 'r', '\\x00'::bytea || repeat('0', 31)::bytea, repeat('0', 32)::bytea)",
    )
    .bind(b.tenant_id().as_uuid())
    .execute(&mut *tx)
    .await
    .unwrap_err();
    assert_eq!(
        err.as_database_error()
            .and_then(sqlx::error::DatabaseError::code)
            .as_deref(),
        Some("42501"),
        "{err}"
    );
    drop(tx);

    let app = env.app_pool(1).await.unwrap();
    let none: i64 = sqlx::query_scalar("SELECT count(*) FROM tenancy.audit_log")
        .fetch_one(&app)
        .await
        .unwrap();
    assert_eq!(none, 0, "no tenant, no rows");
}

#[tokio::test]
async fn queries_filter_and_paginate_and_reports_summarise() {
    let (_env, _db, log) = setup().await;
    let t = TenantId::new_v4();
    let now = Utc::now();
    let ip = "203.0.113.7".parse().unwrap();
    for i in 0..25 {
        log.record(
            AuditEvent::user(
                t,
                if i % 5 == 0 { "admin" } else { "agent-1" },
                Action::READ,
                "customers",
            )
            .with_resource_id(i)
            .with_ip(ip)
            .with_user_agent("curl/8"),
        )
        .await
        .unwrap();
    }
    log.record(
        AuditEvent::user(t, "agent-1", Action::EXPORT, "customers")
            .with_fields(["customers.pan"])
            .with_record_count(500),
    )
    .await
    .unwrap();
    log.record(AuditEvent::user(t, "agent-2", Action::READ, "payments").with_resource_id("p1"))
        .await
        .unwrap();
    log.record(AuditEvent::user(t, "stranger", Action::DENIED, "session"))
        .await
        .unwrap();
    log.record(AuditEvent::user(t, "admin", Action::BULK_DELETE, "policies").with_record_count(3))
        .await
        .unwrap();

    // Pages of 10 newest first, then the rest, covering all 29 once.
    let mut seen = Vec::new();
    let mut q = AuditQuery::new().limit(10);
    loop {
        let page = log.query(t, &q).await.unwrap();
        seen.extend(page.events.iter().map(|(s, _)| *s));
        match page.next {
            Some(n) => q = q.before(n),
            None => break,
        }
    }
    assert_eq!(seen, (1..=29).rev().collect::<Vec<u64>>());

    let admin_reads = log
        .query(t, &AuditQuery::new().actor("admin").action(Action::READ))
        .await
        .unwrap();
    assert_eq!(admin_reads.events.len(), 5);
    assert!(
        admin_reads
            .events
            .iter()
            .all(|(_, e)| e.ip == Some(ip) && e.user_agent.as_deref() == Some("curl/8"))
    );
    let payments = log
        .query(t, &AuditQuery::new().resource_type("payments"))
        .await
        .unwrap();
    assert_eq!(payments.events.len(), 1);
    assert!(payments.events[0].1.flags.financial);
    let future = log
        .query(
            t,
            &AuditQuery::new().between(now + Duration::hours(1), now + Duration::hours(2)),
        )
        .await
        .unwrap();
    assert!(future.events.is_empty());
    let pii = log.query(t, &AuditQuery::new().flag("pii")).await.unwrap();
    assert_eq!(pii.events.len(), 1);

    let (from, until) = (now - Duration::hours(1), now + Duration::hours(1));
    let access = log.data_access_report(t, from, until).await.unwrap();
    assert_eq!(access.len(), 1);
    assert!(access[0].1.flags.pii && access[0].1.flags.bulk_export && access[0].1.flags.high_risk);
    let incidents = log.security_incidents(t, from, until).await.unwrap();
    let actions: Vec<&str> = incidents.iter().map(|(_, e)| e.action.as_str()).collect();
    assert_eq!(
        actions,
        vec![Action::EXPORT, Action::DENIED, Action::BULK_DELETE]
    );
    let activity = log.user_activity(t, from, until).await.unwrap();
    assert_eq!(
        (
            activity[0].actor.as_str(),
            activity[0].action.as_str(),
            activity[0].count
        ),
        ("agent-1", "read", 20)
    );
    assert!(log.verify_chain(t).await.unwrap().is_intact());
}
