//! The isolation audit catches each misconfiguration on its own.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use sqlx::PgPool;
use tenancy_sqlx::DbError;
use tenancy_sqlx::audit::{Audit, AuditReport, Finding};
use tenancy_sqlx::rls::{ApplyTenantTable, TenantTable};
use tenancy_testkit::TestDb;

/// A schema with one correctly isolated table `t`, then `breakage` applied by the owner.
async fn schema_with(breakage: &str) -> (TestDb, String) {
    let env = TestDb::from_env().unwrap();
    let schema = env.fresh_schema("audit").await.unwrap();
    let owner = env.owner_pool(1).await.unwrap();
    sqlx::query(&format!(
        "CREATE TABLE \"{schema}\".t (tenant_id uuid NOT NULL, id uuid NOT NULL, PRIMARY KEY (id))"
    ))
    .execute(&owner)
    .await
    .unwrap();
    TenantTable::new("t")
        .schema(&schema)
        .index_on(["id"])
        .grant_to("tenancy_app")
        .apply(&mut owner.acquire().await.unwrap())
        .await
        .unwrap();
    if !breakage.is_empty() {
        sqlx::raw_sql(
            &breakage
                .replace("{t}", &format!("\"{schema}\".t"))
                .replace("{s}", &format!("\"{schema}\"")),
        )
        .execute(&owner)
        .await
        .unwrap();
    }
    (env, schema)
}

async fn audit_as(pool: &PgPool, schema: &str) -> AuditReport {
    Audit::new()
        .schema(schema)
        .run(&mut pool.acquire().await.unwrap())
        .await
        .unwrap()
}

async fn audit_app(breakage: &str) -> (AuditReport, String) {
    let (env, schema) = schema_with(breakage).await;
    let app = env.app_pool(1).await.unwrap();
    (audit_as(&app, &schema).await, schema)
}

fn table(schema: &str) -> String {
    format!("{schema}.t")
}

#[tokio::test]
async fn a_correct_setup_is_clean() {
    let (report, schema) = audit_app("").await;
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.tables, vec![table(&schema)]);
    assert_eq!(report.role, "tenancy_app");
}

#[tokio::test]
async fn catches_rls_disabled() {
    let (report, schema) = audit_app("ALTER TABLE {t} DISABLE ROW LEVEL SECURITY").await;
    assert_eq!(
        report.findings,
        vec![Finding::RlsDisabled {
            table: table(&schema)
        }]
    );
}

#[tokio::test]
async fn catches_rls_not_forced() {
    let (report, schema) = audit_app("ALTER TABLE {t} NO FORCE ROW LEVEL SECURITY").await;
    assert_eq!(
        report.findings,
        vec![Finding::RlsNotForced {
            table: table(&schema)
        }]
    );
}

#[tokio::test]
async fn catches_missing_with_check() {
    let (report, schema) = audit_app(
        "DROP POLICY tenant_isolation ON {t}; \
         CREATE POLICY tenant_isolation ON {t} FOR ALL \
         USING (tenant_id = (SELECT tenancy.tenant()))",
    )
    .await;
    assert!(
        report.findings.contains(&Finding::MissingWithCheck {
            table: table(&schema),
            policy: "tenant_isolation".into()
        }),
        "{report}"
    );
}

#[tokio::test]
async fn catches_a_widening_permissive_policy() {
    let (report, schema) =
        audit_app("CREATE POLICY open_door ON {t} FOR SELECT USING (true)").await;
    assert_eq!(
        report.findings,
        vec![Finding::WideningPolicy {
            table: table(&schema),
            policy: "open_door".into()
        }]
    );
}

#[tokio::test]
async fn catches_nullable_tenant_id() {
    let (report, schema) = audit_app("ALTER TABLE {t} ALTER COLUMN tenant_id DROP NOT NULL").await;
    assert_eq!(
        report.findings,
        vec![Finding::NullableTenantColumn {
            table: table(&schema)
        }]
    );
}

#[tokio::test]
async fn catches_missing_tenant_leading_index() {
    let (env, schema) = schema_with("").await;
    let owner = env.owner_pool(1).await.unwrap();
    sqlx::raw_sql(&format!("DROP INDEX \"{schema}\".t_tenant_id_idx"))
        .execute(&owner)
        .await
        .unwrap();
    let report = audit_as(&env.app_pool(1).await.unwrap(), &schema).await;
    assert_eq!(
        report.findings,
        vec![Finding::NoTenantIndex {
            table: table(&schema)
        }]
    );
}

#[tokio::test]
async fn catches_superuser_role() {
    let (env, schema) = schema_with("").await;
    let report = audit_as(&env.admin_pool(1).await.unwrap(), &schema).await;
    assert!(report.findings.contains(&Finding::RoleIsSuperuser {
        role: "postgres".into()
    }));
}

