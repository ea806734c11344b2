//! The reference app's business rules under a new user's probing: bounded
//! amounts and texts (422 naming the field), sums that cannot overflow,
//! agent records linked only to the tenant's own members, deactivated agents
//! gone from reads.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use insurance_agent::id::Id;
use serde_json::json;
use tenancy_core::TenantContext;
use tenancy_testkit::http::RawResponse;

#[macro_use]
mod common;
use common::*;

on_both_backends!(
    amounts_and_texts_are_bounded_and_refusals_name_the_field,
    the_dashboard_sums_stored_amounts_without_overflow,
    agent_records_link_only_members_of_the_tenant,
    a_deactivated_agent_is_not_found_by_id,
    a_tenant_in_maintenance_answers_503_and_operators_pass,
);

fn assert_field(r: &RawResponse, field: &str) {
    assert_problem(r, 422, "app.invalid");
    assert_eq!(r.json()["field"], field, "{}", r.text());
}

async fn amounts_and_texts_are_bounded_and_refusals_name_the_field(backend: Backend) {
    let app = start(backend).await;
    let addr = app.running.addr;
    let admin = login(addr, "admin@sunrise.test", "sunrise-insurance").await;
    let customers = call(addr, "GET", "/customers", Some(&admin), None).await;
    let customer = customers.json()["items"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let owner = customers.json()["items"][0]["agent_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let policy = |premium: i64, sum: i64, number: &str| {
        json!({"policy_number": number, "product": "Term", "customer_id": customer,
               "sum_assured_minor": sum, "premium_minor": premium,
               "premium_frequency": "yearly", "term_years": 10})
    };
    // The premium that overflowed the tenant's sums before: refused.
    let huge = call(
        addr,
        "POST",
        "/policies",
        Some(&admin),
        Some(policy(5_000_000_000_000_000_000, 1, "BIG-1")),
    )
    .await;
    assert_field(&huge, "premium_minor");
    let max = insurance_agent::validate::MAX_MINOR;
    assert_field(
        &call(
            addr,
            "POST",
            "/policies",
            Some(&admin),
            Some(policy(1, max + 1, "BIG-2")),
        )
        .await,
        "sum_assured_minor",
    );
    // The bound itself is accepted (control).
    let at_max = call(
        addr,
        "POST",
        "/policies",
        Some(&admin),
        Some(policy(max, max, "BIG-3")),
    )
    .await;
    assert_eq!(at_max.status, 201, "{}", at_max.text());
    let mut riders = policy(1, 1, "BIG-4");
    riders["riders"] = json!([{"name": "Accident", "sum_assured_minor": max + 1}]);
    assert_field(
        &call(addr, "POST", "/policies", Some(&admin), Some(riders)).await,
        "riders.sum_assured_minor",
    );
    assert_field(
        &call(
            addr,
            "POST",
            "/policies",
            Some(&admin),
            Some(policy(1, 1, &"P".repeat(65))),
        )
        .await,
        "policy_number",
    );

    // Texts: each field's own limit, well under the 2 MB body limit.
    let long = "a".repeat(201);
    let customer_with = |field: &str, value: &str| {
        let mut c = json!({"first_name": "Ravi", "last_name": "Kumar", "customer_type": "individual",
                           "agent_id": owner});
        c[field] = json!(value);
        c
    };
    for field in ["first_name", "last_name"] {
        assert_field(
            &call(
                addr,
                "POST",
                "/customers",
                Some(&admin),
                Some(customer_with(field, &long)),
            )
            .await,
            field,
        );
    }
    assert_field(
        &call(
            addr,
            "POST",
            "/customers",
            Some(&admin),
            Some(customer_with("email", &format!("{}@x.in", "a".repeat(260)))),
        )
        .await,
        "email",
    );
    assert_field(
        &call(
            addr,
            "POST",
            "/customers",
            Some(&admin),
            Some(customer_with("first_name", "Ra\u{0}vi")),
        )
        .await,
        "first_name",
    );
    let ok = call(
        addr,
        "POST",
        "/customers",
        Some(&admin),
        Some(customer_with("first_name", &"a".repeat(200))),
    )
    .await;
    assert_eq!(ok.status, 201, "200 characters is the limit: {}", ok.text());
    let agent = |field: &str, value: serde_json::Value| {
        let mut a = json!({"agent_code": "AG-9", "name": "New Agent", "licence_number": "L-1",
                           "licence_expiry": "2030-01-01"});
        a[field] = value;
        a
    };
    for (field, value) in [
        ("agent_code", json!("A".repeat(65))),
        ("name", json!(long)),
        ("licence_number", json!("L".repeat(65))),
        ("business_name", json!(long)),
        ("regions", json!(vec!["North"; 51])),
        ("regions", json!(["R".repeat(65)])),
        ("experience_years", json!(1000)),
    ] {
        assert_field(
            &call(
                addr,
                "POST",
                "/agents",
                Some(&admin),
                Some(agent(field, value)),
            )
            .await,
            field,
        );
    }
    // Sign-in bodies are bounded before anything is hashed or counted.
    for (field, body) in [
        (
            "password",
            json!({"email": "admin@sunrise.test", "password": "p".repeat(1025), "tenant": "sunrise-insurance"}),
        ),
        (
            "email",
            json!({"email": "e".repeat(255), "password": "x", "tenant": "sunrise-insurance"}),
        ),
    ] {
        assert_field(
            &call(addr, "POST", "/auth/login", None, Some(body)).await,
            field,
        );
    }
    app.running.stop().await.unwrap();
}

async fn the_dashboard_sums_stored_amounts_without_overflow(backend: Backend) {
    let app = start(backend).await;
    let addr = app.running.addr;
    let admin = login(addr, "admin@sunrise.test", "sunrise-insurance").await;
    // Two completed 5e18-paise payments, as an older version (or a direct
    // import) could have stored them: their sum is past i64.
    let t = tenant(&app, "sunrise-insurance").await;
    let ctx = TenantContext::new(t.clone());
    let mut tx = app.running.data.begin_write(&ctx).await.unwrap();
    let (customer, agent): (Id, Id) = insurance_agent::on!(
        tx,
        sqlx::query_as("SELECT id, agent_id FROM customers LIMIT 1"),
        fetch_one
    )
    .unwrap();
    let today = chrono::Utc::now().date_naive();
    for n in 0..2 {
        let policy = Id::new();
        insurance_agent::on!(
            tx,
            sqlx::query(
                "INSERT INTO policies (tenant_id, id, policy_number, product, customer_id, agent_id, \
                 sum_assured_minor, premium_minor, currency, premium_frequency, status, riders, shared, \
                 active, created_at) VALUES ($1, $2, $3, 'Legacy', $4, $5, $6, $6, 'INR', 'yearly', \
                 'active', '[]', FALSE, TRUE, $7)"
            )
            .bind(Id::from(t.id))
            .bind(policy)
            .bind(format!("LEGACY-{n}"))
            .bind(customer)
            .bind(agent)
            .bind(5_000_000_000_000_000_000_i64)
            .bind(chrono::Utc::now()),
            execute
        )
        .unwrap();
        insurance_agent::on!(
            tx,
            sqlx::query(
                "INSERT INTO payments (tenant_id, id, policy_id, amount_minor, currency, due_date, \
                 paid_date, status, created_at) VALUES ($1, $2, $3, $4, 'INR', $5, $5, 'completed', $6)"
            )
            .bind(Id::from(t.id))
            .bind(Id::new())
            .bind(policy)
            .bind(5_000_000_000_000_000_000_i64)
            .bind(today)
            .bind(chrono::Utc::now()),
            execute
        )
        .unwrap();
    }
    tx.commit().await.unwrap();
    let d = call(addr, "GET", "/dashboard", Some(&admin), None).await;
    assert_eq!(d.status, 200, "{}", d.text());
    // 10¹⁹ does not fit: the figure saturates instead of failing the page.
    assert_eq!(d.json()["revenue_30d_minor"], i64::MAX, "{}", d.text());
    app.running.stop().await.unwrap();
}

async fn agent_records_link_only_members_of_the_tenant(backend: Backend) {
    let app = start(backend).await;
    let addr = app.running.addr;
    let admin = login(addr, "admin@sunrise.test", "sunrise-insurance").await;
    let bharat = login(addr, "admin@bharat.test", "bharat-agents").await;
    let stranger = call(addr, "GET", "/me", Some(&bharat), None).await.json()["user_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let finance = login(addr, "finance@sunrise.test", "sunrise-insurance").await;
    let member = call(addr, "GET", "/me", Some(&finance), None).await.json()["user_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let agent = |code: &str, user: &str| {
        json!({"agent_code": code, "name": "Linked", "licence_number": "L-1",
               "licence_expiry": "2030-01-01", "user_id": user})
    };
    // Another tenant's user, and an account that does not exist.
    for user in [stranger.as_str(), "no-such-account"] {
        assert_field(
            &call(
                addr,
                "POST",
                "/agents",
                Some(&admin),
                Some(agent("L-1", user)),
            )
            .await,
            "user_id",
        );
    }
    // A member of this tenant: linked (control).
    let linked = call(
        addr,
        "POST",
        "/agents",
        Some(&admin),
        Some(agent("L-2", &member)),
    )
    .await;
    assert_eq!(linked.status, 201, "{}", linked.text());
    assert_eq!(linked.json()["user_id"], member.as_str());
    // Linked once: a second agent record for the same account conflicts.
    assert_problem(
        &call(
            addr,
            "POST",
            "/agents",
            Some(&admin),
            Some(agent("L-3", &member)),
        )
        .await,
        409,
        "app.conflict",
    );
    app.running.stop().await.unwrap();
}

async fn a_deactivated_agent_is_not_found_by_id(backend: Backend) {
    let app = start(backend).await;
    let addr = app.running.addr;
    let admin = login(addr, "admin@sunrise.test", "sunrise-insurance").await;
    let manager = login(addr, "manager@sunrise.test", "sunrise-insurance").await;
    let created = call(
        addr,
        "POST",
        "/agents",
        Some(&admin),
        Some(
            json!({"agent_code": "GONE-1", "name": "Leaving", "licence_number": "L-9",
                    "licence_expiry": "2030-01-01"}),
        ),
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.text());
    let id = created.json()["id"].as_str().unwrap().to_owned();
    let path = format!("/agents/{id}");
    assert_eq!(
        call(addr, "GET", &path, Some(&admin), None).await.status,
        200
    );
    // Only tenant admins deactivate.
    assert_problem(
        &call(addr, "DELETE", &path, Some(&manager), None).await,
        403,
        "app.forbidden",
    );
    assert_eq!(
        call(addr, "DELETE", &path, Some(&admin), None).await.status,
        204
    );
    assert_problem(
        &call(addr, "GET", &path, Some(&admin), None).await,
        404,
        "app.not-found",
    );
    let listed = call(addr, "GET", "/agents", Some(&admin), None)
        .await
        .json();
    assert!(
        listed["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["id"] != id.as_str()),
        "{listed}"
    );
    assert_problem(
        &call(addr, "DELETE", &path, Some(&admin), None).await,
        404,
        "app.not-found",
    );
    app.running.stop().await.unwrap();
}

async fn a_tenant_in_maintenance_answers_503_and_operators_pass(backend: Backend) {
    use tenancy_core::store::TenantUpdate;
    let app = start(backend).await;
    let addr = app.running.addr;
    let admin = login(addr, "admin@sunrise.test", "sunrise-insurance").await;
    let bharat = login(addr, "admin@bharat.test", "bharat-agents").await;
    let sunrise = tenant(&app, "sunrise-insurance").await;
    let sessions = insurance_agent::auth::Sessions::new(
        insurance_agent::app::session_key(app._dir.path()).unwrap(),
    )
    .with_epochs(app.running.data.session_epochs());
    let (operator, _) = insurance_agent::ops::impersonate(
        &app.running.data,
        &sessions,
        &sunrise,
        "admin@sunrise.test",
        "kim",
        "checking the migration",
        5,
    )
    .await
    .unwrap();
    let until = chrono::Utc::now() + chrono::Duration::minutes(10);
    app.running
        .data
        .update_tenant(
            sunrise.id,
            &TenantUpdate::new().settings_patch(json!({
                "maintenance": {"until": until, "message": "Moving to a new region"}
            })),
        )
        .await
        .unwrap();
    let r = call(addr, "GET", "/me", Some(&admin), None).await;
    assert_problem(&r, 503, "tenant-maintenance");
    assert_eq!(r.json()["detail"], "Moving to a new region");
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((590..=600).contains(&retry), "Retry-After {retry}");
    // Another tenant is served; the operator passes.
    assert_eq!(
        call(addr, "GET", "/me", Some(&bharat), None).await.status,
        200
    );
    let op = call(addr, "GET", "/me", Some(&operator), None).await;
    assert_eq!(op.status, 200, "{}", op.text());
    // Lifted: served again.
    app.running
        .data
        .update_tenant(
            sunrise.id,
            &TenantUpdate::new().settings_patch(json!({ "maintenance": null })),
        )
        .await
        .unwrap();
    assert_eq!(
        call(addr, "GET", "/me", Some(&admin), None).await.status,
        200
    );
    app.running.stop().await.unwrap();
}
