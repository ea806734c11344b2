//! Billing over HTTP (both backends): a tenant admin's upgrade waits for the
//! billing side's signed confirmation, delivered through the outbox to a
//! real webhook receiver; forged, tampered, stale and replayed callbacks are
//! refused; usage records, operator plan changes, lifecycle transitions and
//! high-risk audit events reach their webhooks, signed.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::time::Duration;

use insurance_agent::billing::Billing;
use serde_json::{Value, json};
use tenancy_core::webhook::{IDEMPOTENCY_HEADER, SIGNATURE_HEADER, WebhookSecret, sign};
use tenancy_testkit::http::{RawResponse, send};
use tenancy_testkit::webhook::{Delivery, Receiver};

#[macro_use]
mod common;
use common::*;

on_both_backends!(
    an_upgrade_waits_for_billings_signed_confirmation,
    usage_lifecycle_and_high_risk_events_reach_their_webhooks,
);

fn secret() -> WebhookSecret {
    WebhookSecret::new(b"billing-test-secret-0123456789ab".to_vec()).unwrap()
}

/// The alert webhook's own secret.
fn alert_secret() -> WebhookSecret {
    WebhookSecret::new(b"alerts-test-secret-0123456789abc".to_vec()).unwrap()
}

async fn start_billed(backend: Backend) -> (App, Receiver, Receiver) {
    let billing = Receiver::start(secret()).await.unwrap();
    let alerts = Receiver::start(alert_secret()).await.unwrap();
    let app = start_billing(
        backend,
        None,
        Billing {
            webhook_url: Some(billing.url()),
            alert_url: Some(alerts.url()),
            secret: Some(secret()),
            alert_secret: Some(alert_secret()),
            poll: Duration::from_millis(100),
            ..Billing::default()
        },
    )
    .await;
    (app, billing, alerts)
}

