//! Sign-in attempt counters in Redis: the rules through the store, and exact
//! charges when two connections (as two processes would) race for one account.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::sync::Arc;

use tenancy_core::StoreError;
use tenancy_core::signin::{AttemptState, AttemptStore};
use tenancy_redis::RedisAttempts;
use tenancy_testkit::signin::{admitted_under_concurrency, rules_hold};

async fn store() -> RedisAttempts {
    RedisAttempts::connect(&tenancy_testkit::redis_url().unwrap())
        .await
        .unwrap()
}

fn unique() -> String {
    tenancy_core::TenantId::new_v4().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rules_hold_through_redis() {
    rules_hold(Arc::new(store().await), &unique()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_connections_racing_for_one_account_admit_exactly_five() {
    let stores: Vec<Arc<dyn AttemptStore>> = vec![Arc::new(store().await), Arc::new(store().await)];
    assert_eq!(admitted_under_concurrency(&stores, &unique(), 64).await, 5);

    // Twin: read and write back without the compare-and-set.
    let racy: Vec<Arc<dyn AttemptStore>> = vec![
        Arc::new(Unchecked(conn().await)),
        Arc::new(Unchecked(conn().await)),
    ];
    let admitted = admitted_under_concurrency(&racy, &unique(), 64).await;
    assert!(
        admitted > 5,
        "without the compare-and-set {admitted} were admitted"
    );
}

async fn conn() -> redis::aio::ConnectionManager {
    let client = redis::Client::open(tenancy_testkit::redis_url().unwrap()).unwrap();
    redis::aio::ConnectionManager::new(client).await.unwrap()
}

/// The broken twin: GET, a pause, SET.
struct Unchecked(redis::aio::ConnectionManager);

#[async_trait::async_trait]
impl AttemptStore for Unchecked {
    async fn update(
        &self,
        key: &str,
        _keep: std::time::Duration,
        update: &(dyn Fn(AttemptState) -> AttemptState + Send + Sync),
    ) -> Result<(AttemptState, AttemptState), StoreError> {
        use redis::AsyncCommands;
        let mut conn = self.0.clone();
        let key = format!("tenancy:twin:{key}");
        let current: Option<String> = conn.get(&key).await.map_err(StoreError::new)?;
        let before = current
            .as_deref()
            .and_then(AttemptState::decode)
            .unwrap_or_default();
        let after = update(before);
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        let () = conn
            .set_ex(&key, after.encode(), 60)
            .await
            .map_err(StoreError::new)?;
        Ok((before, after))
    }
}
