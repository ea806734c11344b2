//! The application's PostgreSQL schema (row-level isolation) passes
//! tenancy-sqlx's isolation audit in strict mode as the application role,
//! and its policies confine a tenant transaction to the tenant's rows.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use insurance_agent::id::Id;
use insurance_agent::postgres::schema_sql;
use tenancy_core::{Tenant, TenantContext, TenantId};
use tenancy_sqlx::TenantDb;
use tenancy_sqlx::audit::Audit;
use tenancy_testkit::TestDb;

#[tokio::test]
async fn the_app_schema_passes_the_strict_audit_and_isolates_tenants() {
    let env = TestDb::from_env().unwrap();
    let schema = env.fresh_schema("ia").await.unwrap();
    let owner = env.owner_pool(1).await.unwrap();
    for stmt in schema_sql(&schema, "tenancy_app") {
        sqlx::raw_sql(&stmt).execute(&owner).await.unwrap();
    }
    let app = TenantDb::pool_options()
        .max_connections(2)
        .connect(&env.app_url)
        .await
        .unwrap();
    let report = Audit::new()
        .schema(&schema)
        .enforce(&mut app.acquire().await.unwrap())
        .await
        .unwrap();
    assert!(report.is_clean(), "{report:?}");

    // Two tenants insert an agent each; each sees only its own, and a row
    // stamped with the other tenant is refused by the policy.
    let db = TenantDb::new(app, env.seal_key().await.unwrap());
    let ctx = |slug: &str| {
        TenantContext::new(Tenant::new(TenantId::new_v4(), slug.parse().unwrap(), slug))
    };
    let (a, b) = (ctx("pg-a"), ctx("pg-b"));
    let insert = format!(
        "INSERT INTO \"{schema}\".agents (tenant_id, id, agent_code, name, licence_number, \
         licence_expiry, regions, created_at) VALUES ($1, $2, 'A1', 'N', 'L', '2030-01-01', $3, now())"
    );
    for t in [&a, &b] {
        let mut tx = db.begin(t).await.unwrap();
        sqlx::query(&insert)
            .bind(Id::from(t.tenant_id()))
            .bind(Id::new())
            .bind(sqlx::types::Json(vec!["Goa"]))
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }
    let mut tx = db.begin(&a).await.unwrap();
    let seen: Vec<Id> = sqlx::query_scalar(&format!("SELECT tenant_id FROM \"{schema}\".agents"))
        .fetch_all(&mut *tx)
        .await
        .unwrap();
    assert_eq!(seen, [Id::from(a.tenant_id())]);
    let planted = sqlx::query(&insert)
        .bind(Id::from(b.tenant_id()))
        .bind(Id::new())
        .bind(sqlx::types::Json(vec!["Goa"]))
        .execute(&mut *tx)
        .await;
    assert!(planted.is_err(), "a row of another tenant is refused");
    drop(tx);
}
