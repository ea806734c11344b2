//! Moving a tenant between placements (`TenantMover`): shared → schema and
//! shared → database under concurrent writers with zero lost writes, a
//! stale context refused after the move, verification failures and lock
//! timeouts that switch nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tenancy_core::rls::TenantTable;
use tenancy_core::store::TenantStore;
use tenancy_core::{Placement, Tenant, TenantContext, TenantId};
use tenancy_sqlx::relocate::TenantMover;
use tenancy_sqlx::tenant_migrate::{MigrationTarget, TenantMigration, TenantMigrator};
use tenancy_sqlx::{DatabaseRouter, DbError, PgTenantStore, TenantDb, migrate};
use tenancy_testkit::TestDb;
use tenancy_testkit::isolation::TABLES;
use uuid::Uuid;

fn table_sql(schema: Option<&str>) -> String {
    let mut sql = String::new();
    for t in TABLES {
        let q = schema.map_or_else(|| t.to_owned(), |s| format!("\"{s}\".{t}"));
        sql.push_str(&format!(
            "CREATE TABLE {q} (tenant_id uuid NOT NULL, id uuid NOT NULL, value bigint NOT NULL, \
             PRIMARY KEY (tenant_id, id));\n"
        ));
        let mut table = TenantTable::new(t).index_on(["id"]).grant_to("tenancy_app");
        if let Some(s) = schema {
            table = table.schema(s);
        }
        sql.push_str(&table.ddl());
    }
    sql
}

fn migrator() -> TenantMigrator {
    TenantMigrator::new(vec![TenantMigration::new(1, "tables", &table_sql(None))]).unwrap()
}

struct World {
    env: TestDb,
    owner: PgPool,
    admin: PgPool,
    /// The schema of the shared tables.
    shared: String,
    store: PgTenantStore,
    app: PgPool,
}

async fn world() -> World {
    let env = TestDb::from_env().unwrap();
    let owner = env.owner_pool(4).await.unwrap();
    let mut conn = owner.acquire().await.unwrap();
    migrate::run(&mut conn).await.unwrap();
    // The app role reads tenancy.tenants (the store, and tenancy.enter).
    migrate::grant_system_read(&mut conn, "tenancy_app")
        .await
        .unwrap();
    drop(conn);
    let shared = env.fresh_schema("mv").await.unwrap();
    sqlx::raw_sql(&table_sql(Some(&shared)))
        .execute(&owner)
        .await
        .unwrap();
    let app = TenantDb::pool_options()
        .max_connections(8)
        .connect(&env.app_url)
        .await
        .unwrap();
    World {
        admin: env.admin_pool(2).await.unwrap(),
        store: PgTenantStore::new(app.clone()),
        owner,
        shared,
        app,
        env,
    }
}

impl World {
    async fn shared_tenant(&self, slug: &str) -> Tenant {
        let id = TenantId::new_v4();
        let slug = format!("{slug}-{}", &id.to_string()[..8]);
        let tenant = Tenant::new(id, slug.parse().unwrap(), &slug);
        PgTenantStore::new(self.owner.clone())
            .create(&tenant)
            .await
            .unwrap();
        tenant
    }

    async fn current(&self, id: TenantId) -> Tenant {
        self.store
            .by_id(id)
            .await
            .unwrap()
            .unwrap()
            .as_ref()
            .clone()
    }

    /// Provisions the schema a tenant will move to (tables at the latest
    /// version, usage granted) and returns its name.
    async fn target_schema(&self, tenant: TenantId) -> String {
        let name = Placement::name_for(tenant);
        migrator()
            .provision(
                &self.owner,
                &MigrationTarget {
                    tenant,
                    schema: name.clone(),
                },
                &["tenancy_app"],
            )
            .await
            .unwrap();
        name
    }

    fn mover(&self) -> TenantMover {
        TenantMover::new(self.owner.clone(), TABLES).shared_schema(&self.shared)
    }

