//! Usage per calendar month on PostgreSQL and SQLite: the shared table
//! (`tenancy_testkit::monthly::calendar_months`), and its broken twin over
//! the same store.
#![cfg(all(feature = "calendar", feature = "sqlite"))]
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::sync::Arc;

use tenancy_core::{Placement, Tenant, TenantId};
use tenancy_sqlx::sqlite::SqliteControl;
use tenancy_sqlx::{PgMonthlyUsage, PgTenantStore, TenantDb, migrate};
use tenancy_testkit::TestDb;
use tenancy_testkit::monthly::{UncheckedMonthly, calendar_months};

fn tenant(slug: &str) -> Tenant {
    let id = TenantId::new_v4();
    let slug = format!("{slug}-{}", &id.to_string()[..8]);
    Tenant::new(id, slug.parse().unwrap(), &slug)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn monthly_usage_on_postgres() {
    let env = TestDb::from_env().unwrap();
    let owner = env.owner_pool(2).await.unwrap();
    {
        let mut conn = owner.acquire().await.unwrap();
        migrate::run(&mut conn).await.unwrap();
        migrate::grant_system_read(&mut conn, "tenancy_app")
            .await
            .unwrap();
    }
    let db = TenantDb::connect(&env.app_url, env.seal_key().await.unwrap())
        .await
        .unwrap();
    let t = tenant("monthly");
    PgTenantStore::new(owner.clone()).create(&t).await.unwrap();
    let report = calendar_months(Arc::new(PgMonthlyUsage::new(db.clone())), &t)
        .await
        .unwrap();
    println!(
        "monthly: path=postgres accepted={} refused={}",
        report.accepted, report.refused
    );
    let twin = tenant("monthly-twin");
    PgTenantStore::new(owner).create(&twin).await.unwrap();
    let err = calendar_months(
        Arc::new(UncheckedMonthly(Arc::new(PgMonthlyUsage::new(db)))),
        &twin,
    )
    .await
    .unwrap_err();
    println!("monthly: path=postgres-unchecked {err}");
    assert!(err.starts_with("2."), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn monthly_usage_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let control = SqliteControl::open(dir.path().join("c.sqlite3"))
        .await
        .unwrap();
    let t = tenant("monthly").with_placement(Placement::database("t_monthly").unwrap());
    control.tenants().create(&t).await.unwrap();
    let report = calendar_months(Arc::new(control.monthly_usage()), &t)
        .await
        .unwrap();
    println!(
        "monthly: path=sqlite accepted={} refused={}",
        report.accepted, report.refused
    );
}
