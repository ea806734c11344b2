//! Sign-in attempt counters in PostgreSQL, as the application role: the
//! rules through the store, and exact charges when two pools (as two
//! processes would) race for one account — with a broken twin that reads
//! without the row lock.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::PgPool;
use tenancy_core::StoreError;
use tenancy_core::signin::{AttemptState, AttemptStore};
use tenancy_sqlx::{PgAttempts, migrate};
use tenancy_testkit::TestDb;
use tenancy_testkit::signin::{admitted_under_concurrency, rules_hold};
use tokio::sync::OnceCell;

static MIGRATED: OnceCell<()> = OnceCell::const_new();

/// A pool of the application role on a migrated database.
async fn app_pool(max: u32) -> PgPool {
    let env = TestDb::from_env().unwrap();
    MIGRATED
        .get_or_init(|| async {
            let owner = env.owner_pool(1).await.unwrap();
            let mut conn = owner.acquire().await.unwrap();
            migrate::run(&mut conn).await.unwrap();
            migrate::grant_system_read(&mut conn, "tenancy_app")
                .await
                .unwrap();
        })
        .await;
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(max)
        .connect(&env.app_url)
        .await
        .unwrap()
}

fn unique() -> String {
    uuid::Uuid::new_v4().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rules_hold_through_postgres() {
    rules_hold(Arc::new(PgAttempts::new(app_pool(2).await)), &unique()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_pools_racing_for_one_account_admit_exactly_five() {
    let stores: Vec<Arc<dyn AttemptStore>> = vec![
        Arc::new(PgAttempts::new(app_pool(8).await)),
        Arc::new(PgAttempts::new(app_pool(8).await)),
    ];
    let admitted = admitted_under_concurrency(&stores, &unique(), 64).await;
    assert_eq!(admitted, 5);

    // Twin: the same updates without the row lock (read, then write in
    // another statement) let concurrent guesses through.
    let racy: Vec<Arc<dyn AttemptStore>> = vec![
        Arc::new(Unlocked(app_pool(8).await)),
        Arc::new(Unlocked(app_pool(8).await)),
    ];
    let admitted = admitted_under_concurrency(&racy, &unique(), 64).await;
    assert!(admitted > 5, "without the lock {admitted} were admitted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_table_holds_digests_not_emails_and_expired_rows_are_pruned() {
    let pool = app_pool(2).await;
    let store = PgAttempts::new(pool.clone());
    let guard = tenancy_core::signin::SignInGuard::new(Arc::new(store));
    let email = format!("{}@example.com", unique());
    guard
        .begin(&email, Some([203, 0, 113, 1].into()))
        .await
        .unwrap()
        .failed()
        .await
        .unwrap();
    let env = TestDb::from_env().unwrap();
    let admin = env.admin_pool(1).await.unwrap();
    let keys: Vec<String> = sqlx::query_scalar("SELECT key FROM tenancy.signin_attempts")
        .fetch_all(&admin)
        .await
        .unwrap();
    assert!(
        keys.iter()
            .all(|k| k.starts_with("signin:") && !k.contains('@') && !k.contains("203.0"))
    );
    // Only this test's rows: the other tests of this binary run meanwhile
    // on the same table.
    let ours = [
        tenancy_core::signin::SignInGuard::account_key(&email),
        tenancy_core::signin::SignInGuard::client_key([203, 0, 113, 1].into()),
    ];
    let expired = sqlx::query(
        "UPDATE tenancy.signin_attempts SET expires_at = now() - interval '1 second' \
         WHERE key = ANY($1)",
    )
    .bind(&ours[..])
    .execute(&admin)
    .await
    .unwrap();
    assert_eq!(expired.rows_affected(), 2);
    assert!(PgAttempts::new(pool).prune().await.unwrap() >= 2);
}

/// The broken twin: no `FOR UPDATE`, and a pause between read and write.
struct Unlocked(PgPool);

#[async_trait]
impl AttemptStore for Unlocked {
    async fn update(
        &self,
        key: &str,
        _keep: Duration,
        update: &(dyn Fn(AttemptState) -> AttemptState + Send + Sync),
    ) -> Result<(AttemptState, AttemptState), StoreError> {
        let row: Option<(i32, i64, i64)> = sqlx::query_as(
            "SELECT attempts, locked_until_ms, last_ms FROM tenancy.signin_attempts WHERE key = $1",
        )
        .bind(key)
        .fetch_optional(&self.0)
        .await
        .map_err(StoreError::new)?;
        let before = row.map_or_else(AttemptState::default, |(a, l, t)| {
            AttemptState::new(a as u32, l as u64, t as u64)
        });
        let after = update(before);
        tokio::time::sleep(Duration::from_millis(5)).await;
        sqlx::query(
            "INSERT INTO tenancy.signin_attempts (key, attempts, locked_until_ms, last_ms, expires_at) \
             VALUES ($1, $2, $3, $4, now() + interval '1 hour') ON CONFLICT (key) DO UPDATE \
             SET attempts = $2, locked_until_ms = $3, last_ms = $4",
        )
        .bind(key)
        .bind(after.attempts as i32)
        .bind(after.locked_until_ms as i64)
        .bind(after.last_ms as i64)
        .execute(&self.0)
        .await
        .map_err(StoreError::new)?;
        Ok((before, after))
    }
}