/// The first delivery of `topic` matching `pred`, waited for (5 s).
async fn delivered(receiver: &Receiver, topic: &str, pred: impl Fn(&Value) -> bool) -> Delivery {
    for _ in 0..100 {
        if let Some(d) = receiver
            .deliveries()
            .into_iter()
            .find(|d| d.body["topic"] == topic && pred(&d.body["payload"]))
        {
            return d;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no {topic} delivered: {:?}", receiver.deliveries());
}

/// `POST /billing/callback` with `body` as raw bytes and these headers.
async fn callback(app: &App, body: &[u8], headers: &[(&str, &str)]) -> RawResponse {
    let mut r = format!(
        "POST /billing/callback HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        r.push_str(&format!("{name}: {value}\r\n"));
    }
    r.push_str("\r\n");
    let mut r = r.into_bytes();
    r.extend_from_slice(body);
    send(app.running.addr, &r).await.unwrap()
}

async fn signed_callback(app: &App, body: &Value, key: &str) -> RawResponse {
    let body = body.to_string();
    let signature = sign(&secret(), key, chrono::Utc::now(), body.as_bytes());
    callback(
        app,
        body.as_bytes(),
        &[(IDEMPOTENCY_HEADER, key), (SIGNATURE_HEADER, &signature)],
    )
    .await
}

async fn an_upgrade_waits_for_billings_signed_confirmation(backend: Backend) {
    let (app, billing, _alerts) = start_billed(backend).await;
    let addr = app.running.addr;
    let asha = login(addr, "asha@asha.test", "asha-agency").await;
    let tenant_id = tenant(&app, "asha-agency").await.id.to_string();

    // The upgrade is a request: the plan stays free.
    let r = call(
        addr,
        "POST",
        "/plan",
        Some(&asha),
        Some(json!({"plan": "professional"})),
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(r.json()["status"], "pending");
    let request_id = r.json()["request"]["request_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let plan = call(addr, "GET", "/plan", Some(&asha), None).await.json();
    assert_eq!(plan["plan"], "free", "{plan}");
    assert_eq!(plan["pending"]["plan"], "professional", "{plan}");
    assert_eq!(
        call(addr, "GET", "/usage", Some(&asha), None).await.json()["plan"],
        "free"
    );
    // Billing is told, signed, with the request.
    let asked = delivered(&billing, "plan.change_requested", |p| {
        p["request_id"] == request_id.as_str()
    })
    .await;
    assert!(asked.signed, "{asked:?}");
    assert_eq!(asked.body["tenant_id"], tenant_id.as_str());
    assert_eq!(asked.body["payload"]["to"], "professional");

    let confirm =
        json!({"tenant_id": tenant_id, "request_id": request_id, "decision": "confirmed"});
    let body = confirm.to_string();
    let now = chrono::Utc::now();
    // Unsigned.
    assert_problem(
        &callback(&app, body.as_bytes(), &[(IDEMPOTENCY_HEADER, "cb-1")]).await,
        401,
        "webhook-signature-invalid",
    );
    // Signed with another secret.
    let forged = sign(
        &WebhookSecret::new(vec![1; 32]).unwrap(),
        "cb-1",
        now,
        body.as_bytes(),
    );
    assert_problem(
        &callback(
            &app,
            body.as_bytes(),
            &[(IDEMPOTENCY_HEADER, "cb-1"), (SIGNATURE_HEADER, &forged)],
        )
        .await,
        401,
        "webhook-signature-invalid",
    );
    // Tampered: a declined decision's signature on a confirmed body.
    let declined =
        json!({"tenant_id": tenant_id, "request_id": request_id, "decision": "declined"})
            .to_string();
    let for_declined = sign(&secret(), "cb-1", now, declined.as_bytes());
    assert_problem(
        &callback(
            &app,
            body.as_bytes(),
            &[
                (IDEMPOTENCY_HEADER, "cb-1"),
                (SIGNATURE_HEADER, &for_declined),
            ],
        )
        .await,
        401,
        "webhook-signature-invalid",
    );
    // Stale (signed 10 minutes ago).
    let stale = sign(
        &secret(),
        "cb-1",
        now - chrono::Duration::minutes(10),
        body.as_bytes(),
    );
    assert_problem(
        &callback(
            &app,
            body.as_bytes(),
            &[(IDEMPOTENCY_HEADER, "cb-1"), (SIGNATURE_HEADER, &stale)],
        )
        .await,
        401,
        "webhook-expired",
    );
    // Signed with the alert webhook's secret: whoever verifies alerts
    // cannot answer for billing.
    let alerts_signed = sign(&alert_secret(), "cb-1", now, body.as_bytes());
    assert_problem(
        &callback(
            &app,
            body.as_bytes(),
            &[
                (IDEMPOTENCY_HEADER, "cb-1"),
                (SIGNATURE_HEADER, &alerts_signed),
            ],
        )
        .await,
        401,
        "webhook-signature-invalid",
    );
    // Genuinely signed, but naming another tenant: nothing of its is pending.
    let sunrise = tenant(&app, "sunrise-insurance").await.id.to_string();
    let elsewhere =
        json!({"tenant_id": sunrise, "request_id": request_id, "decision": "confirmed"});
    assert_problem(
        &signed_callback(&app, &elsewhere, "cb-x").await,
        409,
        "app.conflict",
    );
    // None of those changed anything.
    let plan = call(addr, "GET", "/plan", Some(&asha), None).await.json();
    assert_eq!(plan["plan"], "free", "{plan}");

    // The genuine confirmation applies the plan.
    let signature = sign(&secret(), "cb-1", chrono::Utc::now(), body.as_bytes());
    let headers = [
        (IDEMPOTENCY_HEADER, "cb-1"),
        (SIGNATURE_HEADER, signature.as_str()),
    ];
    let ok = callback(&app, body.as_bytes(), &headers).await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(ok.json()["plan"], "professional");
    let plan = call(addr, "GET", "/plan", Some(&asha), None).await.json();
    assert_eq!(plan["plan"], "professional", "{plan}");
    assert!(plan["pending"].is_null(), "{plan}");
    // Replayed as captured: refused.
    assert_problem(
        &callback(&app, body.as_bytes(), &headers).await,
        409,
        "webhook-replayed",
    );
    // Re-sent with a fresh key and signature: the request is answered.
    assert_problem(
        &signed_callback(&app, &confirm, "cb-2").await,
        409,
        "app.conflict",
    );
    // Billing learns the change took effect, once, with the request.
    let changed = delivered(&billing, "plan.changed", |p| {
        p["request_id"] == request_id.as_str()
    })
    .await;
    assert_eq!(changed.body["payload"]["to"], "professional");
    // Audited: the request (by the admin) and the change (by billing).
    let log = call(addr, "GET", "/audit?limit=100", Some(&asha), None)
        .await
        .json();
    let actions: Vec<&str> = log["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"]["action"].as_str().unwrap())
        .collect();
    assert!(actions.contains(&"plan.change_requested"), "{actions:?}");
    assert!(actions.contains(&"plan.changed"), "{actions:?}");

    // A declined request leaves the plan as it was.
    let r = call(
        addr,
        "POST",
        "/plan",
        Some(&asha),
        Some(json!({"plan": "enterprise"})),
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.text());
    let second = r.json()["request"]["request_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let decline = json!({"tenant_id": tenant_id, "request_id": second, "decision": "declined"});
    let r = signed_callback(&app, &decline, "cb-3").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["status"], "declined");
    let plan = call(addr, "GET", "/plan", Some(&asha), None).await.json();
    assert_eq!(
        (plan["plan"].as_str(), plan["pending"].is_null()),
        (Some("professional"), true)
    );
    // A downgrade grants nothing new: applied at once.
    let r = call(
        addr,
        "POST",
        "/plan",
        Some(&asha),
        Some(json!({"plan": "free"})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    delivered(&billing, "plan.changed", |p| p["to"] == "free").await;
    // Only tenant admins ask.
    let agent = login(addr, "agent@sunrise.test", "sunrise-insurance").await;
    assert_problem(
        &call(
            addr,
            "POST",
            "/plan",
            Some(&agent),
            Some(json!({"plan": "enterprise"})),
        )
        .await,
        403,
        "app.forbidden",
    );
    app.running.stop().await.unwrap();
}

async fn usage_lifecycle_and_high_risk_events_reach_their_webhooks(backend: Backend) {
    let (app, billing, alerts) = start_billed(backend).await;
    let addr = app.running.addr;
    let admin = login(addr, "admin@sunrise.test", "sunrise-insurance").await;
    let sunrise = tenant(&app, "sunrise-insurance").await;
    // A quote is a usage record.
    let customers = call(addr, "GET", "/customers", Some(&admin), None).await;
    let customer = customers.json()["items"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = call(
        addr,
        "POST",
        "/policies",
        Some(&admin),
        Some(
            json!({"policy_number": "B-1", "product": "Term", "customer_id": customer,
            "sum_assured_minor": 100_000, "premium_minor": 1_000,
            "premium_frequency": "yearly", "term_years": 10}),
        ),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let usage = delivered(&billing, "usage.recorded", |p| p["resource"] == "quotes").await;
    assert!(usage.signed);
    assert_eq!(usage.body["tenant_id"], sunrise.id.to_string());
    // Deleting a customer is a high-risk audit event: an alert.
    let r = call(
        addr,
        "DELETE",
        &format!("/customers/{customer}"),
        Some(&admin),
        None,
    )
    .await;
    assert!(r.status < 300, "{}", r.text());
    let alert = delivered(&alerts, "audit.high_risk", |p| {
        p["event"]["resource_type"] == "customers"
    })
    .await;
    assert!(alert.signed, "{alert:?}");
    assert_eq!(alert.body["tenant_id"], sunrise.id.to_string());
    // An operator changes the plan directly.
    let catalog = insurance_agent::app::plans(None).unwrap();
    let next = insurance_agent::ops::set_plan(
        &app.running.data,
        &catalog,
        &sunrise,
        "professional",
        "operator",
    )
    .await
    .unwrap();
    assert_eq!(next.plan.as_ref().unwrap().as_str(), "professional");
    delivered(&billing, "plan.changed", |p| p["by"] == "operator").await;
    // Lifecycle transitions.
    let t = tenant(&app, "sunrise-insurance").await;
    app.running
        .data
        .transition(
            &t,
            tenancy_core::lifecycle::Transition::Suspend {
                reason: "unpaid".into(),
            },
            "operator",
        )
        .await
        .unwrap();
    let suspended = delivered(&billing, "tenant.suspend", |p| p["to"] == "suspended").await;
    assert_eq!(suspended.body["payload"]["actor"], "operator");
    // Every delivery was signed and carried its key; nothing was sent twice.
    let all = billing.deliveries();
    assert!(all.iter().all(|d| d.signed && d.key.is_some()), "{all:?}");
    let mut keys: Vec<_> = all.iter().filter_map(|d| d.key.clone()).collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), all.len(), "a message was sent twice: {all:?}");
    app.running.stop().await.unwrap();
}
