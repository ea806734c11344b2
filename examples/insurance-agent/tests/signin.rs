//! Sign-in under hostile traffic, over real HTTP: back-off and lockout per
//! account and per client address (unknown and known emails alike),
//! forwarded addresses believed only from trusted proxies, refused sign-ins
//! in the tenant's audit log with address and user agent, and a sign-in
//! flood that does not slow another tenant down.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use insurance_agent::app::Security;
use insurance_agent::seed::DEMO_PASSWORD;
use serde_json::{Value, json};
use tenancy_core::client::TrustedProxies;
use tenancy_core::signin::AttemptRule;
use tenancy_testkit::http::{RawResponse, request, send, with_headers};

#[macro_use]
mod common;
use common::*;

on_both_backends!(
    wrong_passwords_back_off_and_unknown_emails_are_answered_alike,
    client_addresses_are_limited_and_forwarded_ones_believed_only_from_trusted_proxies,
);

const SUNRISE: &str = "sunrise-insurance";

async fn sign_in(
    addr: SocketAddr,
    email: &str,
    password: &str,
    headers: &[(&str, &str)],
) -> RawResponse {
    let body = json!({"email": email, "password": password, "tenant": SUNRISE});
    let req = with_headers(request("POST", "/auth/login", None, Some(&body)), headers);
    send(addr, &req).await.unwrap()
}

/// The body without the seconds to wait (they depend on when it is asked).
fn shape(r: &RawResponse) -> Value {
    let mut body = r.json();
    body.as_object_mut().unwrap().remove("retry_after");
    json!({"status": r.status, "body": body})
}