#[tokio::test]
async fn catches_bypassrls_role() {
    let (env, schema) = schema_with("").await;
    let report = audit_as(&env.ops_pool(1).await.unwrap(), &schema).await;
    assert_eq!(
        report.findings,
        vec![Finding::RoleBypassesRls {
            role: "tenancy_ops".into()
        }]
    );
}

#[tokio::test]
async fn catches_role_that_owns_the_table() {
    let (env, schema) = schema_with("").await;
    let report = audit_as(&env.owner_pool(1).await.unwrap(), &schema).await;
    assert!(
        report.findings.contains(&Finding::RoleOwnsTable {
            table: table(&schema),
            owner: "tenancy_owner".into()
        }),
        "{report}"
    );
    // The owner may also create in its schemas: reported too.
    assert!(report.findings.contains(&Finding::RoleCanCreateInSchema {
        role: "tenancy_owner".into(),
        schema: schema.clone()
    }));
}

/// Policies that look like tenant isolation and are not. Each is added by
/// the owner to the correctly isolated table `t` (or replaces its policy);
/// the audit must name the table, the policy and the fix.
const NEAR_MISSES: &[(&str, &str, &str)] = &[
    (
        "setting not empty",
        "CREATE POLICY near ON {t} FOR ALL USING (current_setting('app.tenant_id', true) <> '') WITH CHECK (true)",
        "re-apply",
    ),
    (
        "sealed tenant is not null",
        "CREATE POLICY near ON {t} FOR ALL USING ((SELECT tenancy.tenant()) IS NOT NULL) \
         WITH CHECK ((SELECT tenancy.tenant()) IS NOT NULL)",
        "DROP POLICY near",
    ),
    (
        "or true",
        "CREATE POLICY near ON {t} FOR ALL USING (tenant_id = (SELECT tenancy.tenant()) OR true) \
         WITH CHECK (tenant_id = (SELECT tenancy.tenant()))",
        "DROP POLICY near",
    ),
    (
        "column equals itself",
        "CREATE POLICY near ON {t} FOR SELECT USING (tenant_id = tenant_id)",
        "DROP POLICY near",
    ),
    (
        "another setting name",
        "CREATE POLICY near ON {t} FOR ALL \
         USING (tenant_id = NULLIF(current_setting('app.tenant', true), '')::uuid) \
         WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant', true), '')::uuid)",
        "DROP POLICY near",
    ),
    (
        "coalesce to a fixed tenant",
        "CREATE POLICY near ON {t} FOR SELECT \
         USING (tenant_id = COALESCE((SELECT tenancy.tenant()), '6f1c0c8e-2d5b-4c1a-9a57-3f8e2b7d9c41'::uuid))",
        "DROP POLICY near",
    ),
    (
        "text LIKE",
        "CREATE POLICY near ON {t} FOR SELECT \
         USING (tenant_id::text LIKE (SELECT tenancy.tenant())::text || '%')",
        "DROP POLICY near",
    ),
    (
        "LIKE anything",
        "CREATE POLICY near ON {t} FOR SELECT USING (tenant_id::text LIKE '%')",
        "DROP POLICY near",
    ),
    (
        "permissive INSERT beside the tenant policy",
        "CREATE POLICY near ON {t} FOR INSERT WITH CHECK (true)",
        "DROP POLICY near",
    ),
    (
        "UPDATE whose check is open",
        "CREATE POLICY near ON {t} FOR UPDATE USING (tenant_id = (SELECT tenancy.tenant())) WITH CHECK (true)",
        "DROP POLICY near",
    ),
    (
        "DELETE open",
        "CREATE POLICY near ON {t} FOR DELETE USING (tenant_id IS NOT NULL)",
        "DROP POLICY near",
    ),
    (
        "a wrapper function that is not the library's",
        "CREATE FUNCTION {s}.my_tenant() RETURNS uuid LANGUAGE sql STABLE AS 'SELECT tenancy.tenant()'; \
         GRANT EXECUTE ON FUNCTION {s}.my_tenant() TO tenancy_app; \
         CREATE POLICY near ON {t} FOR ALL USING (tenant_id = (SELECT {s}.my_tenant())) \
         WITH CHECK (tenant_id = (SELECT {s}.my_tenant()))",
        "DROP POLICY near",
    ),
    (
        "the unsealed shape",
        "DROP POLICY tenant_isolation ON {t}; \
         CREATE POLICY near ON {t} FOR ALL \
         USING (tenant_id = (SELECT NULLIF(current_setting('app.tenant_id', true), '')::uuid)) \
         WITH CHECK (tenant_id = (SELECT NULLIF(current_setting('app.tenant_id', true), '')::uuid))",
        "re-apply",
    ),
    (
        "the tenant policy for another role",
        "DROP POLICY tenant_isolation ON {t}; \
         CREATE POLICY near ON {t} FOR ALL TO tenancy_ops \
         USING (tenant_id = (SELECT tenancy.tenant())) WITH CHECK (tenant_id = (SELECT tenancy.tenant()))",
        "TO PUBLIC",
    ),
    (
        "a restrictive policy only",
        "DROP POLICY tenant_isolation ON {t}; \
         CREATE POLICY near ON {t} AS RESTRICTIVE FOR ALL \
         USING (tenant_id = (SELECT tenancy.tenant())) WITH CHECK (tenant_id = (SELECT tenancy.tenant()))",
        "DROP POLICY near",
    ),
    (
        "a view without security_invoker",
        "CREATE VIEW {s}.near AS SELECT * FROM {t}; GRANT SELECT ON {s}.near TO tenancy_app",
        "security_invoker",
    ),
    (
        "a materialized view",
        "CREATE MATERIALIZED VIEW {s}.near AS SELECT * FROM {t}; GRANT SELECT ON {s}.near TO tenancy_app",
        "DROP MATERIALIZED VIEW",
    ),
    (
        "a foreign key that leaves out tenant_id",
        "CREATE TABLE {s}.near_links (tenant_id uuid NOT NULL, id uuid PRIMARY KEY, \
         parent uuid NOT NULL REFERENCES {t} (id))",
        "FOREIGN KEY (tenant_id",
    ),
    (
        "CREATE on the schema for the application role",
        "GRANT CREATE ON SCHEMA {s} TO tenancy_app",
        "REVOKE CREATE",
    ),
];

