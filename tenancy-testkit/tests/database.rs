//! Smoke test of the database `scripts/test` provisions: the roles are what
//! the isolation guarantees rely on.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use tenancy_testkit::TestDb;

#[derive(Debug, sqlx::FromRow, PartialEq)]
struct RoleFacts {
    current_user: String,
    rolsuper: bool,
    rolbypassrls: bool,
    rolcreaterole: bool,
}

async fn role_facts(pool: &sqlx::PgPool) -> RoleFacts {
    sqlx::query_as(
        "SELECT current_user::text AS current_user, rolsuper, rolbypassrls, rolcreaterole \
         FROM pg_roles WHERE rolname = current_user",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn application_role_is_not_superuser_bypassrls_or_owner() {
    let db = TestDb::from_env().unwrap();
    let app = db.app_pool(2).await.unwrap();
    let facts = role_facts(&app).await;
    assert_eq!(
        facts,
        RoleFacts {
            current_user: "tenancy_app".into(),
            rolsuper: false,
            rolbypassrls: false,
            rolcreaterole: false,
        }
    );
    // It owns no relation and no schema, and cannot create tables in public.
    let owned: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_class c JOIN pg_roles r ON r.oid = c.relowner \
         WHERE r.rolname = current_user",
    )
    .fetch_one(&app)
    .await
    .unwrap();
    assert_eq!(owned, 0);
    let create = sqlx::query("CREATE TABLE smoke_should_fail (id int)")
        .execute(&app)
        .await
        .unwrap_err();
    assert!(create.to_string().contains("permission denied"), "{create}");
}

#[tokio::test]
async fn owner_role_is_not_superuser_and_owns_the_database() {
    let db = TestDb::from_env().unwrap();
    let owner = db.owner_pool(1).await.unwrap();
    let facts = role_facts(&owner).await;
    assert_eq!(facts.current_user, "tenancy_owner");
    assert!(!facts.rolsuper && !facts.rolbypassrls);
    let db_owner: String = sqlx::query_scalar(
        "SELECT pg_get_userbyid(datdba)::text FROM pg_database WHERE datname = current_database()",
    )
    .fetch_one(&owner)
    .await
    .unwrap();
    assert_eq!(db_owner, "tenancy_owner");
}

#[tokio::test]
async fn missing_environment_gives_an_actionable_error() {
    let err = tenancy_testkit::TestkitError::MissingVar(tenancy_testkit::APP_URL_VAR);
    assert!(err.to_string().contains("scripts/test"));
}