async fn wrong_passwords_back_off_and_unknown_emails_are_answered_alike(backend: Backend) {
    // The client rule is loose here: this test is about the account rule,
    // whose first back-off is long enough (4 s) that a loaded machine's
    // slow hashing cannot outlast it between the lockout and the check.
    let security = Security {
        client_rule: AttemptRule::client().with_free(1000),
        account_rule: AttemptRule::account().with_backoff(Duration::from_secs(4)),
        ..Security::default()
    };
    let app = start_configured(backend, None, security).await;
    let addr = app.running.addr;
    let mut known = Vec::new();
    let mut unknown = Vec::new();
    for _ in 0..6 {
        known.push(sign_in(addr, "agent@sunrise.test", "Wrong-passw0rd", &[]).await);
        unknown.push(sign_in(addr, "nobody@sunrise.test", "Wrong-passw0rd", &[]).await);
    }
    for r in &known[..5] {
        assert_problem(r, 401, "app.unauthorized");
    }
    let locked = &known[5];
    assert_problem(locked, 429, "sign-in-throttled");
    assert!(locked.header("retry-after").is_some(), "{locked:?}");
    // An unknown email gets exactly the same answers, in the same order.
    for (k, u) in known.iter().zip(&unknown) {
        assert_eq!(shape(k), shape(u));
        // The same wait, give or take the second boundary the two requests
        // (made a moment apart) may fall on either side of.
        let secs = |r: &RawResponse| r.header("retry-after").map(|v| v.parse::<i64>().unwrap());
        match (secs(k), secs(u)) {
            (Some(a), Some(b)) => assert!((a - b).abs() <= 1, "retry-after {a} vs {b}"),
            (a, b) => assert_eq!(a, b),
        }
    }
    // While backing off, even the right password is refused...
    let right = sign_in(addr, "agent@sunrise.test", DEMO_PASSWORD, &[]).await;
    assert_problem(&right, 429, "sign-in-throttled");
    // ... and after the wait it signs in, which resets the account's count.
    tokio::time::sleep(Duration::from_millis(4100)).await;
    let right = sign_in(addr, "agent@sunrise.test", DEMO_PASSWORD, &[]).await;
    assert_eq!(right.status, 200, "{}", right.text());
    for _ in 0..4 {
        let again = sign_in(addr, "agent@sunrise.test", "Wrong-passw0rd", &[]).await;
        assert_problem(&again, 401, "app.unauthorized");
    }

    // Wrong password and unknown email take the same time (one argon2
    // verification each): medians within a factor of two.
    let mut t_known = Vec::new();
    let mut t_unknown = Vec::new();
    // Five each: the manager's back-off would start at the sixth.
    for i in 0..5 {
        let email = format!("timing{i}@sunrise.test");
        let started = Instant::now();
        sign_in(addr, &email, "Wrong-passw0rd", &[]).await;
        t_unknown.push(started.elapsed());
        let started = Instant::now();
        sign_in(addr, "manager@sunrise.test", &format!("Wrong-{i}"), &[]).await;
        t_known.push(started.elapsed());
    }
    let (k, u) = (median(&mut t_known), median(&mut t_unknown));
    assert!(
        k < u * 2 && u < k * 2,
        "wrong password {k:?} vs unknown email {u:?}"
    );
    app.running.stop().await.unwrap();
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

async fn client_addresses_are_limited_and_forwarded_ones_believed_only_from_trusted_proxies(
    backend: Backend,
) {
    let security = Security {
        trusted_proxies: TrustedProxies::parse("127.0.0.1").unwrap(),
        client_rule: AttemptRule::client()
            .with_free(3)
            .with_lockout(Duration::from_secs(600), 3),
        ..Security::default()
    };
    let app = start_configured(backend, None, security).await;
    let addr = app.running.addr;
    let from = |ip: &'static str| [("x-forwarded-for", ip), ("user-agent", "guesser/1.0")];
    // One client guessing across many accounts: three failures, then locked
    // out — a different email each time does not help.
    for i in 0..3 {
        let r = sign_in(
            addr,
            &format!("user{i}@sunrise.test"),
            "x",
            &from("203.0.113.7"),
        )
        .await;
        assert_problem(&r, 401, "app.unauthorized");
    }
    let r = sign_in(addr, "user9@sunrise.test", "x", &from("203.0.113.7")).await;
    assert_problem(&r, 429, "sign-in-throttled");
    // Another client (the proxy forwards its address) is not affected.
    let token = {
        let r = sign_in(
            addr,
            "admin@sunrise.test",
            DEMO_PASSWORD,
            &from("198.51.100.20"),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()["token"].as_str().unwrap().to_owned()
    };
    // A client behind the trusted proxy cannot pose as another by writing
    // its own X-Forwarded-For: the proxy appends the real address, which is
    // the one counted.
    let r = sign_in(
        addr,
        "user9@sunrise.test",
        "x",
        &[("x-forwarded-for", "198.51.100.99, 203.0.113.7")],
    )
    .await;
    assert_problem(&r, 429, "sign-in-throttled");
    // A trusted proxy's unreadable header is refused, not guessed at.
    let r = sign_in(
        addr,
        "user9@sunrise.test",
        "x",
        &[("x-forwarded-for", "not-an-address")],
    )
    .await;
    assert_problem(&r, 400, "forwarded-invalid");

    // The failures are in the tenant's audit log with address and agent;
    // the emails (no member's) are not.
    let r = call(
        addr,
        "GET",
        "/audit?action=login_failed&limit=1000",
        Some(&token),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let items = r.json()["items"].as_array().unwrap().clone();
    let from_guesser: Vec<&Value> = items
        .iter()
        .filter(|e| e["event"]["ip"] == "203.0.113.7")
        .collect();
    // Three wrong passwords, and the first refusal (refusals are audited once a minute per email and client).
    assert!(from_guesser.len() >= 4, "{items:#?}");
    assert!(
        from_guesser
            .iter()
            .all(|e| e["event"]["user_agent"] == "guesser/1.0"),
        "{from_guesser:#?}"
    );
    assert!(!r.text().contains("user0@sunrise.test"), "{}", r.text());
    let reasons: Vec<&str> = from_guesser
        .iter()
        .map(|e| e["event"]["details"]["reason"].as_str().unwrap())
        .collect();
    assert!(reasons.contains(&"sign-in-throttled"), "{reasons:?}");
    // Successful sign-ins, and every event recorded through the pipeline's
    // context, carry the forwarded client address too.
    let r = call(addr, "GET", "/audit?action=login", Some(&token), None).await;
    let logins = r.json()["items"].as_array().unwrap().clone();
    assert!(
        logins
            .iter()
            .any(|e| e["event"]["ip"] == "198.51.100.20"
                && e["event"]["user_agent"] == "guesser/1.0"),
        "{logins:#?}"
    );
    app.running.stop().await.unwrap();
}

/// Without trusted proxies, X-Forwarded-For is the client's own claim and
/// changes nothing: rotating it does not escape the per-client limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_trusted_proxies_a_spoofed_forwarded_header_is_ignored() {
    let security = Security {
        client_rule: AttemptRule::client().with_free(3),
        ..Security::default()
    };
    let app = start_configured(Backend::Sqlite, None, security).await;
    let addr = app.running.addr;
    let mut statuses = Vec::new();
    for i in 0..5 {
        let ip = format!("192.0.2.{i}");
        let r = sign_in(
            addr,
            &format!("u{i}@x.test"),
            "x",
            &[("x-forwarded-for", &ip)],
        )
        .await;
        statuses.push(r.status);
    }
    assert_eq!(statuses, [401, 401, 401, 429, 429]);
    app.running.stop().await.unwrap();
}

/// Another tenant's requests while 16 clients sign in as fast as they can.
/// `hashing_permits` bounds the password hashes computed at once.
async fn latency_under_a_sign_in_flood(hashing_permits: usize) -> (Duration, Duration) {
    let security = Security {
        // Every flood request really hashes: no throttling in the way.
        trusted_proxies: TrustedProxies::parse("127.0.0.1").unwrap(),
        client_rule: AttemptRule::client().with_free(1_000_000),
        account_rule: AttemptRule::account().with_free(1_000_000),
        hashing_permits,
        ..Security::default()
    };
    let app = start_configured(Backend::Sqlite, None, security).await;
    let addr = app.running.addr;
    let asha = login(addr, "admin@bharat.test", "bharat-agents").await;
    let probe = |n: usize| {
        let asha = asha.clone();
        async move {
            let mut times = Vec::new();
            for _ in 0..n {
                let started = Instant::now();
                let r = call(addr, "GET", "/me", Some(&asha), None).await;
                assert_eq!(r.status, 200, "{}", r.text());
                times.push(started.elapsed());
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            median(&mut times)
        }
    };
    let idle = probe(30).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut flood = Vec::new();
    for c in 0..16 {
        let stop = stop.clone();
        flood.push(tokio::spawn(async move {
            let ip = format!("203.0.113.{c}");
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let email = format!("flood{c}-{n}@sunrise.test");
                let r = sign_in(addr, &email, "Wrong-passw0rd", &[("x-forwarded-for", &ip)]).await;
                assert!(matches!(r.status, 401 | 503), "{}", r.text());
                n += 1;
            }
            n
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let busy = probe(30).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut attempts = 0;
    for f in flood {
        attempts += f.await.unwrap();
    }
    assert!(attempts > 16, "the flood made {attempts} attempts");
    app.running.stop().await.unwrap();
    (idle, busy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sign_in_flood_does_not_slow_another_tenant() {
    let (idle, busy) =
        latency_under_a_sign_in_flood(insurance_agent::auth::default_hashing_permits()).await;
    assert!(
        busy <= idle * 3,
        "another tenant's GET /me: {idle:?} idle, {busy:?} under the flood"
    );
    // Twin: the same flood with hashing unbounded (one thread per sign-in)
    // takes the other cores too.
    let (idle, busy) = latency_under_a_sign_in_flood(64).await;
    assert!(
        busy > idle * 3,
        "without the bound the flood should slow others down: {idle:?} idle, {busy:?} busy"
    );
}

/// One member (or one stolen token) spends their own hourly budget, not the
/// tenant's: colleagues are still served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_member_spending_their_budget_leaves_colleagues_served() {
    let plans_dir = tempfile::tempdir().unwrap();
    let plans = plans_dir.path().join("plans.toml");
    let catalog = insurance_agent::app::PLANS.replace(
        "api_calls_per_user = { rate = { per_hour = 200000 } }",
        "api_calls_per_user = { rate = { per_hour = 4 } }",
    );
    assert_ne!(catalog, insurance_agent::app::PLANS);
    std::fs::write(&plans, catalog).unwrap();
    let app = start_configured(Backend::Sqlite, Some(plans), Security::default()).await;
    let addr = app.running.addr;
    let agent = login(addr, "agent@sunrise.test", "sunrise-insurance").await;
    let manager = login(addr, "manager@sunrise.test", "sunrise-insurance").await;
    for i in 0..4 {
        let r = call(addr, "GET", "/me", Some(&agent), None).await;
        assert_eq!(r.status, 200, "call {i}: {}", r.text());
    }
    let refused = call(addr, "GET", "/me", Some(&agent), None).await;
    assert_problem(&refused, 429, "rate-limited");
    assert_eq!(refused.header("ratelimit-limit"), Some("4"));
    assert_eq!(refused.header("ratelimit-remaining"), Some("0"));
    assert!(refused.header("retry-after").is_some());
    let r = call(addr, "GET", "/me", Some(&manager), None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    app.running.stop().await.unwrap();
}
