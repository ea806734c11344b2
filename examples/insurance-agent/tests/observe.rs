//! Observability of the reference app: the Prometheus scrape after traffic
//! carries per-tenant request, latency, quota and usage series, pool and
//! audit-queue gauges; readiness probes each tenant's own data path;
//! refusals by the pipeline reach the tenant's audit log.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::time::Duration;

use insurance_agent::app::Security;
use serde_json::json;

#[macro_use]
mod common;
use common::*;

on_both_backends!(
    a_scrape_after_traffic_has_the_tenants_series,
    readiness_probes_every_tenants_own_data_path,
    refusals_by_the_pipeline_reach_the_tenants_audit_log,
);

/// The value of the first sample of `name` whose labels include every one
/// of `labels` (`key="value"`).
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.split(['{', ' ']).next().is_some_and(|n| n == name))
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

async fn a_scrape_after_traffic_has_the_tenants_series(backend: Backend) {
    let security = Security {
        metrics_token: Some("scrape-secret".into()),
        ..Security::default()
    };
    let app = start_configured(backend, None, security).await;
    let addr = app.running.addr;
    let sunrise = tenant(&app, "sunrise-insurance").await.id.to_string();
    let asha_id = tenant(&app, "asha-agency").await.id.to_string();
    let admin = login(addr, "admin@sunrise.test", "sunrise-insurance").await;
    let agent = login(addr, "agent@sunrise.test", "sunrise-insurance").await;
    for _ in 0..3 {
        assert_eq!(
            call(addr, "GET", "/me", Some(&admin), None).await.status,
            200
        );
    }
    assert_eq!(
        call(addr, "GET", "/audit", Some(&agent), None).await.status,
        403
    );
    // The free plan's agent limit: three, then refused.
    let asha = login(addr, "asha@asha.test", "asha-agency").await;
    for i in 0..4 {
        call(
            addr,
            "POST",
            "/agents",
            Some(&asha),
            Some(
                json!({"agent_code": format!("M{i}"), "name": "A", "licence_number": "L",
                        "licence_expiry": "2030-01-01"}),
            ),
        )
        .await;
    }
    // A plan request waits in the billing outbox (no webhook configured).
    let r = call(
        addr,
        "POST",
        "/plan",
        Some(&asha),
        Some(json!({"plan": "professional"})),
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.text());

    // The token: a wrong one is refused, the right one served.
    let wrong = tenancy_testkit::http::send(
        addr,
        &tenancy_testkit::http::get("/metrics", &[("Authorization", b"Bearer nope")]),
    )
    .await
    .unwrap();
    assert_eq!(wrong.status, 403, "{}", wrong.text());
    let scrape = tenancy_testkit::http::send(
        addr,
        &tenancy_testkit::http::get("/metrics", &[("Authorization", b"Bearer scrape-secret")]),
    )
    .await
    .unwrap();
    assert_eq!(scrape.status, 200, "{}", scrape.text());
    assert!(
        scrape
            .header("content-type")
            .unwrap()
            .starts_with("text/plain")
    );
    let text = scrape.text();
    let ok = sample(
        &text,
        "tenancy_requests_total",
        &[("tenant", &sunrise), ("status", "2xx")],
    );
    assert!(ok.unwrap_or(0.0) >= 3.0, "2xx of sunrise: {ok:?}\n{text}");
    let refused = sample(
        &text,
        "tenancy_requests_total",
        &[("tenant", &sunrise), ("status", "4xx")],
    );
    assert!(refused.unwrap_or(0.0) >= 1.0, "4xx of sunrise: {refused:?}");
    let count = sample(
        &text,
        "tenancy_request_duration_seconds_count",
        &[("tenant", &sunrise)],
    );
    assert!(count.unwrap_or(0.0) >= 4.0, "latency count: {count:?}");
    assert!(
        sample(
            &text,
            "tenancy_request_duration_seconds_bucket",
            &[("tenant", &sunrise), ("le", "0.005")]
        )
        .is_some(),
        "latency buckets missing"
    );
    let quota = sample(
        &text,
        "tenancy_quota_refusals_total",
        &[("tenant", &asha_id), ("resource", "agents")],
    );
    assert!(quota.unwrap_or(0.0) >= 1.0, "quota refusals: {quota:?}");
    let ratio = sample(
        &text,
        "tenancy_usage_ratio",
        &[("tenant", &asha_id), ("resource", "agents")],
    );
    assert_eq!(ratio, Some(1.0), "agents 3 of 3");
    let pools = match backend {
        Backend::Sqlite => sample(&text, "tenancy_pool_open", &[("placement", "database")]),
        Backend::Postgres => sample(
            &text,
            "tenancy_pool_connections",
            &[("placement", "shared")],
        ),
    };
    assert!(pools.unwrap_or(0.0) >= 1.0, "pool gauge: {pools:?}");
    assert!(sample(&text, "tenancy_audit_queue_depth", &[]).is_some());
    // Billing messages wait in the outbox (no webhook configured here).
    let billing = sample(&text, "tenancy_outbox_pending", &[("channel", "billing")]);
    assert!(
        billing.is_some_and(|n| n >= 1.0),
        "no pending billing messages counted"
    );
    app.running.stop().await.unwrap();
}

