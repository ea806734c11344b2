//! Failing closed without a tenant, the write guard, and the audited
//! cross-tenant capability.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::sync::{Arc, Mutex};

use tenancy_core::{Tenant, TenantContext, TenantId, TenantScoped};
use tenancy_sqlx::rls::{ApplyTenantTable, TenantTable};
use tenancy_sqlx::{DbError, PrivilegedDb, TenantDb};
use tenancy_testkit::TestDb;
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use uuid::Uuid;

struct Fixture {
    env: TestDb,
    table: String,
    db: TenantDb,
    app: sqlx::PgPool,
    a: TenantContext,
    b: TenantContext,
}

fn tenant(slug: &str) -> TenantContext {
    TenantContext::new(Tenant::new(TenantId::new_v4(), slug.parse().unwrap(), slug))
}

/// Tests here capture tracing output with a thread-local subscriber while
/// other tests run in parallel threads without one. A callsite first hit on
/// such a thread can have its interest cached as "never", and the capturing
/// test then loses events (seen on CI). A global no-op registry keeps every
/// callsite enabled; dispatch still goes to the thread-local subscriber
/// where one is set.
fn keep_callsites_enabled() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = tracing::subscriber::set_global_default(tracing_subscriber::registry());
    });
}

async fn fixture() -> Fixture {
    keep_callsites_enabled();
    let env = TestDb::from_env().unwrap();
    let schema = env.fresh_schema("path").await.unwrap();
    let owner = env.owner_pool(1).await.unwrap();
    let table = format!("\"{schema}\".\"notes\"");
    sqlx::query(&format!(
        "CREATE TABLE {table} (tenant_id uuid NOT NULL, id uuid NOT NULL, body text NOT NULL, \
         PRIMARY KEY (tenant_id, id))"
    ))
    .execute(&owner)
    .await
    .unwrap();
    TenantTable::new("notes")
        .schema(&schema)
        .index_on(["id"])
        .grant_to("tenancy_app")
        .grant_to("tenancy_ops")
        .apply(&mut owner.acquire().await.unwrap())
        .await
        .unwrap();
    let app = TenantDb::pool_options()
        .max_connections(2)
        .connect(&env.app_url)
        .await
        .unwrap();
    let db = TenantDb::new(app.clone(), env.seal_key().await.unwrap());
    let (a, b) = (tenant("a"), tenant("b"));
    for (ctx, n) in [(&a, 3), (&b, 2)] {
        let mut tx = db.begin(ctx).await.unwrap();
        for i in 0..n {
            sqlx::query(&format!(
                "INSERT INTO {table} (tenant_id, id, body) VALUES ($1, $2, $3)"
            ))
            .bind(ctx.tenant_id().as_uuid())
            .bind(Uuid::new_v4())
            .bind(format!("note {i}"))
            .execute(&mut *tx)
            .await
            .unwrap();
        }
        tx.commit().await.unwrap();
    }
    Fixture {
        env,
        table,
        db,
        app,
        a,
        b,
    }
}

#[tokio::test]
async fn without_a_tenant_queries_see_nothing_and_writes_fail() {
    let f = fixture().await;
    let visible: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {}", f.table))
        .fetch_one(&f.app)
        .await
        .unwrap();
    assert_eq!(visible, 0, "a query with no tenant must see nothing");

    let insert = sqlx::query(&format!(
        "INSERT INTO {} (tenant_id, id, body) VALUES ($1, $2, 'x')",
        f.table
    ))
    .bind(f.a.tenant_id().as_uuid())
    .bind(Uuid::new_v4())
    .execute(&f.app)
    .await
    .unwrap_err();
    assert!(
        insert.to_string().contains("row-level security"),
        "{insert}"
    );

    let updated = sqlx::query(&format!("UPDATE {} SET body = 'pwned'", f.table))
        .execute(&f.app)
        .await
        .unwrap()
        .rows_affected();
    let deleted = sqlx::query(&format!("DELETE FROM {}", f.table))
        .execute(&f.app)
        .await
        .unwrap()
        .rows_affected();
    assert_eq!((updated, deleted), (0, 0));

    // Each tenant still sees exactly its own rows.
    for (ctx, want) in [(&f.a, 3), (&f.b, 2)] {
        let mut tx = f.db.begin(ctx).await.unwrap();
        let n: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {}", f.table))
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        assert_eq!(n, want);
        tx.commit().await.unwrap();
    }
}

struct Note {
    tenant_id: TenantId,
    id: Uuid,
}

