//! Converting an existing single-tenant table to a multi-tenant one in
//! place: the procedure's result passes the isolation audit, the existing
//! rows belong to the default tenant, new tenants start empty, legacy
//! inserts that do not name the tenant are stamped with the transaction's.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use sqlx::Row;
use tenancy_core::{Tenant, TenantContext, TenantId};
use tenancy_sqlx::TenantDb;
use tenancy_sqlx::audit::Audit;
use tenancy_sqlx::rls::{ApplyTenantTable, TenantTable};
use tenancy_testkit::TestDb;

fn tenant(slug: &str) -> TenantContext {
    TenantContext::new(Tenant::new(TenantId::new_v4(), slug.parse().unwrap(), slug))
}

#[tokio::test]
async fn a_single_tenant_table_is_converted_in_place() {
    let env = TestDb::from_env().unwrap();
    let schema = env.fresh_schema("legacy").await.unwrap();
    let owner = env.owner_pool(1).await.unwrap();
    let table = format!("\"{schema}\".customers");
    // The application as it was: one customer table, no tenants.
    sqlx::raw_sql(&format!(
        "CREATE TABLE {table} (id serial PRIMARY KEY, name text NOT NULL); \
         INSERT INTO {table} (name) VALUES ('Asha'), ('Ben'), ('Chen')"
    ))
    .execute(&owner)
    .await
    .unwrap();
    let first = tenant("first-customer");
    TenantTable::new("customers")
        .schema(&schema)
        .index_on(["id"])
        .grant_to("tenancy_app")
        .convert_from_single_tenant(&mut owner.acquire().await.unwrap(), first.tenant_id())
        .await
        .unwrap();
    sqlx::raw_sql(&format!(
        "GRANT USAGE ON SEQUENCE \"{schema}\".customers_id_seq TO tenancy_app"
    ))
    .execute(&owner)
    .await
    .unwrap();

    // The audit, as the application role, in strict mode.
    let app = env.app_pool(1).await.unwrap();
    Audit::new()
        .schema(&schema)
        .enforce(&mut app.acquire().await.unwrap())
        .await
        .unwrap();

    let db = TenantDb::connect(&env.app_url, env.seal_key().await.unwrap())
        .await
        .unwrap();
    let names = |ctx: TenantContext| {
        let (db, table) = (db.clone(), table.clone());
        async move {
            let mut tx = db.begin(&ctx).await.unwrap();
            let rows = sqlx::raw_sql(&format!("SELECT name FROM {table} ORDER BY name"))
                .fetch_all(&mut *tx)
                .await
                .unwrap();
            tx.commit().await.unwrap();
            rows.iter()
                .map(|r| r.get::<String, _>(0))
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        names(first.clone()).await,
        ["Asha", "Ben", "Chen"],
        "existing rows belong to the default tenant"
    );
    let second = tenant("second-customer");
    assert!(
        names(second.clone()).await.is_empty(),
        "a new tenant starts empty"
    );

    // Legacy code that never names the tenant: stamped from the transaction.
    let mut tx = db.begin(&second).await.unwrap();
    sqlx::raw_sql(&format!("INSERT INTO {table} (name) VALUES ('Dana')"))
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(names(second).await, ["Dana"]);
    assert_eq!(names(first).await.len(), 3);

    // Outside a tenant transaction: nothing visible, nothing insertable.
    let n: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
        .fetch_one(&app)
        .await
        .unwrap();
    assert_eq!(n, 0);
    let orphan = sqlx::raw_sql(&format!("INSERT INTO {table} (name) VALUES ('Nobody')"))
        .execute(&app)
        .await;
    assert!(orphan.is_err(), "an insert without a tenant must fail");
}
