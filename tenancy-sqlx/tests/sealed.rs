//! The sealed tenant binding under attack: SQL running inside tenant A's
//! transaction (as the application role, through the simple and the extended
//! protocol) tries to make row-level security or a schema placement serve
//! tenant B. Every attack runs against the sealed policy and, as its broken
//! twin, against the policy shape that trusts the raw `app.tenant_id`
//! setting — where the same attack must leak, or the test proves nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use sqlx::{Connection as _, PgPool, Row as _};
use tenancy_core::rls::{SealKey, TenantTable};
use tenancy_core::{Placement, Tenant, TenantContext, TenantId};
use tenancy_sqlx::tenant_migrate::{MigrationTarget, TenantMigration, TenantMigrator};
use tenancy_sqlx::{DbError, TenantDb, TenantTx, migrate};
use tenancy_testkit::TestDb;
use uuid::Uuid;

/// Rows per tenant in each table.
const ROWS: i64 = 3;

struct World {
    env: TestDb,
    schema: String,
    db: TenantDb,
    seal: SealKey,
    a: TenantContext,
    b: TenantContext,
}

fn tenant(slug: &str) -> TenantContext {
    TenantContext::new(Tenant::new(TenantId::new_v4(), slug.parse().unwrap(), slug))
}

/// `sealed` (the library's policy) and `unsealed` (the same table with the
/// policy shape that trusts `app.tenant_id`: the broken twin), each with
/// three rows of A and three of B.
async fn world() -> World {
    let env = TestDb::from_env().unwrap();
    let schema = env.fresh_schema("sealed").await.unwrap();
    let owner = env.owner_pool(1).await.unwrap();
    for (table, sealed) in [("sealed", true), ("unsealed", false)] {
        sqlx::raw_sql(&format!(
            "CREATE TABLE \"{schema}\".{table} (tenant_id uuid NOT NULL, id uuid NOT NULL, \
             PRIMARY KEY (tenant_id, id))"
        ))
        .execute(&owner)
        .await
        .unwrap();
        let mut ddl = TenantTable::new(table)
            .schema(&schema)
            .grant_to("tenancy_app")
            .ddl();
        if !sealed {
            ddl = ddl.replace(
                &tenancy_core::rls::tenant_predicate("tenant_id"),
                &tenancy_core::rls::unsealed_predicate("tenant_id"),
            );
        }
        sqlx::raw_sql(&ddl).execute(&owner).await.unwrap();
    }
    let seal = env.seal_key().await.unwrap();
    let pool = TenantDb::pool_options()
        .max_connections(2)
        .connect(&env.app_url)
        .await
        .unwrap();
    let db = TenantDb::new(pool, seal.clone());
    let (a, b) = (tenant("seal-a"), tenant("seal-b"));
    for ctx in [&a, &b] {
        let mut tx = db.begin(ctx).await.unwrap();
        for table in ["sealed", "unsealed"] {
            for _ in 0..ROWS {
                sqlx::query(&format!(
                    "INSERT INTO \"{schema}\".{table} (tenant_id, id) VALUES ($1, $2)"
                ))
                .bind(ctx.tenant_id().as_uuid())
                .bind(Uuid::new_v4())
                .execute(&mut *tx)
                .await
                .unwrap();
            }
        }
        tx.commit().await.unwrap();
    }
    World {
        env,
        schema,
        db,
        seal,
        a,
        b,
    }
}

/// Rows of `tenant` visible in `table` from inside `conn`'s transaction.
async fn rows_of(
    conn: &mut sqlx::PgConnection,
    schema: &str,
    table: &str,
    tenant: TenantId,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(&format!(
        "SELECT count(*) FROM \"{schema}\".{table} WHERE tenant_id = $1"
    ))
    .bind(tenant.as_uuid())
    .fetch_one(conn)
    .await
}

/// The message a genuine seal for `tenant` would carry, issued `age` seconds ago.
fn seal_call(key: &SealKey, tenant: TenantId, age: i64) -> String {
    let issued = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
        - age;
    let proof: String = key
        .proof(tenant, issued)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("CALL tenancy.seal('{tenant}', {issued}, '\\x{proof}')")
}

