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
        sqlx::raw_sql(&breakage.replace("{t}", &format!("\"{schema}\".t")))
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
         USING (tenant_id = (SELECT NULLIF(current_setting('app.tenant_id', true), '')::uuid))",
    )
    .await;
    assert!(
        report.findings.contains(&Finding::MissingWithCheck {
            table: table(&schema),
            policy: "tenant_isolation".into()
        }),
        "{report}"
    );
    assert!(report.findings.contains(&Finding::NoTenantPolicy {
        table: table(&schema)
    }));
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
    assert_eq!(
        report.findings,
        vec![Finding::RoleOwnsTable {
            table: table(&schema),
            owner: "tenancy_owner".into()
        }]
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