    /// The table as a transaction for `tenant` must name it.
    fn customers(&self, tenant: &Tenant) -> String {
        match tenant.placement {
            Placement::Shared => format!("\"{}\".customers", self.shared),
            _ => "customers".to_owned(),
        }
    }

    /// Rows of `tenant` in the shared tables, read as superuser.
    async fn left_in_shared(&self, tenant: TenantId) -> i64 {
        let mut n = 0;
        for t in TABLES {
            let c: i64 = sqlx::query_scalar(&format!(
                "SELECT count(*) FROM \"{}\".{t} WHERE tenant_id = $1",
                self.shared
            ))
            .bind(tenant.as_uuid())
            .fetch_one(&self.admin)
            .await
            .unwrap();
            n += c;
        }
        n
    }
}

/// Inserts one customer row for `tenant` as loaded now; `Ok(id)` once committed.
async fn write_one(w: &World, db: &TenantDb, tenant: &Tenant) -> Result<Uuid, DbError> {
    let ctx = TenantContext::new(tenant.clone());
    let mut tx = db.begin(&ctx).await?;
    let id = Uuid::new_v4();
    sqlx::query(&format!(
        "INSERT INTO {} (tenant_id, id, value) VALUES ($1, $2, 1)",
        w.customers(tenant)
    ))
    .bind(tenant.id.as_uuid())
    .bind(id)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(id)
}