fn sqlstate(e: &sqlx::Error) -> Option<String> {
    match e {
        sqlx::Error::Database(d) => d.code().map(std::borrow::Cow::into_owned),
        _ => None,
    }
}

/// The ways SQL inside a transaction can rewrite the tenant setting.
fn switches(b: TenantId) -> Vec<(&'static str, String)> {
    vec![
        (
            "set_config",
            format!("SELECT set_config('app.tenant_id', '{b}', true)"),
        ),
        ("set_local", format!("SET LOCAL app.tenant_id = '{b}'")),
        ("set_session", format!("SET app.tenant_id = '{b}'")),
    ]
}

async fn switched_tx(w: &World, switch: &str) -> TenantTx {
    let mut tx = w.db.begin(&w.a).await.unwrap();
    sqlx::raw_sql(switch).execute(&mut *tx).await.unwrap();
    tx
}

#[tokio::test]
async fn rewriting_the_tenant_setting_shows_nothing_of_another_tenant() {
    let w = world().await;
    let (a, b) = (w.a.tenant_id(), w.b.tenant_id());
    for (kind, switch) in switches(b) {
        let mut tx = switched_tx(&w, &switch).await;
        // The sealed policy: neither B's rows nor, now that the claim no
        // longer matches the seal, A's own.
        assert_eq!(
            rows_of(&mut tx, &w.schema, "sealed", b).await.unwrap(),
            0,
            "{kind}"
        );
        assert_eq!(
            rows_of(&mut tx, &w.schema, "sealed", a).await.unwrap(),
            0,
            "{kind}"
        );
        // Broken twin: the policy that trusts the setting serves B.
        assert_eq!(
            rows_of(&mut tx, &w.schema, "unsealed", b).await.unwrap(),
            ROWS,
            "{kind}: the unsealed twin must leak, or this attack proves nothing"
        );
        tx.rollback().await.unwrap();
    }
    // Through the extended protocol (a bound parameter), the same.
    let mut tx = w.db.begin(&w.a).await.unwrap();
    sqlx::query("SELECT set_config('app.tenant_id', $1, true)")
        .bind(b.to_string())
        .execute(&mut *tx)
        .await
        .unwrap();
    assert_eq!(rows_of(&mut tx, &w.schema, "sealed", b).await.unwrap(), 0);
    assert_eq!(
        rows_of(&mut tx, &w.schema, "unsealed", b).await.unwrap(),
        ROWS
    );
}

#[tokio::test]
async fn resetting_the_setting_fails_closed() {
    let w = world().await;
    let mut tx = switched_tx(&w, "RESET app.tenant_id").await;
    for table in ["sealed", "unsealed"] {
        for t in [w.a.tenant_id(), w.b.tenant_id()] {
            assert_eq!(rows_of(&mut tx, &w.schema, table, t).await.unwrap(), 0);
        }
    }
}

#[tokio::test]
async fn writes_after_a_rewrite_are_refused() {
    let w = world().await;
    let b = w.b.tenant_id();
    for (kind, switch) in switches(b) {
        for (table, leaks) in [("sealed", false), ("unsealed", true)] {
            let mut tx = switched_tx(&w, &switch).await;
            let insert = sqlx::query(&format!(
                "INSERT INTO \"{}\".{table} (tenant_id, id) VALUES ($1, $2) RETURNING id",
                w.schema
            ))
            .bind(b.as_uuid())
            .bind(Uuid::new_v4())
            .fetch_optional(&mut *tx)
            .await;
            if leaks {
                assert!(insert.is_ok(), "{kind}: the unsealed twin accepts B's row");
            } else {
                let e = insert.expect_err("an INSERT for B must be refused");
                assert_eq!(sqlstate(&e).as_deref(), Some("42501"), "{kind}: {e}");
            }
            tx.rollback().await.unwrap();

            let mut tx = switched_tx(&w, &switch).await;
            let changed: Vec<Uuid> = sqlx::query_scalar(&format!(
                "UPDATE \"{}\".{table} SET id = id WHERE tenant_id = $1 RETURNING id",
                w.schema
            ))
            .bind(b.as_uuid())
            .fetch_all(&mut *tx)
            .await
            .unwrap();
            let deleted = sqlx::query(&format!(
                "DELETE FROM \"{}\".{table} WHERE tenant_id = $1",
                w.schema
            ))
            .bind(b.as_uuid())
            .execute(&mut *tx)
            .await
            .unwrap()
            .rows_affected();
            let expected = if leaks { ROWS } else { 0 };
            assert_eq!(changed.len() as i64, expected, "{kind} {table} UPDATE");
            assert_eq!(deleted as i64, expected, "{kind} {table} DELETE");
            tx.rollback().await.unwrap();
        }
    }
}