#[tokio::test]
async fn near_miss_policies_are_each_refused_with_table_policy_and_fix() {
    assert!(NEAR_MISSES.len() >= 15);
    for (what, breakage, fix) in NEAR_MISSES {
        let (report, schema) = audit_app(breakage).await;
        let text = report.to_string();
        assert!(!report.is_clean(), "{what}: accepted\n{text}");
        let line = text
            .lines()
            .find(|l| l.contains("FAIL") && l.contains(fix))
            .unwrap_or_else(|| panic!("{what}: no finding with the fix {fix:?}\n{text}"));
        assert!(
            line.contains(&schema),
            "{what}: the finding does not name the table or schema: {line}"
        );
        assert!(
            line.contains("near") || fix.starts_with("REVOKE"),
            "{what}: the policy is not named: {line}"
        );
        // Strict mode refuses.
        let (env, _) = (TestDb::from_env().unwrap(), ());
        let app = env.app_pool(1).await.unwrap();
        let strict = Audit::new()
            .schema(&schema)
            .enforce(&mut app.acquire().await.unwrap())
            .await;
        assert!(matches!(strict, Err(DbError::Audit(_))), "{what}");
    }
}

/// A foreign key that pairs the tenant columns is the safe shape: no finding.
#[tokio::test]
async fn a_foreign_key_that_pairs_tenant_id_is_accepted() {
    let (report, _) = audit_app(
        "ALTER TABLE {t} ADD UNIQUE (tenant_id, id); \
         CREATE TABLE {s}.links (tenant_id uuid NOT NULL, id uuid NOT NULL, parent uuid NOT NULL, \
             PRIMARY KEY (tenant_id, id), FOREIGN KEY (tenant_id, parent) REFERENCES {t} (tenant_id, id))",
    )
    .await;
    assert!(
        !report
            .findings
            .iter()
            .any(|f| matches!(f, Finding::ForeignKeyWithoutTenant { .. })),
        "{report}"
    );
    // The twin: the same link on `parent` alone is reported, naming both tables.
    let (report, _) = audit_app(
        "CREATE TABLE {s}.links (tenant_id uuid NOT NULL, id uuid NOT NULL, \
             parent uuid NOT NULL REFERENCES {t} (id), PRIMARY KEY (tenant_id, id))",
    )
    .await;
    assert!(
        report.findings.iter().any(|f| matches!(f,
            Finding::ForeignKeyWithoutTenant { table, referencing, .. }
                if table.ends_with(".t") && referencing.ends_with(".links"))),
        "{report}"
    );
}

