//! The query DSL against a real PostgreSQL: `for_tenant` composes with
//! filters and joins and stays index-friendly, the write guard refuses
//! another tenant's rows, and tenancy-sqlx's isolation audit passes on the
//! schema tenancy-diesel sets up.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test
#![allow(missing_docs)] // diesel::table! items

mod common;

use diesel::connection::SimpleConnection;
use diesel::pg::PgConnection;
use diesel::{
    BoolExpressionMethods, Connection, ExpressionMethods, JoinOnDsl, QueryDsl, RunQueryDsl,
};
use tenancy_core::{TenantContext, TenantId, TenantScoped};
use tenancy_diesel::dsl::{TenantScopedTable, tenant_is, verified};
use tenancy_diesel::rls::TenantTable;
use tenancy_diesel::{Error, TenantPool};
use tenancy_testkit::TestDb;
use uuid::Uuid;

diesel::table! {
    diesel_dsl.customers (tenant_id, id) {
        tenant_id -> Uuid,
        id -> Uuid,
        name -> Text,
    }
}
diesel::table! {
    diesel_dsl.policies (tenant_id, id) {
        tenant_id -> Uuid,
        id -> Uuid,
        customer_id -> Uuid,
        premium -> BigInt,
    }
}
diesel::allow_tables_to_appear_in_same_query!(customers, policies);
tenancy_diesel::tenant_table!(customers);
tenancy_diesel::tenant_table!(policies);

struct NewCustomer {
    tenant_id: Uuid,
    id: Uuid,
    name: String,
}

impl TenantScoped for NewCustomer {
    fn tenant_id(&self) -> TenantId {
        TenantId::from_uuid(self.tenant_id).unwrap()
    }
}

/// Creates the schema once per test binary (the tests share it, each with
/// its own tenants).
fn setup(env: &TestDb) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| create(env));
}

fn create(env: &TestDb) {
    let mut owner = PgConnection::establish(&env.owner_url).unwrap();
    owner
        .batch_execute(
            "DROP SCHEMA IF EXISTS diesel_dsl CASCADE; CREATE SCHEMA diesel_dsl; \
             GRANT USAGE ON SCHEMA diesel_dsl TO tenancy_app; \
             CREATE TABLE diesel_dsl.customers (tenant_id uuid NOT NULL, id uuid NOT NULL, \
               name text NOT NULL, PRIMARY KEY (tenant_id, id)); \
             CREATE TABLE diesel_dsl.policies (tenant_id uuid NOT NULL, id uuid NOT NULL, \
               customer_id uuid NOT NULL, premium bigint NOT NULL, PRIMARY KEY (tenant_id, id))",
        )
        .unwrap();
    for t in ["customers", "policies"] {
        tenancy_diesel::rls::apply(
            &mut owner,
            &TenantTable::new(t)
                .schema("diesel_dsl")
                .index_on(["id"])
                .grant_to("tenancy_app"),
        )
        .unwrap();
    }
}

/// Two customers with one policy each for `ctx`.
fn seed(pool: &TenantPool, ctx: &TenantContext, premium: i64) -> Vec<Uuid> {
    pool.transaction_for(ctx, |conn| {
        let mut ids = Vec::new();
        for name in ["Ann", "Bob"] {
            let (customer, policy) = (Uuid::new_v4(), Uuid::new_v4());
            let row = NewCustomer {
                tenant_id: ctx.tenant_id().as_uuid(),
                id: customer,
                name: name.into(),
            };
            let rows = verified(ctx, std::slice::from_ref(&row))?;
            diesel::insert_into(customers::table)
                .values((
                    customers::tenant_id.eq(rows[0].tenant_id),
                    customers::id.eq(rows[0].id),
                    customers::name.eq(&rows[0].name),
                ))
                .execute(conn)?;
            diesel::insert_into(policies::table)
                .values((
                    policies::tenant_id.eq(ctx.tenant_id().as_uuid()),
                    policies::id.eq(policy),
                    policies::customer_id.eq(customer),
                    policies::premium.eq(premium),
                ))
                .execute(conn)?;
            ids.push(customer);
        }
        Ok::<_, Error>(ids)
    })
    .unwrap()
}