async fn readiness_probes_every_tenants_own_data_path(backend: Backend) {
    let app = start(backend).await;
    let addr = app.running.addr;
    assert_eq!(
        call(addr, "GET", "/health/live", None, None).await.status,
        200
    );
    let ready = call(addr, "GET", "/health/ready", None, None).await;
    assert_eq!(ready.status, 200, "{}", ready.text());
    assert_eq!(ready.json()["tenants"]["healthy"], 4, "{}", ready.text());
    // A tenant admin sees their tenant's probes; an agent does not.
    let admin = login(addr, "admin@sunrise.test", "sunrise-insurance").await;
    let own = call(addr, "GET", "/health/tenant", Some(&admin), None).await;
    assert_eq!(own.status, 200, "{}", own.text());
    assert_eq!(own.json()["status"], "healthy", "{}", own.text());
    let names: Vec<String> = own.json()["probes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        names.iter().any(|n| n == "database") && names.iter().any(|n| n == "keys"),
        "{names:?}"
    );
    let agent = login(addr, "agent@sunrise.test", "sunrise-insurance").await;
    assert_problem(
        &call(addr, "GET", "/health/tenant", Some(&agent), None).await,
        403,
        "app.forbidden",
    );
    if backend == Backend::Sqlite {
        // One tenant's file gone: not ready, the others still counted healthy.
        let asha = tenant(&app, "asha-agency").await;
        let file = app._dir.path().join("tenants").join(format!(
            "{}.sqlite3",
            asha.placement.checked_name().unwrap().unwrap()
        ));
        std::fs::remove_file(&file).unwrap();
        let ready = call(addr, "GET", "/health/ready", None, None).await;
        assert_eq!(ready.status, 503, "{}", ready.text());
        assert_eq!(ready.json()["tenants"]["unhealthy"], 1, "{}", ready.text());
        assert_eq!(ready.json()["tenants"]["healthy"], 3, "{}", ready.text());
        // The body names no tenant.
        assert!(!ready.text().contains("asha"), "{}", ready.text());
    }
    app.running.stop().await.unwrap();
}

async fn refusals_by_the_pipeline_reach_the_tenants_audit_log(backend: Backend) {
    let app = start(backend).await;
    let addr = app.running.addr;
    let admin = login(addr, "admin@sunrise.test", "sunrise-insurance").await;
    let leaving = login(addr, "manager@sunrise.test", "sunrise-insurance").await;
    assert_eq!(
        call(addr, "POST", "/auth/logout", Some(&leaving), None)
            .await
            .status,
        204
    );
    // The signed-out token, used again: refused by the pipeline...
    assert_problem(
        &call(addr, "GET", "/me", Some(&leaving), None).await,
        401,
        "session-revoked",
    );
    // ... and the refusal is in the tenant's log (written by the queue).
    let mut found = false;
    for _ in 0..40 {
        let log = call(addr, "GET", "/audit?limit=50", Some(&admin), None).await;
        assert_eq!(log.status, 200, "{}", log.text());
        found = log.json()["items"].as_array().unwrap().iter().any(|e| {
            e["event"]["action"] == "denied" && e["event"]["details"]["code"] == "session-revoked"
        });
        if found {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(found, "no denied event in the tenant's log");
    app.running.stop().await.unwrap();
}