#[tokio::test]
async fn a_second_seal_inside_the_transaction_is_refused_even_with_a_genuine_proof() {
    let w = world().await;
    let b = w.b.tenant_id();
    let genuine = seal_call(&w.seal, b, 0);
    let attempts = [
        // A later statement, extended protocol.
        genuine.clone(),
        // A later message that starts like the library's.
        format!("BEGIN; {genuine}"),
        // Injection that ends the transaction and starts a fresh one.
        format!("SELECT 1; COMMIT; BEGIN; {genuine}"),
        format!("SELECT 1; ROLLBACK; BEGIN; {genuine}"),
        format!("SELECT 1; COMMIT AND CHAIN; {genuine}"),
    ];
    for attempt in attempts {
        let mut tx = w.db.begin(&w.a).await.unwrap();
        let result = if attempt.starts_with("CALL") {
            sqlx::query(&attempt).execute(&mut *tx).await.map(|_| ())
        } else {
            sqlx::raw_sql(&attempt).execute(&mut *tx).await.map(|_| ())
        };
        let e = result.expect_err(&attempt);
        assert_eq!(sqlstate(&e).as_deref(), Some("42501"), "{attempt}: {e}");
        assert!(e.to_string().contains("tenancy.seal"), "{e}");
        // Whatever state the connection is in now, B is not visible.
        let _ = sqlx::raw_sql("ROLLBACK").execute(&mut *tx).await;
        let seen = rows_of(&mut tx, &w.schema, "sealed", b).await.unwrap_or(0);
        assert_eq!(seen, 0, "{attempt}");
    }
}

#[tokio::test]
async fn forged_stale_and_foreign_key_seals_are_refused() {
    let w = world().await;
    let b = w.b.tenant_id();
    let mut conn = sqlx::PgConnection::connect(&w.env.app_url).await.unwrap();
    let forged = SealKey::from_bytes([0x42; 32]);
    for (what, call) in [
        ("forged proof", seal_call(&forged, b, 0)),
        ("stale proof", seal_call(&w.seal, b, 3600)),
        ("proof from the future", seal_call(&w.seal, b, -3600)),
        (
            "proof of another tenant",
            seal_call(&w.seal, w.a.tenant_id(), 0)
                .replace(&w.a.tenant_id().to_string(), &b.to_string()),
        ),
        ("no proof", format!("CALL tenancy.seal('{b}', 0, NULL)")),
    ] {
        let e = sqlx::raw_sql(&format!("BEGIN; {call}"))
            .execute(&mut conn)
            .await
            .expect_err(what);
        assert_eq!(sqlstate(&e).as_deref(), Some("42501"), "{what}: {e}");
        sqlx::raw_sql("ROLLBACK").execute(&mut conn).await.unwrap();
    }
    // The genuine message does seal (the refusals above are not a broken seal).
    sqlx::raw_sql(&format!("BEGIN; {}", seal_call(&w.seal, b, 0)))
        .execute(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        rows_of(&mut conn, &w.schema, "sealed", b).await.unwrap(),
        ROWS
    );
    sqlx::raw_sql("ROLLBACK").execute(&mut conn).await.unwrap();

    // The library with the wrong key: a typed error, nothing opened.
    let wrong = TenantDb::new(
        TenantDb::pool_options()
            .max_connections(1)
            .connect(&w.env.app_url)
            .await
            .unwrap(),
        forged,
    );
    let e = wrong.begin(&w.b).await.expect_err("wrong key");
    assert!(matches!(e, DbError::Seal(_)), "{e}");
    assert_eq!(e.status(), 500);
}