#[test]
fn for_tenant_composes_with_filters_joins_updates_and_deletes() {
    let env = TestDb::from_env().unwrap();
    setup(&env);
    let pool = TenantPool::connect(&env.app_url, common::seal_key(&env)).unwrap();
    let mut t = common::tenants(2, "dsl");
    let (acme, globex) = (t.remove(0), t.remove(0));
    let acme_ids = seed(&pool, &acme, 100);
    let globex_ids = seed(&pool, &globex, 999);

    pool.transaction_for(&acme, |conn| {
        // Filter + further filter.
        let names: Vec<String> = customers::table
            .for_tenant(&acme)
            .filter(customers::name.eq("Ann"))
            .select(customers::name)
            .load(conn)?;
        assert_eq!(names, ["Ann"]);
        // Join: both sides filtered to the tenant.
        let premiums: Vec<(String, i64)> = policies::table
            .inner_join(
                customers::table.on(customers::id
                    .eq(policies::customer_id)
                    .and(customers::tenant_id.eq(policies::tenant_id))),
            )
            .filter(tenant_is::<policies::table>(&acme))
            .filter(tenant_is::<customers::table>(&acme))
            .order(customers::name)
            .select((customers::name, policies::premium))
            .load(conn)?;
        assert_eq!(premiums, [("Ann".to_owned(), 100), ("Bob".to_owned(), 100)]);
        // Another tenant's id: not found, not updated, not deleted.
        let theirs: Option<String> = customers::table
            .for_tenant(&acme)
            .filter(customers::id.eq(globex_ids[0]))
            .select(customers::name)
            .first(conn)
            .map(Some)
            .or_else(|e| {
                if e == diesel::result::Error::NotFound {
                    Ok(None)
                } else {
                    Err(e)
                }
            })?;
        assert_eq!(theirs, None);
        let updated = diesel::update(
            customers::table
                .for_tenant(&acme)
                .filter(customers::id.eq(globex_ids[0])),
        )
        .set(customers::name.eq("hijacked"))
        .execute(conn)?;
        assert_eq!(updated, 0);
        let deleted = diesel::delete(
            policies::table
                .for_tenant(&acme)
                .filter(policies::customer_id.eq(globex_ids[1])),
        )
        .execute(conn)?;
        assert_eq!(deleted, 0);
        // Its own rows: updated.
        let mine = diesel::update(
            customers::table
                .for_tenant(&acme)
                .filter(customers::id.eq(acme_ids[1])),
        )
        .set(customers::name.eq("Bobby"))
        .execute(conn)?;
        assert_eq!(mine, 1);
        Ok::<_, Error>(())
    })
    .unwrap();

    let globex_names: Vec<String> = pool
        .transaction_for(&globex, |conn| {
            Ok::<_, Error>(
                customers::table
                    .for_tenant(&globex)
                    .order(customers::name)
                    .select(customers::name)
                    .load(conn)?,
            )
        })
        .unwrap();
    assert_eq!(
        globex_names,
        ["Ann", "Bob"],
        "the other tenant's rows are untouched"
    );
}