impl TenantScoped for Note {
    fn tenant_id(&self) -> TenantId {
        self.tenant_id
    }
}

#[tokio::test]
async fn write_guard_refuses_foreign_entities_before_sql_and_rls_backs_it_up() {
    let f = fixture().await;
    let foreign = Note {
        tenant_id: f.b.tenant_id(),
        id: Uuid::new_v4(),
    };
    let mut tx = f.db.begin(&f.a).await.unwrap();
    let err = tx
        .write(
            &foreign,
            sqlx::query(&format!(
                "INSERT INTO {} (tenant_id, id, body) VALUES ($1, $2, 'x')",
                f.table
            ))
            .bind(foreign.tenant_id.as_uuid())
            .bind(foreign.id),
        )
        .await
        .unwrap_err();
    match err {
        DbError::Mismatch(m) => {
            assert_eq!((m.expected, m.found), (f.a.tenant_id(), f.b.tenant_id()));
        }
        other => panic!("expected a mismatch, got {other}"),
    }
    // The guard stopped it before any SQL: the transaction is still healthy.
    let own = Note {
        tenant_id: f.a.tenant_id(),
        id: Uuid::new_v4(),
    };
    tx.write(
        &own,
        sqlx::query(&format!(
            "INSERT INTO {} (tenant_id, id, body) VALUES ($1, $2, 'ok')",
            f.table
        ))
        .bind(own.tenant_id.as_uuid())
        .bind(own.id),
    )
    .await
    .unwrap();
    // Second wall: the same foreign insert sent as raw SQL is refused by RLS.
    let raw = sqlx::query(&format!(
        "INSERT INTO {} (tenant_id, id, body) VALUES ($1, $2, 'x')",
        f.table
    ))
    .bind(foreign.tenant_id.as_uuid())
    .bind(foreign.id)
    .execute(&mut *tx)
    .await
    .unwrap_err();
    assert!(raw.to_string().contains("row-level security"), "{raw}");
}

#[derive(Clone, Default)]
struct AuditEvents(Arc<Mutex<Vec<String>>>);

struct EventText<'a>(&'a mut String);
impl Visit for EventText<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.push_str(&format!("{}={:?} ", field.name(), value));
    }
}

impl<S: tracing::Subscriber> Layer<S> for AuditEvents {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        if event.metadata().target() == "tenancy::audit" {
            let mut text = String::new();
            event.record(&mut EventText(&mut text));
            self.0.lock().unwrap().push(text);
        }
    }
}

#[tokio::test]
async fn cross_tenant_access_needs_a_reason_and_is_audited() {
    let f = fixture().await;
    let events = AuditEvents::default();
    let _guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(events.clone()));

    let ops = PrivilegedDb::new(f.env.ops_pool(1).await.unwrap());
    assert!(matches!(
        ops.cross_tenant("  ", "support"),
        Err(DbError::MissingReason)
    ));
    assert!(
        events.0.lock().unwrap().is_empty(),
        "refusals grant nothing"
    );

    let access = ops
        .cross_tenant("ticket 4711: reconcile", "support:ana")
        .unwrap();
    let mut tx = access.begin().await.unwrap();
    let tenants: i64 = sqlx::query_scalar(&format!(
        "SELECT count(DISTINCT tenant_id) FROM {}",
        f.table
    ))
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(tenants, 2, "the capability sees every tenant");

    let events = events.0.lock().unwrap().clone();
    assert_eq!(events.len(), 2, "{events:?}");
    assert!(events[0].contains("cross_tenant.granted") && events[0].contains("ticket 4711"));
    assert!(events[1].contains("cross_tenant.transaction") && events[1].contains("support:ana"));

    // With an audit sink, each touched tenant's own log records the crossing.
    // (Kept in this test: tracing callsites used by two tests at once, one
    // with a thread-local subscriber and one without, race on their cached
    // interest and lose events.)
    let sink = std::sync::Arc::new(tenancy_core::audit::MemorySink::default());
    let ops = PrivilegedDb::new(f.env.ops_pool(1).await.unwrap()).with_audit(sink.clone());
    let access = ops
        .cross_tenant("ticket 4712: refund", "support:ben")
        .unwrap();
    access.touching(f.a.tenant_id()).await.unwrap();
    let recorded = sink.events();
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].tenant, f.a.tenant_id());
    assert_eq!(recorded[0].action, "cross_tenant.access");
    assert_eq!(recorded[0].actor.id(), "support:ben");
    assert_eq!(recorded[0].details["reason"], "ticket 4712: refund");
}