/// Every customer id `tenant` (as placed now) sees through the door.
async fn visible(w: &World, db: &TenantDb, tenant: &Tenant) -> Vec<Uuid> {
    let ctx = TenantContext::new(tenant.clone());
    let mut tx = db.begin(&ctx).await.unwrap();
    let mut ids: Vec<Uuid> = sqlx::query_scalar(&format!("SELECT id FROM {}", w.customers(tenant)))
        .fetch_all(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    ids.sort();
    ids
}

/// Writers for `tenant` that reload it before every write (as a request
/// would, through the store) and retry when told it moved. Returns the
/// acknowledged ids and how many times a writer was told to retry.
fn writers(
    w: &Arc<World>,
    db: &TenantDb,
    tenant: TenantId,
    n: usize,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<(Vec<Uuid>, usize)>> {
    (0..n)
        .map(|_| {
            let (w, db, stop) = (w.clone(), db.clone(), stop.clone());
            tokio::spawn(async move {
                let (mut acked, mut moved) = (Vec::new(), 0);
                while !stop.load(Ordering::Relaxed) {
                    let t = w.current(tenant).await;
                    match write_one(&w, &db, &t).await {
                        Ok(id) => acked.push(id),
                        Err(DbError::TenantMoved { .. }) => moved += 1,
                        Err(e) => panic!("writer failed: {e}"),
                    }
                }
                (acked, moved)
            })
        })
        .collect()
}

async fn seed(w: &World, db: &TenantDb, tenant: &Tenant, rows: usize) -> Vec<Uuid> {
    let mut ids = Vec::new();
    for _ in 0..rows {
        ids.push(write_one(w, db, tenant).await.unwrap());
    }
    ids
}

async fn collect(handles: Vec<tokio::task::JoinHandle<(Vec<Uuid>, usize)>>) -> (Vec<Uuid>, usize) {
    let (mut all, mut moved) = (Vec::new(), 0);
    for h in handles {
        let (ids, m) = h.await.unwrap();
        all.extend(ids);
        moved += m;
    }
    all.sort();
    (all, moved)
}

#[allow(clippy::print_stderr)] // the figures line, like the isolation suite's
/// Runs writers for the moving tenant and a neighbour, moves the tenant
/// mid-run, and checks that every acknowledged write is where it now lives.
async fn move_under_writers(
    w: Arc<World>,
    db: TenantDb,
    tenant: Tenant,
    to: Placement,
    label: &str,
) {
    let neighbour = w.shared_tenant("neighbour").await;
    let mut seeded = seed(&w, &db, &tenant, 200).await;
    let mut seeded_n = seed(&w, &db, &neighbour, 50).await;

    let stop = Arc::new(AtomicBool::new(false));
    let moving = writers(&w, &db, tenant.id, 4, &stop);
    let others = writers(&w, &db, neighbour.id, 2, &stop);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let report = w
        .mover()
        .with_databases(w.env.owner_url.parse().unwrap())
        .move_tenant(&w.current(tenant.id).await, to.clone())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let (acked, moved) = collect(moving).await;
    let (acked_n, _) = collect(others).await;

    let now = w.current(tenant.id).await;
    assert_eq!(now.placement, to);
    seeded.extend(&acked);
    seeded.sort();
    assert_eq!(
        visible(&w, &db, &now).await,
        seeded,
        "{label}: every acknowledged write is in the new place, nothing else"
    );
    assert_eq!(
        w.left_in_shared(tenant.id).await,
        0,
        "{label}: source emptied"
    );
    seeded_n.extend(&acked_n);
    seeded_n.sort();
    assert_eq!(
        visible(&w, &db, &neighbour).await,
        seeded_n,
        "{label}: neighbour untouched"
    );
    let copied: i64 = report
        .tables
        .iter()
        .filter(|t| t.table == "customers")
        .map(|t| t.rows)
        .sum();
    assert!(copied >= 200, "{label}: {copied} rows copied");
    assert!(
        seeded.len() as i64 > copied,
        "{label}: writers kept writing after the move ({} acked in all, {copied} copied)",
        seeded.len()
    );
    eprintln!(
        "tenant-move: {label} rows={copied} frozen={:?} acked={} told_to_retry={moved}",
        report.frozen,
        acked.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shared_to_schema_under_concurrent_writers_loses_nothing() {
    let w = Arc::new(world().await);
    let db = TenantDb::new(w.app.clone(), w.env.seal_key().await.unwrap()).with_move_guard();
    let tenant = w.shared_tenant("moving").await;
    // The target schema, provisioned (and pinned to the tenant) before the move.
    let name = w.target_schema(tenant.id).await;
    move_under_writers(
        w,
        db,
        tenant,
        Placement::schema(&name).unwrap(),
        "shared->schema",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shared_to_database_under_concurrent_writers_loses_nothing() {
    let w = Arc::new(world().await);
    let name = format!("mv_{}", Uuid::new_v4().simple());
    sqlx::raw_sql(&format!("CREATE DATABASE \"{name}\" OWNER tenancy_owner"))
        .execute(&w.admin)
        .await
        .unwrap();
    let owner_opts: PgConnectOptions = w.env.owner_url.parse().unwrap();
    let target = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(owner_opts.database(&name))
        .await
        .unwrap();
    tenancy_sqlx::migrate::install_seal(
        &mut target.acquire().await.unwrap(),
        &w.env.seal_key().await.unwrap(),
    )
    .await
    .unwrap();
    sqlx::raw_sql(&table_sql(None))
        .execute(&target)
        .await
        .unwrap();
    target.close().await;
    let db = TenantDb::new(w.app.clone(), w.env.seal_key().await.unwrap())
        .with_move_guard()
        .with_databases(DatabaseRouter::new(w.env.app_url.parse().unwrap()));
    let tenant = w.shared_tenant("moving").await;
    move_under_writers(
        w,
        db,
        tenant,
        Placement::database(&name).unwrap(),
        "shared->database",
    )
    .await;
}

#[tokio::test]
async fn a_context_loaded_before_the_move_is_refused_after_it() {
    let w = world().await;
    let db = TenantDb::new(w.app.clone(), w.env.seal_key().await.unwrap()).with_move_guard();
    let tenant = w.shared_tenant("stale").await;
    seed(&w, &db, &tenant, 3).await;
    let name = w.target_schema(tenant.id).await;
    let stale = tenant.clone();
    w.mover()
        .move_tenant(&tenant, Placement::schema(&name).unwrap())
        .await
        .unwrap();
    let err = write_one(&w, &db, &stale).await.unwrap_err();
    assert!(
        matches!(err, DbError::TenantMoved { tenant } if tenant == stale.id),
        "{err}"
    );
    assert_eq!(
        w.left_in_shared(stale.id).await,
        0,
        "nothing written to the old place"
    );
    // Moving it again from the stale placement is refused too.
    let err = w
        .mover()
        .move_tenant(&stale, Placement::schema(&name).unwrap())
        .await
        .unwrap_err();
    assert!(matches!(err, DbError::TenantMoved { .. }), "{err}");
    // The reloaded tenant is served from its schema.
    assert_eq!(visible(&w, &db, &w.current(stale.id).await).await.len(), 3);
}

#[tokio::test]
async fn a_copy_that_does_not_verify_switches_nothing() {
    let w = world().await;
    let db = TenantDb::new(w.app.clone(), w.env.seal_key().await.unwrap()).with_move_guard();
    let tenant = w.shared_tenant("corrupt").await;
    let before = seed(&w, &db, &tenant, 5).await;
    let name = w.target_schema(tenant.id).await;
    // The target silently alters what it stores: the checksums differ.
    sqlx::raw_sql(&format!(
        "CREATE FUNCTION \"{name}\".bump() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN NEW.value := NEW.value + 1; RETURN NEW; END $$; \
         CREATE TRIGGER bump BEFORE INSERT ON \"{name}\".customers \
         FOR EACH ROW EXECUTE FUNCTION \"{name}\".bump()"
    ))
    .execute(&w.owner)
    .await
    .unwrap();
    let err = w
        .mover()
        .move_tenant(&tenant, Placement::schema(&name).unwrap())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, DbError::Relocation(m) if m.contains("customers") && m.contains("checksum")),
        "{err}"
    );
    let now = w.current(tenant.id).await;
    assert_eq!(now.placement, Placement::Shared, "placement not switched");
    let mut before = before;
    before.sort();
    assert_eq!(visible(&w, &db, &now).await, before, "source rows intact");
}

#[tokio::test]
async fn a_transaction_in_flight_past_the_lock_timeout_stops_the_move() {
    let w = world().await;
    let db = TenantDb::new(w.app.clone(), w.env.seal_key().await.unwrap()).with_move_guard();
    let tenant = w.shared_tenant("busy").await;
    let name = w.target_schema(tenant.id).await;
    let ctx = TenantContext::new(tenant.clone());
    let held = db.begin(&ctx).await.unwrap(); // a long request
    let err = w
        .mover()
        .lock_timeout(Duration::from_millis(200))
        .move_tenant(&tenant, Placement::schema(&name).unwrap())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, DbError::Placement { reason, .. } if reason.contains("did not finish")),
        "{err}"
    );
    held.commit().await.unwrap();
    assert_eq!(w.current(tenant.id).await.placement, Placement::Shared);
    // Other tenants were never frozen: a neighbour writes while the lock is held.
    let neighbour = w.shared_tenant("free").await;
    let ctx_t = TenantContext::new(tenant.clone());
    let hold_again = db.begin(&ctx_t).await.unwrap();
    let mover = w.mover();
    let tenant2 = tenant.clone();
    let placement = Placement::schema(&name).unwrap();
    let pending = tokio::spawn(async move { mover.move_tenant(&tenant2, placement).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !pending.is_finished(),
        "the move waits for the tenant's transaction"
    );
    let neighbour_wrote = write_one(&w, &db, &neighbour).await;
    assert!(neighbour_wrote.is_ok(), "{neighbour_wrote:?}");
    hold_again.commit().await.unwrap();
    pending.await.unwrap().unwrap();
}