#[test]
fn the_write_guard_refuses_another_tenants_row_and_nothing_is_written() {
    let env = TestDb::from_env().unwrap();
    setup(&env);
    let pool = TenantPool::connect(&env.app_url, common::seal_key(&env)).unwrap();
    let mut t = common::tenants(2, "guard");
    let (acme, globex) = (t.remove(0), t.remove(0));
    let result: Result<(), Error> = pool.transaction_for(&acme, |conn| {
        diesel::insert_into(customers::table)
            .values((
                customers::tenant_id.eq(acme.tenant_id().as_uuid()),
                customers::id.eq(Uuid::new_v4()),
                customers::name.eq("written before the mistake"),
            ))
            .execute(conn)?;
        let foreign = NewCustomer {
            tenant_id: globex.tenant_id().as_uuid(),
            id: Uuid::new_v4(),
            name: "Eve".into(),
        };
        verified(&acme, &[foreign])?;
        Ok(())
    });
    let err = result.unwrap_err();
    assert!(
        matches!(err, Error::Mismatch(m) if m.expected == acme.tenant_id() && m.found == globex.tenant_id())
    );
    let count: i64 = pool
        .transaction_for(&acme, |conn| {
            Ok::<_, Error>(
                customers::table
                    .for_tenant(&acme)
                    .count()
                    .get_result(conn)?,
            )
        })
        .unwrap();
    assert_eq!(
        count, 0,
        "the refused transaction rolled back its earlier insert"
    );
    assert_eq!(
        Error::Mismatch(tenancy_core::TenantMismatch {
            expected: acme.tenant_id(),
            found: globex.tenant_id()
        })
        .status(),
        403
    );
}

#[test]
fn a_point_read_through_for_tenant_uses_the_tenant_index() {
    let env = TestDb::from_env().unwrap();
    setup(&env);
    // As superuser: forced row-level security binds even the owner.
    let mut admin = PgConnection::establish(&env.admin_url).unwrap();
    // Enough rows across tenants for the planner to prefer an index.
    admin
        .batch_execute(
            "INSERT INTO diesel_dsl.customers (tenant_id, id, name) \
             SELECT ('00000000-0000-4000-8000-' || lpad((g % 50)::text, 12, '0'))::uuid, gen_random_uuid(), 'n' \
             FROM generate_series(1, 20000) g; ANALYZE diesel_dsl.customers",
        )
        .unwrap();
    let ctx = common::tenants(1, "plan").remove(0);
    let query = customers::table
        .for_tenant(&ctx)
        .filter(customers::id.eq(Uuid::new_v4()))
        .select(customers::name);
    let sql = diesel::debug_query::<diesel::pg::Pg, _>(&query).to_string();
    assert!(sql.contains(r#""customers"."tenant_id" = $1"#), "{sql}");
    // EXPLAIN the same statement (the plan for the app role adds the policy
    // filter on the same column).
    let explain = format!(
        "EXPLAIN SELECT name FROM diesel_dsl.customers WHERE tenant_id = '{}' AND id = '{}'",
        ctx.tenant_id(),
        Uuid::new_v4()
    );
    #[derive(diesel::QueryableByName)]
    struct Plan {
        #[diesel(sql_type = diesel::sql_types::Text, column_name = "QUERY PLAN")]
        line: String,
    }
    let plan: Vec<Plan> = diesel::sql_query(explain).load(&mut admin).unwrap();
    let plan: Vec<String> = plan.into_iter().map(|p| p.line).collect();
    assert!(plan.iter().any(|l| l.contains("Index")), "{plan:#?}");
}

#[tokio::test]
async fn the_isolation_audit_passes_on_the_diesel_schema_and_catches_a_missing_wall() {
    let env = TestDb::from_env().unwrap();
    let setup_env = env.clone();
    tokio::task::spawn_blocking(move || {
        common::create_schema(&setup_env, "diesel_audit_ok", common::Walls::Rls);
        common::create_schema(&setup_env, "diesel_audit_bare", common::Walls::NoRls);
    })
    .await
    .unwrap();
    let app = env.app_pool(1).await.unwrap();
    let mut conn = app.acquire().await.unwrap();
    let report = tenancy_sqlx::audit::Audit::new()
        .schema("diesel_audit_ok")
        .enforce(&mut conn)
        .await
        .unwrap();
    assert_eq!(report.tables.len(), 3, "{report}");
    let bare = tenancy_sqlx::audit::Audit::new()
        .schema("diesel_audit_bare")
        .run(&mut conn)
        .await
        .unwrap();
    assert!(!bare.is_clean(), "tables without policies must be reported");
}
