//! The transactional outbox on PostgreSQL, SQLite and memory: the shared
//! delivery table (`tenancy_testkit::outbox::delivery`: a killed deliverer,
//! retries, concurrent deliverers, signatures), messages that commit only
//! with their change, and what SQL in a tenant's transaction cannot do to
//! the outbox.
#![cfg(feature = "sqlite")]
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::sync::Arc;

use async_trait::async_trait;
use tenancy_core::outbox::{MemoryOutbox, OutboxMessage, OutboxStore};
use tenancy_core::store::{InMemoryTenantStore, TenantUpdate, TenantWriter, WriteError};
use tenancy_core::{PlanId, Tenant, TenantContext, TenantId};
use tenancy_sqlx::sqlite::SqliteControl;
use tenancy_sqlx::{PgOutbox, PgTenantStore, TenantDb, migrate};
use tenancy_testkit::TestDb;
use tenancy_testkit::outbox::{DeliveryFigures, OutboxWriter, delivery};

fn tenant(slug: &str) -> Tenant {
    let id = TenantId::new_v4();
    let slug = format!("{slug}-{}", &id.to_string()[..8]);
    Tenant::new(id, slug.parse().unwrap(), &slug)
}

fn channel() -> String {
    format!("test-{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

#[allow(clippy::print_stdout)] // the figures go in the test log
fn check(path: &str, f: DeliveryFigures) {
    println!(
        "outbox: path={path} killed_requests={} killed_effects={} ignoring_keys={} retried_requests={} concurrent_duplicates={}",
        f.killed_requests,
        f.killed_effects,
        f.killed_effects_ignoring_keys,
        f.retried_requests,
        f.concurrent_duplicates
    );
    assert_eq!(f.killed_requests, 2, "redelivered once after the kill");
    assert_eq!(f.killed_effects, 1, "exactly once in effect");
    assert_eq!(
        f.killed_effects_ignoring_keys, 2,
        "the keyless twin applies twice"
    );
    assert_eq!(f.retried_requests, 3);
    assert_eq!(f.concurrent_duplicates, 0);
}

/// Application code's path on PostgreSQL: a tenant transaction.
struct PgWriter(TenantDb);

#[async_trait]
impl OutboxWriter for PgWriter {
    async fn write(&self, m: &OutboxMessage) -> Result<(), String> {
        let t = Tenant::new(m.tenant, "writer".parse().unwrap(), "w");
        let mut tx = self
            .0
            .begin(&TenantContext::new(Arc::new(t)))
            .await
            .map_err(|e| e.to_string())?;
        tenancy_sqlx::outbox::enqueue(&mut tx, m)
            .await
            .map_err(|e| e.to_string())?;
        tx.commit().await.map_err(|e| e.to_string())
    }
}

async fn postgres() -> (sqlx::PgPool, TenantDb) {
    let env = TestDb::from_env().unwrap();
    let owner = env.owner_pool(4).await.unwrap();
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
    (owner, db)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn delivery_on_postgres() {
    let (owner, db) = postgres().await;
    let t = tenant("outbox");
    PgTenantStore::new(owner.clone()).create(&t).await.unwrap();
    let figures = delivery(
        Arc::new(PgOutbox::new(owner)),
        &PgWriter(db),
        t.id,
        &channel(),
    )
    .await
    .unwrap();
    check("postgres", figures);
}

struct SqliteWriter(SqliteControl);

#[async_trait]
impl OutboxWriter for SqliteWriter {
    async fn write(&self, m: &OutboxMessage) -> Result<(), String> {
        let mut tx = self.0.pool().begin().await.map_err(|e| e.to_string())?;
        tenancy_sqlx::sqlite::outbox::enqueue(&mut tx, m)
            .await
            .map_err(|e| e.to_string())?;
        tx.commit().await.map_err(|e| e.to_string())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn delivery_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let control = SqliteControl::open(dir.path().join("c.sqlite3"))
        .await
        .unwrap();
    let figures = delivery(
        Arc::new(control.outbox()),
        &SqliteWriter(control),
        TenantId::new_v4(),
        &channel(),
    )
    .await
    .unwrap();
    check("sqlite", figures);
}

struct MemoryWriter(Arc<MemoryOutbox>);

#[async_trait]
impl OutboxWriter for MemoryWriter {
    async fn write(&self, m: &OutboxMessage) -> Result<(), String> {
        self.0.enqueue(m.clone());
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn delivery_in_memory() {
    let outbox = Arc::new(MemoryOutbox::new());
    let figures = delivery(
        outbox.clone(),
        &MemoryWriter(outbox),
        TenantId::new_v4(),
        &channel(),
    )
    .await
    .unwrap();
    check("memory", figures);
}

/// A message emitted with an update exists exactly when the update was
/// applied, on every store.
async fn emitted_with_the_change(
    writer: &dyn TenantWriter,
    outbox: &dyn OutboxStore,
    t: &Tenant,
    channel: &str,
) {
    writer.create(t).await.unwrap();
    let read = writer.by_id(t.id).await.unwrap().unwrap();
    let message = |to: &str| {
        OutboxMessage::new(
            t.id,
            channel,
            "plan.changed",
            serde_json::json!({ "to": to }),
        )
    };
    writer
        .update(
            t.id,
            &TenantUpdate::new()
                .expect_version(read.version)
                .plan(Some(PlanId::new("pro")))
                .emit(message("pro")),
        )
        .await
        .unwrap();
    assert_eq!(outbox.pending(channel).await.unwrap(), 1);
    // Refused (stale version): neither the change nor its message.
    let stale = writer
        .update(
            t.id,
            &TenantUpdate::new()
                .expect_version(read.version)
                .plan(Some(PlanId::new("enterprise")))
                .emit(message("enterprise")),
        )
        .await;
    assert!(
        matches!(stale, Err(WriteError::Conflict { .. })),
        "{stale:?}"
    );
    // Refused (a malformed message): neither either.
    let bad = writer
        .update(
            t.id,
            &TenantUpdate::new()
                .plan(Some(PlanId::new("free")))
                .emit(OutboxMessage::new(
                    t.id,
                    channel,
                    "Not A Topic",
                    serde_json::Value::Null,
                )),
        )
        .await;
    assert!(bad.is_err(), "{bad:?}");
    let now = writer.by_id(t.id).await.unwrap().unwrap();
    assert_eq!(now.plan, Some(PlanId::new("pro")));
    assert_eq!(outbox.pending(channel).await.unwrap(), 1);
    let claimed = outbox
        .claim(channel, 10, std::time::Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].message.payload["to"], "pro");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_commit_only_with_their_change() {
    let (owner, _db) = postgres().await;
    emitted_with_the_change(
        &PgTenantStore::new(owner.clone()),
        &PgOutbox::new(owner),
        &tenant("emit-pg"),
        &channel(),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let control = SqliteControl::open(dir.path().join("c.sqlite3"))
        .await
        .unwrap();
    emitted_with_the_change(
        &control.tenants(),
        &control.outbox(),
        &tenant("emit-sqlite"),
        &channel(),
    )
    .await;
    let memory = InMemoryTenantStore::new();
    let outbox = memory.outbox();
    emitted_with_the_change(&memory, outbox.as_ref(), &tenant("emit-memory"), &channel()).await;
}

/// Hostile SQL inside tenant A's transaction cannot write a message for
/// tenant B, read anyone's messages, or mark one delivered to suppress it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_in_a_tenant_transaction_cannot_touch_other_messages() {
    let (owner, db) = postgres().await;
    let a = tenant("outbox-a");
    let b = tenant("outbox-b");
    let store = PgTenantStore::new(owner.clone());
    store.create(&a).await.unwrap();
    store.create(&b).await.unwrap();
    let channel = channel();
    let relay = PgOutbox::new(owner.clone());
    // B's genuine message.
    PgWriter(db.clone())
        .write(&OutboxMessage::new(
            b.id,
            &channel,
            "usage.recorded",
            serde_json::json!({}),
        ))
        .await
        .unwrap();
    let ctx = TenantContext::new(Arc::new(a.clone()));
    // Only the granted columns and an application topic: row-level
    // security is what refuses it.
    let forge = format!(
        "INSERT INTO tenancy.outbox (id, tenant_id, channel, topic, payload) \
         VALUES (gen_random_uuid(), '{}', '{channel}', 'usage.recorded', '{{}}')",
        b.id
    );
    let attempts = [
        ("forge for B", forge.clone()),
        ("read", "SELECT count(*) FROM tenancy.outbox".to_owned()),
        (
            "suppress",
            format!("UPDATE tenancy.outbox SET delivered_at = now() WHERE channel = '{channel}'"),
        ),
        (
            "delete",
            format!("DELETE FROM tenancy.outbox WHERE channel = '{channel}'"),
        ),
        (
            // Its own row, aged and worn out, to sort first and stall the relay.
            "pre-age own row",
            format!(
                "INSERT INTO tenancy.outbox (id, tenant_id, channel, topic, payload, created_at, attempts) \
                 VALUES (gen_random_uuid(), '{}', '{channel}', 'usage.recorded', '{{}}', '-infinity', 2147483647)",
                a.id
            ),
        ),
        (
            // A plan change for itself: the control plane's topic.
            "forge own plan change",
            format!(
                "INSERT INTO tenancy.outbox (id, tenant_id, channel, topic, payload) \
                 VALUES (gen_random_uuid(), '{}', '{channel}', 'plan.changed', '{{\"to\": \"enterprise\"}}')",
                a.id
            ),
        ),
        ("re-scope", format!("SET LOCAL app.tenant_id = '{}'", b.id)),
    ];
    for (what, sql) in &attempts {
        let what = *what;
        let mut tx = db.begin(&ctx).await.unwrap();
        let r = sqlx::query(sql).execute(&mut *tx).await;
        if what == "re-scope" {
            // Even where setting the variable succeeds, the sealed binding
            // refuses the next statement or the forged insert.
            let forged = sqlx::query(&forge).execute(&mut *tx).await;
            assert!(
                r.is_err() || forged.is_err(),
                "re-scoped and forged a message for B"
            );
        } else {
            assert!(r.is_err(), "{what} was allowed: {r:?}");
        }
        let _ = tx.rollback().await;
    }
    assert_eq!(
        relay.pending(&channel).await.unwrap(),
        1,
        "B's message untouched"
    );
    // The control: the very statement that forged a message for B runs as
    // the owner, outside the application role's grants and policy — so the
    // refusals above come from the wall, not from malformed SQL.
    // So do the pre-aged row and the plan change, for the same reason (the
    // grant and the policy bind the application role, not the owner).
    for (what, sql) in &attempts {
        if what.starts_with("forge") || what.starts_with("pre-age") {
            sqlx::query(sql).execute(&owner).await.unwrap();
        }
    }
    assert_eq!(relay.pending(&channel).await.unwrap(), 4);
    // And even then every row starts fresh (the trigger): nothing jumps the
    // queue or arrives worn out.
    let (oldest, worn): (chrono::DateTime<chrono::Utc>, i32) = sqlx::query_as(
        "SELECT min(created_at), max(attempts) FROM tenancy.outbox WHERE channel = $1",
    )
    .bind(&channel)
    .fetch_one(&owner)
    .await
    .unwrap();
    assert!(
        chrono::Utc::now() - oldest < chrono::Duration::minutes(5),
        "{oldest}"
    );
    assert_eq!(worn, 0);
}

/// The monthly counters are bound to the sealed tenant too: SQL that sets
/// the raw variable to another tenant neither reads nor resets its usage.
#[cfg(feature = "calendar")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn re_scoped_sql_cannot_reset_another_tenants_monthly_usage() {
    use tenancy_core::quota::monthly::MonthlyStore;
    let (owner, db) = postgres().await;
    let a = tenant("monthly-a");
    let b = tenant("monthly-b");
    let store = PgTenantStore::new(owner.clone());
    store.create(&a).await.unwrap();
    store.create(&b).await.unwrap();
    let usage = tenancy_sqlx::PgMonthlyUsage::new(db.clone());
    usage
        .add(b.id, "quotes", "2026-12", 7, 100)
        .await
        .unwrap()
        .unwrap();
    let mut tx = db
        .begin(&TenantContext::new(Arc::new(a.clone())))
        .await
        .unwrap();
    let set = sqlx::query(&format!("SET LOCAL app.tenant_id = '{}'", b.id))
        .execute(&mut *tx)
        .await;
    if set.is_ok() {
        let reset = sqlx::query("UPDATE tenancy.monthly_usage SET used = 0")
            .execute(&mut *tx)
            .await;
        if let Ok(done) = reset {
            assert_eq!(done.rows_affected(), 0, "re-scoped SQL reset B's usage");
            tx.commit().await.unwrap();
        }
    }
    assert_eq!(usage.used(b.id, "quotes", "2026-12").await.unwrap(), 7);
    // The control: the same reset as the superuser (no row-level security)
    // reaches B's row.
    let admin = TestDb::from_env().unwrap().admin_pool(1).await.unwrap();
    let done = sqlx::query("UPDATE tenancy.monthly_usage SET used = 0 WHERE tenant_id = $1")
        .bind(b.id.as_uuid())
        .execute(&admin)
        .await
        .unwrap();
    assert_eq!(done.rows_affected(), 1);
}

/// Application code's path on SQLite tenant files: the tenant's own
/// transaction (high-risk alerts are written this way by the audit log).
struct TenantFileWriter(tenancy_sqlx::sqlite::SqliteTenantDb, Arc<Tenant>);

#[async_trait]
impl OutboxWriter for TenantFileWriter {
    async fn write(&self, m: &OutboxMessage) -> Result<(), String> {
        let mut tx = self
            .0
            .begin_immediate(&TenantContext::new(self.1.clone()))
            .await
            .map_err(|e| e.to_string())?;
        tenancy_sqlx::sqlite::outbox::enqueue(&mut tx, m)
            .await
            .map_err(|e| e.to_string())?;
        tx.commit().await.map_err(|e| e.to_string())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn delivery_from_tenant_files() {
    use tenancy_core::Placement;
    use tenancy_sqlx::sqlite::{SqliteTenantDb, SqliteTenantOutboxes};
    use tenancy_sqlx::tenant_migrate::TenantMigrator;
    let dir = tempfile::tempdir().unwrap();
    let control = SqliteControl::open(dir.path().join("c.sqlite3"))
        .await
        .unwrap();
    let files = SqliteTenantDb::new(dir.path().join("tenants"));
    let migrator = TenantMigrator::new(Vec::new()).unwrap();
    // Two tenants: the table runs on one; the other's file is visited too.
    let mut ts = Vec::new();
    for slug in ["files-a", "files-b"] {
        let t = tenant(slug).with_placement(Placement::database(&slug.replace('-', "_")).unwrap());
        control.tenants().create(&t).await.unwrap();
        files.provision(&t, &migrator).await.unwrap();
        ts.push(Arc::new(t));
    }
    let figures = delivery(
        Arc::new(SqliteTenantOutboxes::new(files.clone(), control.tenants())),
        &TenantFileWriter(files, ts[0].clone()),
        ts[0].id,
        &channel(),
    )
    .await
    .unwrap();
    check("sqlite-tenant-files", figures);
}

/// Inside a tenant file the tenant's own SQL runs: it cannot delete or
/// rewrite its alerts, nor insert worn-out rows; a row naming another
/// tenant or an undecodable one is set aside — and none of it stops
/// another tenant's alert from being sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_rows_in_a_tenant_file_neither_leak_nor_stall() {
    use tenancy_core::Placement;
    use tenancy_sqlx::sqlite::{SqliteTenantDb, SqliteTenantOutboxes};
    use tenancy_sqlx::tenant_migrate::TenantMigrator;
    let dir = tempfile::tempdir().unwrap();
    let control = SqliteControl::open(dir.path().join("c.sqlite3"))
        .await
        .unwrap();
    let files = SqliteTenantDb::new(dir.path().join("tenants"));
    let migrator = TenantMigrator::new(Vec::new()).unwrap();
    let mut ts = Vec::new();
    for slug in ["hostile", "victim"] {
        let t = tenant(slug).with_placement(Placement::database(slug).unwrap());
        control.tenants().create(&t).await.unwrap();
        files.provision(&t, &migrator).await.unwrap();
        ts.push(Arc::new(t));
    }
    let (hostile, victim) = (ts[0].clone(), ts[1].clone());
    let channel = channel();
    TenantFileWriter(files.clone(), hostile.clone())
        .write(&OutboxMessage::new(
            hostile.id,
            &channel,
            "audit.high_risk",
            serde_json::json!({}),
        ))
        .await
        .unwrap();
    let sql = |s: String| s;
    let refused = [
        sql("DELETE FROM tenancy_outbox".into()),
        sql("UPDATE tenancy_outbox SET payload = '{}', topic = 'x'".into()),
        sql(format!(
            "INSERT INTO tenancy_outbox (id, tenant_id, channel, topic, payload, created_at, available_at, attempts) \
             VALUES ('w', '{}', '{channel}', 'audit.high_risk', '{{}}', '0000', '0000', 2147483647)",
            hostile.id
        )),
    ];
    for statement in &refused {
        let mut tx = files
            .begin_immediate(&TenantContext::new(hostile.clone()))
            .await
            .unwrap();
        let r = sqlx::query(statement).execute(&mut *tx).await;
        assert!(r.is_err(), "allowed: {statement}");
        let _ = tx.rollback().await;
    }
    // Rows the relay must not send: another tenant's id, and garbage.
    let mut tx = files
        .begin_immediate(&TenantContext::new(hostile.clone()))
        .await
        .unwrap();
    for (id, tenant_id, payload) in [
        ("forged", victim.id.to_string(), "{}".to_owned()),
        ("garbage", hostile.id.to_string(), "{".to_owned()),
    ] {
        sqlx::query(
            "INSERT INTO tenancy_outbox (id, tenant_id, channel, topic, payload, created_at, available_at) \
             VALUES ($1, $2, $3, 'audit.high_risk', $4, '0000', '0000')",
        )
        .bind(id)
        .bind(tenant_id)
        .bind(&channel)
        .bind(payload)
        .execute(&mut *tx)
        .await
        .unwrap();
    }
    tx.commit().await.unwrap();
    TenantFileWriter(files.clone(), victim.clone())
        .write(&OutboxMessage::new(
            victim.id,
            &channel,
            "audit.high_risk",
            serde_json::json!({"v": 1}),
        ))
        .await
        .unwrap();
    let relay = SqliteTenantOutboxes::new(files, control.tenants());
    let claimed = relay
        .claim(&channel, 10, std::time::Duration::from_secs(30))
        .await
        .unwrap();
    let mut got: Vec<(TenantId, serde_json::Value)> = claimed
        .iter()
        .map(|c| (c.message.tenant, c.message.payload.clone()))
        .collect();
    got.sort_by_key(|(t, _)| *t == victim.id);
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0].0, hostile.id);
    assert_eq!(got[1], (victim.id, serde_json::json!({"v": 1})));
    // The two bad rows were set aside, not left pending.
    assert_eq!(relay.pending(&channel).await.unwrap(), 2);
    // The control: the control database's outbox (not tenant-writable, so
    // unguarded) takes the same statements.
    SqliteWriter(control.clone())
        .write(&OutboxMessage::new(
            hostile.id,
            &channel,
            "audit.high_risk",
            serde_json::json!({}),
        ))
        .await
        .unwrap();
    for statement in &refused {
        sqlx::query(statement)
            .execute(control.pool())
            .await
            .unwrap();
    }
}