#[tokio::test]
async fn the_application_role_cannot_reach_the_seal_state() {
    let w = world().await;
    let mut tx = w.db.begin(&w.a).await.unwrap();
    for sql in [
        "SELECT key FROM tenancy.seal_key",
        "SELECT setval('tenancy.sealed_hi', 1)",
        "SELECT setval('tenancy.sealed_at', 1, true)",
        "SELECT nextval('tenancy.sealed_at')",
        "ALTER SEQUENCE tenancy.sealed_lo RESTART",
        "UPDATE tenancy.seal_key SET key = key",
    ] {
        sqlx::raw_sql("SAVEPOINT s")
            .execute(&mut *tx)
            .await
            .unwrap();
        let e = sqlx::raw_sql(sql).execute(&mut *tx).await.expect_err(sql);
        assert_eq!(sqlstate(&e).as_deref(), Some("42501"), "{sql}: {e}");
        sqlx::raw_sql("ROLLBACK TO SAVEPOINT s")
            .execute(&mut *tx)
            .await
            .unwrap();
    }
    // Still A, and only A.
    assert_eq!(
        rows_of(&mut tx, &w.schema, "sealed", w.a.tenant_id())
            .await
            .unwrap(),
        ROWS
    );
}

#[tokio::test]
async fn discarding_the_session_state_fails_closed() {
    let w = world().await;
    let mut tx = w.db.begin(&w.a).await.unwrap();
    sqlx::raw_sql("DISCARD SEQUENCES")
        .execute(&mut *tx)
        .await
        .unwrap();
    let e = rows_of(&mut tx, &w.schema, "sealed", w.a.tenant_id())
        .await
        .expect_err("the seal is gone: reads are refused");
    assert_eq!(sqlstate(&e).as_deref(), Some("55000"), "{e}");
}

/// A seal lives in its transaction only: on the same server connection, the
/// next transaction that merely claims the tenant sees nothing — directly
/// and behind pgbouncer in transaction mode (one server connection shared by
/// every client there).
async fn seal_is_bound_to_its_transaction(url: &str) {
    let w = world().await;
    let pool = TenantDb::pool_options()
        .max_connections(1)
        .connect(url)
        .await
        .unwrap();
    let db = TenantDb::new(pool.clone(), w.seal.clone());
    let mut tx = db.begin(&w.b).await.unwrap();
    assert_eq!(
        rows_of(&mut tx, &w.schema, "sealed", w.b.tenant_id())
            .await
            .unwrap(),
        ROWS
    );
    tx.commit().await.unwrap();
    let mut conn = pool.acquire().await.unwrap();
    let claim = format!(
        "BEGIN; SELECT set_config('app.tenant_id', '{}', true)",
        w.b.tenant_id()
    );
    sqlx::raw_sql(&claim).execute(&mut *conn).await.unwrap();
    let seen = sqlx::raw_sql(&format!("SELECT count(*) FROM \"{}\".sealed", w.schema))
        .fetch_one(&mut *conn)
        .await;
    match seen {
        Ok(row) => assert_eq!(row.get::<i64, _>(0), 0),
        // A server connection that never sealed refuses the claim.
        Err(e) => assert_eq!(sqlstate(&e).as_deref(), Some("55000"), "{e}"),
    }
    sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await.unwrap();
    // Broken twin: the unsealed shape serves the claim.
    sqlx::raw_sql(&claim).execute(&mut *conn).await.unwrap();
    let leaked: i64 = sqlx::raw_sql(&format!("SELECT count(*) FROM \"{}\".unsealed", w.schema))
        .fetch_one(&mut *conn)
        .await
        .unwrap()
        .get(0);
    assert_eq!(leaked, ROWS);
    sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await.unwrap();
}

