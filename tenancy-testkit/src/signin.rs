//! Scenarios every sign-in attempt store passes (memory, PostgreSQL,
//! Redis): the rules applied through the store, and exact charges under
//! concurrency across store instances (as separate processes would share
//! the backend).
// Scenarios: a failed expectation is a failed test.
#![allow(clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tenancy_core::quota::ManualClock;
use tenancy_core::signin::{AttemptRule, AttemptStore, SignInError, SignInGuard, Throttled};

/// Back-off doubling from the fifth failure, lockout from the tenth, a
/// success resetting the account and only refunding the client, all read
/// back through `store`. `unique` keeps keys apart between runs.
pub async fn rules_hold(store: Arc<dyn AttemptStore>, unique: &str) {
    let clock = ManualClock::new(Duration::from_secs(2_000_000_000));
    let guard = SignInGuard::new(store)
        .with_clock(Arc::new(clock.clone()))
        .with_rules(AttemptRule::account(), AttemptRule::client().with_free(3));
    let account = format!("{unique}/ann@example.com");
    let mut waits = Vec::new();
    for _ in 0..12 {
        loop {
            match guard.begin(&account, None).await {
                Ok(a) => {
                    a.failed().await.expect("settle");
                    break;
                }
                Err(SignInError::Throttled { retry_after, by }) => {
                    assert_eq!(by, Throttled::Account);
                    waits.push(retry_after.as_secs());
                    clock.advance(retry_after);
                }
                Err(e) => panic!("{e}"),
            }
        }
    }
    assert_eq!(waits, [1, 2, 4, 8, 16, 900, 900], "back-off then lockout");
    clock.advance(Duration::from_secs(900));
    guard
        .begin(&account, None)
        .await
        .expect("after the lockout")
        .succeeded()
        .await
        .expect("settle");
    assert_eq!(
        guard.account_state(&account).await.expect("read").attempts,
        0,
        "reset on success"
    );

    // The client: two failures, a success elsewhere refunds only its own charge.
    // A fresh /64: stores outlive test runs.
    let ip = Some(std::net::IpAddr::from(std::net::Ipv6Addr::from(
        uuid::Uuid::new_v4().as_u128(),
    )));
    for i in 0..2 {
        guard
            .begin(&format!("{unique}/x{i}"), ip)
            .await
            .expect("free")
            .failed()
            .await
            .expect("settle");
    }
    guard
        .begin(&format!("{unique}/ok"), ip)
        .await
        .expect("free")
        .succeeded()
        .await
        .expect("settle");
    guard
        .begin(&format!("{unique}/y"), ip)
        .await
        .expect("third failure")
        .failed()
        .await
        .expect("settle");
    let refused = guard.begin(&format!("{unique}/z"), ip).await;
    assert!(
        matches!(
            refused,
            Err(SignInError::Throttled {
                by: Throttled::Client,
                ..
            })
        ),
        "{refused:?}"
    );
}

/// `tasks` concurrent guesses at one account, spread over guards on each of
/// `stores`: how many were admitted (the rule admits 5 before backing off).
pub async fn admitted_under_concurrency(
    stores: &[Arc<dyn AttemptStore>],
    account: &str,
    tasks: usize,
) -> u32 {
    let guards: Vec<SignInGuard> = stores.iter().map(|s| SignInGuard::new(s.clone())).collect();
    let admitted = Arc::new(AtomicU32::new(0));
    let start = Arc::new(tokio::sync::Barrier::new(tasks));
    let mut handles = Vec::new();
    for i in 0..tasks {
        let guard = guards[i % guards.len()].clone();
        let (admitted, start, account) = (admitted.clone(), start.clone(), account.to_owned());
        handles.push(tokio::spawn(async move {
            start.wait().await;
            match guard.begin(&account, None).await {
                Ok(a) => {
                    admitted.fetch_add(1, Ordering::SeqCst);
                    a.failed().await.expect("settle");
                }
                Err(SignInError::Throttled { .. }) => {}
                Err(e) => panic!("{e}"),
            }
        }));
    }
    for h in handles {
        h.await.expect("task");
    }
    admitted.load(Ordering::SeqCst)
}
