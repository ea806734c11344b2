//! The sealed binding through diesel, sync (r2d2) and async (deadpool):
//! SQL run inside `transaction_for` that rewrites the tenant setting sees
//! none of the other tenant's rows and cannot write them — the same server
//! side as tenancy-sqlx, reached through diesel's own `BEGIN` message.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod common;

use diesel::connection::SimpleConnection;
use diesel::sql_types::BigInt;
use tenancy_core::TenantContext;
use tenancy_diesel::{AsyncTenantPool, Error, TenantPool};
use tenancy_testkit::TestDb;

#[derive(diesel::QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// The re-scoping statements an injection could run.
fn switches(b: &TenantContext) -> [String; 3] {
    let b = b.tenant_id();
    [
        format!("SELECT set_config('app.tenant_id', '{b}', true)"),
        format!("SET LOCAL app.tenant_id = '{b}'"),
        "RESET app.tenant_id".to_owned(),
    ]
}

fn count_sql(schema: &str, b: &TenantContext) -> String {
    format!(
        "SELECT count(*) AS n FROM \"{schema}\".customers WHERE tenant_id = '{}'",
        b.tenant_id()
    )
}

/// One row for each of `tenants`, written through `pool`.
fn seed(pool: &TenantPool, schema: &str, tenants: &[TenantContext]) {
    for t in tenants {
        pool.transaction_for(t, |conn| {
            conn.batch_execute(&format!(
                "INSERT INTO \"{schema}\".customers (tenant_id, id, value) \
                 VALUES ('{}', gen_random_uuid(), 1)",
                t.tenant_id()
            ))?;
            Ok::<_, Error>(())
        })
        .unwrap();
    }
}

#[test]
fn rewriting_the_tenant_setting_through_r2d2_shows_and_changes_nothing() {
    let env = TestDb::from_env().unwrap();
    let schema = "diesel_sealed_sync";
    common::create_schema(&env, schema, common::Walls::Rls);
    let pool = TenantPool::connect(&env.app_url, common::seal_key(&env)).unwrap();
    let ts = common::tenants(2, "dsealed");
    let (a, b) = (&ts[0], &ts[1]);
    seed(&pool, schema, &ts);
    for switch in switches(b) {
        let (seen, planted) = pool
            .transaction_for(a, |conn| {
                use diesel::RunQueryDsl;
                conn.batch_execute(&switch)?;
                let seen = diesel::sql_query(count_sql(schema, b))
                    .get_result::<Count>(conn)?
                    .n;
                let planted = conn.batch_execute(&format!(
                    "INSERT INTO \"{schema}\".customers (tenant_id, id, value) \
                     VALUES ('{}', gen_random_uuid(), 2)",
                    b.tenant_id()
                ));
                Ok::<_, Error>((seen, planted.is_ok()))
            })
            .unwrap_or((0, false));
        assert_eq!(seen, 0, "{switch}: B's row visible");
        assert!(!planted, "{switch}: a row planted for B");
    }
    // B still has exactly its own row.
    let own = pool
        .transaction_for(b, |conn| {
            use diesel::RunQueryDsl;
            Ok::<_, Error>(
                diesel::sql_query(count_sql(schema, b))
                    .get_result::<Count>(conn)?
                    .n,
            )
        })
        .unwrap();
    assert_eq!(own, 1);

    // Broken twin: the policy shape that trusts the setting serves B.
    let legacy = tenancy_core::rls::unsealed_predicate("tenant_id");
    let mut owner =
        <diesel::PgConnection as diesel::Connection>::establish(&env.owner_url).unwrap();
    owner
        .batch_execute(&format!(
            "ALTER POLICY tenant_isolation ON \"{schema}\".customers USING ({legacy}) WITH CHECK ({legacy})"
        ))
        .unwrap();
    let leaked = pool
        .transaction_for(a, |conn| {
            use diesel::RunQueryDsl;
            conn.batch_execute(&switches(b)[0])?;
            Ok::<_, Error>(
                diesel::sql_query(count_sql(schema, b))
                    .get_result::<Count>(conn)?
                    .n,
            )
        })
        .unwrap();
    assert_eq!(
        leaked, 1,
        "the unsealed twin must leak, or this test proves nothing"
    );
}

#[tokio::test]
async fn rewriting_the_tenant_setting_through_diesel_async_shows_nothing() {
    let env = TestDb::from_env().unwrap();
    let schema = "diesel_sealed_async";
    common::create_schema(&env, schema, common::Walls::Rls);
    let ts = common::tenants(2, "dsealeda");
    let (a, b) = (&ts[0], &ts[1]);
    seed(
        &TenantPool::connect(&env.app_url, common::seal_key(&env)).unwrap(),
        schema,
        &ts,
    );
    let pool = AsyncTenantPool::connect(&env.app_url, 2, common::seal_key(&env)).unwrap();
    for switch in switches(b) {
        let sql = count_sql(schema, b);
        let seen = pool
            .transaction_for(a, async |conn| {
                use diesel_async::{RunQueryDsl, SimpleAsyncConnection};
                conn.batch_execute(&switch).await?;
                Ok::<_, Error>(diesel::sql_query(sql).get_result::<Count>(conn).await?.n)
            })
            .await
            .unwrap_or(0);
        assert_eq!(seen, 0, "{switch}: B's row visible through diesel-async");
    }
}