#[tokio::test]
async fn a_seal_does_not_outlive_its_transaction_directly() {
    let env = TestDb::from_env().unwrap();
    seal_is_bound_to_its_transaction(&env.app_url).await;
}

#[tokio::test]
async fn a_seal_does_not_outlive_its_transaction_through_pgbouncer() {
    let env = TestDb::from_env().unwrap();
    seal_is_bound_to_its_transaction(&env.pgbouncer_app_url).await;
}

#[tokio::test]
async fn the_owner_is_bound_by_the_seal_too() {
    // FORCE ROW LEVEL SECURITY: the tables' owner setting the tenant by hand
    // sees nothing either.
    let w = world().await;
    let owner = w.env.owner_pool(1).await.unwrap();
    let mut tx = owner.begin().await.unwrap();
    sqlx::query("SELECT set_config('app.tenant_id', $1, true)")
        .bind(w.b.tenant_id().to_string())
        .execute(&mut *tx)
        .await
        .unwrap();
    let seen = rows_of(&mut tx, &w.schema, "sealed", w.b.tenant_id()).await;
    assert!(
        matches!(&seen, Ok(0))
            || seen
                .as_ref()
                .is_err_and(|e| sqlstate(e).as_deref() == Some("55000")),
        "{seen:?}"
    );
}

// ------------------------------------------------------------------ schemas

/// A tenant placed in a schema of its own, provisioned with a table carrying
/// `tenant_id` under the library's policy and one without a tenant column.
async fn schema_tenant(owner: &PgPool, slug: &str) -> TenantContext {
    let id = TenantId::new_v4();
    let schema = Placement::name_for(id);
    let ctx = TenantContext::new(
        Tenant::new(id, slug.parse().unwrap(), slug)
            .with_placement(Placement::schema(&schema).unwrap()),
    );
    let mut sql = String::from(
        "CREATE TABLE customers (tenant_id uuid NOT NULL, id uuid NOT NULL, PRIMARY KEY (tenant_id, id));\n",
    );
    sql.push_str(&TenantTable::new("customers").grant_to("tenancy_app").ddl());
    sql.push_str(
        "CREATE TABLE notes (id uuid PRIMARY KEY, body text NOT NULL);\n\
         GRANT SELECT, INSERT, UPDATE, DELETE ON notes TO tenancy_app;\n",
    );
    TenantMigrator::new(vec![TenantMigration::new(1, "tables", &sql)])
        .unwrap()
        .provision(
            owner,
            &MigrationTarget::from_tenant(ctx.tenant()).unwrap(),
            &["tenancy_app"],
        )
        .await
        .unwrap();
    ctx
}

fn schema_of(ctx: &TenantContext) -> String {
    ctx.tenant()
        .placement
        .checked_name()
        .unwrap()
        .unwrap()
        .to_owned()
}

/// Fills a schema tenant's tables from its own transaction.
async fn fill(db: &TenantDb, ctx: &TenantContext) {
    let mut tx = db.begin(ctx).await.unwrap();
    sqlx::query("INSERT INTO customers (tenant_id, id) VALUES ($1, $2)")
        .bind(ctx.tenant_id().as_uuid())
        .bind(Uuid::new_v4())
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("INSERT INTO notes (id, body) VALUES ($1, 'private')")
        .bind(Uuid::new_v4())
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
}