#[tokio::test]
async fn partitions_without_their_own_policy_are_reported() {
    let (env, schema) = schema_with("").await;
    let owner = env.owner_pool(1).await.unwrap();
    let p = TenantTable::new("parted")
        .schema(&schema)
        .index_on(["id"])
        .grant_to("tenancy_app");
    sqlx::raw_sql(&format!(
        "CREATE TABLE \"{schema}\".parted (tenant_id uuid NOT NULL, id uuid NOT NULL) PARTITION BY HASH (tenant_id); \
         CREATE TABLE \"{schema}\".parted_0 PARTITION OF \"{schema}\".parted FOR VALUES WITH (MODULUS 2, REMAINDER 0); \
         CREATE TABLE \"{schema}\".parted_1 PARTITION OF \"{schema}\".parted FOR VALUES WITH (MODULUS 2, REMAINDER 1); \
         GRANT SELECT ON \"{schema}\".parted_0, \"{schema}\".parted_1 TO tenancy_app"
    ))
    .execute(&owner)
    .await
    .unwrap();
    p.apply(&mut owner.acquire().await.unwrap()).await.unwrap();
    // Only partition 1 gets a policy of its own.
    TenantTable::new("parted_1")
        .schema(&schema)
        .index_on(["id"])
        .grant_to("tenancy_app")
        .apply(&mut owner.acquire().await.unwrap())
        .await
        .unwrap();
    let report = audit_as(&env.app_pool(1).await.unwrap(), &schema).await;
    assert_eq!(
        report.findings,
        vec![Finding::UnprotectedPartition {
            table: format!("{schema}.parted"),
            partition: format!("{schema}.parted_0"),
        }],
        "{report}"
    );
}

#[tokio::test]
async fn a_definer_function_owned_by_a_bypassing_role_is_reported() {
    let (env, schema) = schema_with("").await;
    let admin = env.admin_pool(1).await.unwrap();
    sqlx::raw_sql(&format!(
        "CREATE FUNCTION \"{schema}\".peek() RETURNS bigint LANGUAGE sql SECURITY DEFINER \
         AS 'SELECT count(*) FROM \"{schema}\".t'; \
         GRANT EXECUTE ON FUNCTION \"{schema}\".peek() TO tenancy_app"
    ))
    .execute(&admin)
    .await
    .unwrap();
    let report = audit_as(&env.app_pool(1).await.unwrap(), &schema).await;
    assert_eq!(
        report.findings,
        vec![Finding::DefinerBypassesRls {
            table: table(&schema),
            function: format!("{schema}.peek()"),
            owner: "postgres".into(),
        }],
        "{report}"
    );
    // The twin: the same function owned by a role bound by the policies is fine.
    sqlx::raw_sql(&format!(
        "ALTER FUNCTION \"{schema}\".peek() OWNER TO tenancy_owner"
    ))
    .execute(&admin)
    .await
    .unwrap();
    let report = audit_as(&env.app_pool(1).await.unwrap(), &schema).await;
    assert!(report.is_clean(), "{report}");
}

#[tokio::test]
async fn an_application_role_with_temporary_tables_is_reported() {
    let env = TestDb::from_env().unwrap();
    let db = env.fresh_database("audit_temp").await.unwrap();
    let app = db.app_pool(1).await.unwrap();
    let before = Audit::new()
        .run(&mut app.acquire().await.unwrap())
        .await
        .unwrap();
    assert!(before.is_clean(), "{before}");
    let database = db.app_url.rsplit('/').next().unwrap().to_owned();
    sqlx::raw_sql(&format!(
        "GRANT TEMPORARY ON DATABASE \"{database}\" TO tenancy_app"
    ))
    .execute(&db.admin_pool(1).await.unwrap())
    .await
    .unwrap();
    let after = Audit::new()
        .run(&mut app.acquire().await.unwrap())
        .await
        .unwrap();
    assert_eq!(
        after.findings,
        vec![Finding::RoleCanCreateTemp {
            role: "tenancy_app".into(),
            database,
        }],
        "{after}"
    );
}

#[tokio::test]
async fn strict_mode_refuses_and_exemptions_are_honoured() {
    let (env, schema) = schema_with("ALTER TABLE {t} DISABLE ROW LEVEL SECURITY").await;
    let app = env.app_pool(1).await.unwrap();
    let mut conn = app.acquire().await.unwrap();
    let err = Audit::new()
        .schema(&schema)
        .enforce(&mut conn)
        .await
        .unwrap_err();
    match err {
        DbError::Audit(report) => {
            let text = report.to_string();
            assert!(text.contains("FAIL"), "{text}");
            assert!(text.contains("ENABLE ROW LEVEL SECURITY"), "{text}");
        }
        other => panic!("expected an audit error, got {other}"),
    }
    let exempted = Audit::new()
        .schema(&schema)
        .exempt(table(&schema))
        .enforce(&mut conn)
        .await
        .unwrap();
    assert!(exempted.tables.is_empty());
}