/// What tenant A's transaction can do to B's schema: (rows of B's
/// customers, rows of B's notes, an INSERT into B's customers stamped A, an
/// INSERT into B's customers stamped B, an INSERT into B's notes, rows seen
/// after `SET LOCAL search_path` to B's schema).
async fn attack_schema(db: &TenantDb, a: &TenantContext, b: &TenantContext) -> [i64; 6] {
    let other = schema_of(b);
    let mut out = [0; 6];
    let mut tx = db.begin(a).await.unwrap();
    out[0] = sqlx::query_scalar(&format!("SELECT count(*) FROM \"{other}\".customers"))
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    out[1] = sqlx::query_scalar(&format!("SELECT count(*) FROM \"{other}\".notes"))
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    let writes = [
        (
            format!(
                "INSERT INTO \"{other}\".customers (tenant_id, id) VALUES ('{}', gen_random_uuid())",
                a.tenant_id()
            ),
            2,
        ),
        (
            format!(
                "INSERT INTO \"{other}\".customers (tenant_id, id) VALUES ('{}', gen_random_uuid())",
                b.tenant_id()
            ),
            3,
        ),
        (
            format!(
                "INSERT INTO \"{other}\".notes (id, body) VALUES (gen_random_uuid(), 'planted')"
            ),
            4,
        ),
    ];
    for (sql, slot) in writes {
        sqlx::raw_sql("SAVEPOINT w")
            .execute(&mut *tx)
            .await
            .unwrap();
        match sqlx::raw_sql(&sql).execute(&mut *tx).await {
            Ok(r) => out[slot] = r.rows_affected() as i64,
            Err(e) => {
                assert!(
                    matches!(sqlstate(&e).as_deref(), Some("42501" | "23514")),
                    "{sql}: {e}"
                );
                sqlx::raw_sql("ROLLBACK TO SAVEPOINT w")
                    .execute(&mut *tx)
                    .await
                    .unwrap();
            }
        }
    }
    sqlx::raw_sql(&format!("SET LOCAL search_path TO \"{other}\""))
        .execute(&mut *tx)
        .await
        .unwrap();
    out[5] = sqlx::query_scalar::<_, i64>("SELECT count(*) FROM customers")
        .fetch_one(&mut *tx)
        .await
        .unwrap()
        + sqlx::query_scalar::<_, i64>("SELECT count(*) FROM notes")
            .fetch_one(&mut *tx)
            .await
            .unwrap();
    tx.rollback().await.unwrap();
    out
}

#[tokio::test]
async fn a_schema_tenant_cannot_read_or_write_another_tenants_schema() {
    let env = TestDb::from_env().unwrap();
    let owner = env.owner_pool(2).await.unwrap();
    migrate::run(&mut owner.acquire().await.unwrap())
        .await
        .unwrap();
    let a = schema_tenant(&owner, "pin-a").await;
    let b = schema_tenant(&owner, "pin-b").await;
    let db = TenantDb::new(
        TenantDb::pool_options()
            .max_connections(2)
            .connect(&env.app_url)
            .await
            .unwrap(),
        env.seal_key().await.unwrap(),
    );
    fill(&db, &a).await;
    fill(&db, &b).await;
    assert_eq!(attack_schema(&db, &a, &b).await, [0; 6]);
    // B still sees its own rows (the pin is not a wall against its owner).
    let mut tx = db.begin(&b).await.unwrap();
    let own: i64 = sqlx::query_scalar("SELECT count(*) FROM customers")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(own, 1);
    tx.rollback().await.unwrap();

    // Broken twin: without the pin, A plants rows in B's schema and reads
    // B's table without a tenant column.
    let other = schema_of(&b);
    sqlx::raw_sql(&format!(
        "ALTER TABLE \"{other}\".customers DROP CONSTRAINT tenant_schema_pin; \
         DROP POLICY tenant_schema_pin ON \"{other}\".notes; \
         ALTER TABLE \"{other}\".notes DISABLE ROW LEVEL SECURITY"
    ))
    .execute(&owner)
    .await
    .unwrap();
    let unpinned = attack_schema(&db, &a, &b).await;
    assert_eq!(
        unpinned[1], 1,
        "B's notes readable without the pin: {unpinned:?}"
    );
    assert_eq!(
        unpinned[2], 1,
        "a row stamped A planted in B's schema: {unpinned:?}"
    );
    assert_eq!(unpinned[4], 1, "a note planted in B's schema: {unpinned:?}");
}
