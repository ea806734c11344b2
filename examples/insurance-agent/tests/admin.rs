//! Tenant administration over HTTP (both backends): members listed with
//! status and activity; role changes, suspension and removal end the
//! member's sessions at once, are audited, and never leave a tenant without
//! an active admin. Seats and monthly allowances of the plan.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use serde_json::json;
use tenancy_testkit::http::RawResponse;

#[macro_use]
mod common;
use common::*;

on_both_backends!(
    admins_list_members_with_status_and_last_activity,
    a_role_change_ends_the_members_sessions_and_is_audited,
    suspension_and_removal_refuse_the_member_at_once,
    a_tenant_never_loses_its_last_admin,
    settings_are_typed_validated_and_unknown_keys_refused,
    invitations_reserve_seats_of_the_plan_exactly,
    quotes_count_against_the_calendar_month_with_an_overage_allowance,
);

fn member(list: &RawResponse, email: &str) -> serde_json::Value {
    list.json()["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["email"] == email)
        .cloned()
        .unwrap_or_else(|| panic!("{email} not listed: {}", list.text()))
}

async fn user_id(addr: std::net::SocketAddr, token: &str) -> String {
    call(addr, "GET", "/me", Some(token), None).await.json()["user_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn admins_list_members_with_status_and_last_activity(backend: Backend) {
    let app = start(backend).await;
    let addr = app.running.addr;
    let admin = login(addr, "admin@sunrise.test", "sunrise-insurance").await;
    let _agent = login(addr, "agent@sunrise.test", "sunrise-insurance").await;
    let list = call(addr, "GET", "/members", Some(&admin), None).await;
    assert_eq!(list.status, 200, "{}", list.text());
    assert_eq!(list.json()["total"], 4, "{}", list.text());
    let agent = member(&list, "agent@sunrise.test");
    assert_eq!(agent["role"], "agent");
    assert_eq!(agent["status"], "active");
    assert!(agent["last_active_at"].is_string(), "{agent}");
    let manager = member(&list, "manager@sunrise.test");
    assert!(
        manager["last_active_at"].is_null(),
        "never signed in: {manager}"
    );
    assert_eq!(member(&list, "finance@sunrise.test")["role"], "finance");
    // Only tenant admins.
    let agent_token = login(addr, "agent@sunrise.test", "sunrise-insurance").await;
    assert_problem(
        &call(addr, "GET", "/members", Some(&agent_token), None).await,
        403,
        "app.forbidden",
    );
    // Another tenant's admin sees only their own members.
    let bharat = login(addr, "admin@bharat.test", "bharat-agents").await;
    let theirs = call(addr, "GET", "/members", Some(&bharat), None).await;
    assert_eq!(theirs.json()["total"], 2, "{}", theirs.text());
    assert!(!theirs.text().contains("sunrise"), "{}", theirs.text());
    app.running.stop().await.unwrap();
}

async fn a_role_change_ends_the_members_sessions_and_is_audited(backend: Backend) {
    let app = start(backend).await;
    let addr = app.running.addr;
    let admin = login(addr, "admin@sunrise.test", "sunrise-insurance").await;
    let agent = login(addr, "agent@sunrise.test", "sunrise-insurance").await;
    let agent_id = user_id(addr, &agent).await;
    let path = format!("/members/{agent_id}");
    let bad = call(
        addr,
        "PUT",
        &path,
        Some(&admin),
        Some(json!({"role": "owner"})),
    )
    .await;
    assert_problem(&bad, 422, "app.invalid");
    assert_eq!(bad.json()["field"], "role");
    let changed = call(
        addr,
        "PUT",
        &path,
        Some(&admin),
        Some(json!({"role": "viewer"})),
    )
    .await;
    assert_eq!(changed.status, 200, "{}", changed.text());
    assert_eq!(changed.json()["role"], "viewer");
    // The old token is refused at once; a new sign-in carries the new role.
    assert_problem(
        &call(addr, "GET", "/me", Some(&agent), None).await,
        401,
        "session-revoked",
    );
    let again = login(addr, "agent@sunrise.test", "sunrise-insurance").await;
    assert_eq!(
        call(addr, "GET", "/me", Some(&again), None).await.json()["role"],
        "viewer"
    );
    // Finance is a role too (a viewer with the settlement grants).
    let finance = call(
        addr,
        "PUT",
        &path,
        Some(&admin),
        Some(json!({"role": "finance"})),
    )
    .await;
    assert_eq!(finance.json()["role"], "finance", "{}", finance.text());
    // Audited with who, whom, from and to.
    let log = call(addr, "GET", "/audit?limit=50", Some(&admin), None).await;
    let event = log.json()["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].clone())
        .find(|e| e["action"] == "change_role" && e["details"]["to"] == "viewer")
        .unwrap_or_else(|| panic!("no change_role event: {}", log.text()));
    assert_eq!(event["details"]["user_id"], agent_id.as_str());
    assert_eq!(event["details"]["from"], "agent");
    // An admin does not change their own role; an unknown member is 404.
    let me = user_id(addr, &admin).await;
    assert_problem(
        &call(
            addr,
            "PUT",
            &format!("/members/{me}"),
            Some(&admin),
            Some(json!({"role": "agent"})),
        )
        .await,
        409,
        "app.conflict",
    );
    assert_problem(
        &call(
            addr,
            "PUT",
            "/members/nobody",
            Some(&admin),
            Some(json!({"role": "agent"})),
        )
        .await,
        404,
        "app.not-found",
    );
    // A member of another tenant is not a member here.
    let bharat = login(addr, "agent@bharat.test", "bharat-agents").await;
    let stranger = user_id(addr, &bharat).await;
    assert_problem(
        &call(
            addr,
            "PUT",
            &format!("/members/{stranger}"),
            Some(&admin),
            Some(json!({"role": "viewer"})),
        )
        .await,
        404,
        "app.not-found",
    );
    app.running.stop().await.unwrap();
}

async fn suspension_and_removal_refuse_the_member_at_once(backend: Backend) {
    let app = start(backend).await;
    let addr = app.running.addr;
    let admin = login(addr, "admin@sunrise.test", "sunrise-insurance").await;
    let manager = login(addr, "manager@sunrise.test", "sunrise-insurance").await;
    let manager_id = user_id(addr, &manager).await;
    let suspended = call(
        addr,
        "POST",
        &format!("/members/{manager_id}/suspend"),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(suspended.status, 200, "{}", suspended.text());
    assert_eq!(suspended.json()["status"], "suspended");
    assert_problem(
        &call(addr, "GET", "/me", Some(&manager), None).await,
        401,
        "session-revoked",
    );
    // No new session while suspended (the same answer as a wrong password).
    let refused = call(
        addr,
        "POST",
        "/auth/login",
        None,
        Some(json!({"email": "manager@sunrise.test", "password": insurance_agent::seed::DEMO_PASSWORD,
                    "tenant": "sunrise-insurance"})),
    )
    .await;
    assert_problem(&refused, 401, "app.unauthorized");
    assert_problem(
        &call(
            addr,
            "POST",
            &format!("/members/{manager_id}/suspend"),
            Some(&admin),
            None,
        )
        .await,
        409,
        "app.conflict",
    );
    let resumed = call(
        addr,
        "POST",
        &format!("/members/{manager_id}/resume"),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(resumed.json()["status"], "active", "{}", resumed.text());
    let back = login(addr, "manager@sunrise.test", "sunrise-insurance").await;
    assert_eq!(
        call(addr, "GET", "/me", Some(&back), None).await.status,
        200
    );

    // Removal: refused at once, gone from the list, records kept.
    let agent = login(addr, "agent@sunrise.test", "sunrise-insurance").await;
    let agent_id = user_id(addr, &agent).await;
    let before = call(addr, "GET", "/customers", Some(&admin), None)
        .await
        .json()["total"]
        .clone();
    assert_eq!(
        call(
            addr,
            "DELETE",
            &format!("/members/{agent_id}"),
            Some(&admin),
            None
        )
        .await
        .status,
        204
    );
    assert_problem(
        &call(addr, "GET", "/me", Some(&agent), None).await,
        401,
        "session-revoked",
    );
    let list = call(addr, "GET", "/members", Some(&admin), None).await;
    assert_eq!(list.json()["total"], 3, "{}", list.text());
    assert!(!list.text().contains("agent@sunrise.test"));
    assert_eq!(
        call(addr, "GET", "/customers", Some(&admin), None)
            .await
            .json()["total"],
        before
    );
    assert_problem(
        &call(
            addr,
            "DELETE",
            &format!("/members/{agent_id}"),
            Some(&admin),
            None,
        )
        .await,
        404,
        "app.not-found",
    );
    let log = call(addr, "GET", "/audit?limit=50", Some(&admin), None)
        .await
        .text();
    for action in ["\"suspend\"", "\"resume\"", "\"remove\""] {
        assert!(log.contains(action), "{action} not audited");
    }
    app.running.stop().await.unwrap();
}

async fn a_tenant_never_loses_its_last_admin(backend: Backend) {
    let app = start(backend).await;
    let addr = app.running.addr;
    // The provider's admin administers its regional office (inherited), whose
    // only member is its own admin.
    let provider_admin = login(addr, "admin@sunrise.test", "sunrise-north").await;
    let north = login(addr, "admin@north.sunrise.test", "sunrise-north").await;
    let neha = user_id(addr, &north).await;
    let path = format!("/members/{neha}");
    for (method, path, body) in [
        ("DELETE", path.clone(), None),
        ("PUT", path.clone(), Some(json!({"role": "manager"}))),
        ("POST", format!("{path}/suspend"), None),
    ] {
        let r = call(addr, method, &path, Some(&provider_admin), body).await;
        assert_problem(&r, 409, "app.conflict");
        assert!(r.text().contains("no active tenant admin"), "{}", r.text());
    }
    // Control: with a second admin, the change goes through.
    let sunrise = login(addr, "admin@sunrise.test", "sunrise-insurance").await;
    let manager = login(addr, "manager@sunrise.test", "sunrise-insurance").await;
    let manager_id = user_id(addr, &manager).await;
    let promoted = call(
        addr,
        "PUT",
        &format!("/members/{manager_id}"),
        Some(&sunrise),
        Some(json!({"role": "tenant_admin"})),
    )
    .await;
    assert_eq!(promoted.status, 200, "{}", promoted.text());
    let new_admin = login(addr, "manager@sunrise.test", "sunrise-insurance").await;
    let old_admin = user_id(addr, &sunrise).await;
    let demoted = call(
        addr,
        "PUT",
        &format!("/members/{old_admin}"),
        Some(&new_admin),
        Some(json!({"role": "manager"})),
    )
    .await;
    assert_eq!(demoted.status, 200, "{}", demoted.text());
    app.running.stop().await.unwrap();
}

async fn settings_are_typed_validated_and_unknown_keys_refused(backend: Backend) {
    let app = start(backend).await;
    let addr = app.running.addr;
    let admin = login(addr, "admin@sunrise.test", "sunrise-insurance").await;
    let agent = login(addr, "agent@sunrise.test", "sunrise-insurance").await;
    let defaults = call(addr, "GET", "/settings", Some(&agent), None).await;
    assert_eq!(defaults.status, 200, "{}", defaults.text());
    assert_eq!(defaults.json()["time_zone"], "UTC");
    assert_eq!(defaults.json()["commission_rates"]["first_year_bp"], 2500);
    let patch = |body: serde_json::Value| {
        let admin = admin.clone();
        async move { call(addr, "PATCH", "/settings", Some(&admin), Some(body)).await }
    };
    assert_problem(
        &call(
            addr,
            "PATCH",
            "/settings",
            Some(&agent),
            Some(json!({"time_zone": "UTC"})),
        )
        .await,
        403,
        "app.forbidden",
    );
    // Unknown keys, at the top and inside a section.
    for body in [
        json!({"colour": "red"}),
        json!({"branding": {"font": "Comic Sans"}}),
    ] {
        let r = patch(body.clone()).await;
        assert_problem(&r, 422, "app.invalid");
        assert!(
            r.json()["detail"]
                .as_str()
                .unwrap()
                .contains("unknown field"),
            "{body}: {}",
            r.text()
        );
    }
    for (body, field) in [
        (
            json!({"branding": {"primary_color": "red"}}),
            "branding.primary_color",
        ),
        (
            json!({"branding": {"logo_url": "http://cdn.example/logo.png"}}),
            "branding.logo_url",
        ),
        (
            json!({"branding": {"logo_url": "https://user:pw@cdn.example/logo.png"}}),
            "branding.logo_url",
        ),
        (
            json!({"branding": {"support_email": "help"}}),
            "branding.support_email",
        ),
        (
            json!({"branding": {"display_name": "x".repeat(101)}}),
            "branding.display_name",
        ),
        (json!({"time_zone": "Mars/Olympus_Mons"}), "time_zone"),
        (
            json!({"commission_rates": {"first_year_bp": 2500, "renewal_bp": 750, "bonus_bp": 20000}}),
            "commission_rates.bonus_bp",
        ),
    ] {
        let r = patch(body.clone()).await;
        assert_problem(&r, 422, "app.invalid");
        assert_eq!(r.json()["field"], field, "{body}: {}", r.text());
    }
    let ok = patch(json!({
        "branding": {"display_name": "Sunrise", "primary_color": "#ff8800",
                     "logo_url": "https://cdn.example/sunrise.png", "support_email": "help@sunrise.test"},
        "time_zone": "Asia/Kolkata",
        "commission_rates": {"first_year_bp": 3000, "renewal_bp": 500, "bonus_bp": 100}
    }))
    .await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    let seen = call(addr, "GET", "/settings", Some(&agent), None)
        .await
        .json();
    assert_eq!(seen["branding"]["primary_color"], "#FF8800");
    assert_eq!(seen["time_zone"], "Asia/Kolkata");
    assert_eq!(seen["commission_rates"]["bonus_bp"], 100);
    // A later patch of one section leaves the others.
    let tz = patch(json!({"time_zone": "Europe/London"})).await;
    assert_eq!(
        tz.json()["branding"]["display_name"],
        "Sunrise",
        "{}",
        tz.text()
    );
    // Another tenant is untouched.
    let bharat = login(addr, "admin@bharat.test", "bharat-agents").await;
    let theirs = call(addr, "GET", "/settings", Some(&bharat), None)
        .await
        .json();
    assert_eq!(theirs["time_zone"], "UTC");
    assert!(
        theirs["branding"].as_object().unwrap().is_empty(),
        "{theirs}"
    );
    // Audited.
    let log = call(addr, "GET", "/audit?limit=20", Some(&admin), None)
        .await
        .text();
    assert!(log.contains("Asia/Kolkata"), "settings change not audited");
    app.running.stop().await.unwrap();
}

async fn invitations_reserve_seats_of_the_plan_exactly(backend: Backend) {
    let app = start(backend).await;
    let addr = app.running.addr;
    // The free plan has 3 seats; the agency has one member.
    let asha = login(addr, "asha@asha.test", "asha-agency").await;
    let invite = |email: String| {
        let asha = asha.clone();
        async move {
            call(
                addr,
                "POST",
                "/invitations",
                Some(&asha),
                Some(json!({"email": email, "role": "agent"})),
            )
            .await
        }
    };
    let first = invite("one@asha.test".into()).await;
    assert_eq!(first.status, 201, "{}", first.text());
    assert_eq!(invite("two@asha.test".into()).await.status, 201);
    let full = invite("three@asha.test".into()).await;
    assert_problem(&full, 403, "quota-exceeded");
    assert_eq!(full.json()["resource"], "users", "{}", full.text());
    let usage = call(addr, "GET", "/usage", Some(&asha), None).await.json();
    let users = usage["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["resource"] == "users")
        .cloned()
        .unwrap();
    assert_eq!(
        (users["used"].as_u64(), users["limit"].as_u64()),
        (Some(3), Some(3)),
        "{usage}"
    );
    // Revoking returns the seat.
    let id = first.json()["id"].as_str().unwrap().to_owned();
    assert_eq!(
        call(
            addr,
            "DELETE",
            &format!("/invitations/{id}"),
            Some(&asha),
            None
        )
        .await
        .status,
        204
    );
    assert_eq!(invite("three@asha.test".into()).await.status, 201);
    assert_problem(
        &invite("four@asha.test".into()).await,
        403,
        "quota-exceeded",
    );

    // Concurrent invitations never exceed the plan: the regional office
    // (professional, 25 seats, one member) gets 40 at once.
    let north = login(addr, "admin@north.sunrise.test", "sunrise-north").await;
    let racers: Vec<_> = (0..40)
        .map(|i| {
            let north = north.clone();
            tokio::spawn(async move {
                call(
                    addr,
                    "POST",
                    "/invitations",
                    Some(&north),
                    Some(json!({"email": format!("r{i}@north.test"), "role": "agent"})),
                )
                .await
                .status
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for r in racers {
        statuses.push(r.await.unwrap());
    }
    let issued = statuses.iter().filter(|s| **s == 201).count();
    let refused = statuses.iter().filter(|s| **s == 403).count();
    assert_eq!((issued, refused), (24, 16), "{statuses:?}");
    app.running.stop().await.unwrap();
}

/// The enterprise plan's quotes cut to 2 a month with 1 of overage: three
/// quotes are accepted (the third billed as overage), the fourth is 403
/// `quota-exceeded`; `/usage` reports the month's count; the 80 / 95 / 100 %
/// thresholds are each audited once.
async fn quotes_count_against_the_calendar_month_with_an_overage_allowance(backend: Backend) {
    let plans_dir = tempfile::tempdir().unwrap();
    let plans = plans_dir.path().join("plans.toml");
    let catalog = insurance_agent::app::PLANS.replace(
        "quotes = \"unlimited\"",
        "quotes = { monthly = { limit = 2, overage = 1 } }",
    );
    assert_ne!(
        catalog,
        insurance_agent::app::PLANS,
        "the enterprise quotes line moved"
    );
    std::fs::write(&plans, catalog).unwrap();
    let app = start_with(backend, Some(plans)).await;
    let addr = app.running.addr;
    let admin = login(addr, "admin@sunrise.test", "sunrise-insurance").await;
    let customers = call(addr, "GET", "/customers", Some(&admin), None).await;
    let customer = customers.json()["items"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let quote = |n: u32| {
        json!({"policy_number": format!("Q-{n}"), "product": "Term", "customer_id": customer,
               "sum_assured_minor": 100_000, "premium_minor": 1_000,
               "premium_frequency": "yearly", "term_years": 10})
    };
    for n in 0..3 {
        let r = call(addr, "POST", "/policies", Some(&admin), Some(quote(n))).await;
        assert_eq!(r.status, 201, "quote {n}: {}", r.text());
    }
    let refused = call(addr, "POST", "/policies", Some(&admin), Some(quote(3))).await;
    assert_problem(&refused, 403, "quota-exceeded");
    assert_eq!(refused.json()["resource"], "quotes", "{}", refused.text());
    // Nothing was written by the refused request.
    let listed = call(addr, "GET", "/policies?limit=200", Some(&admin), None).await;
    assert!(!listed.text().contains("Q-3"), "{}", listed.text());
    let usage = call(addr, "GET", "/usage", Some(&admin), None).await.json();
    let quotes = usage["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["resource"] == "quotes")
        .unwrap_or_else(|| panic!("no quotes in {usage}"))
        .clone();
    assert_eq!(quotes["used"], 3, "{quotes}");
    assert_eq!(quotes["limit"], 2, "{quotes}");
    assert_eq!(quotes["percent"], 150, "{quotes}");
    // Thresholds reach the tenant's audit log through the queue.
    let mut percents = Vec::new();
    for _ in 0..50 {
        let log = call(addr, "GET", "/audit?limit=100", Some(&admin), None).await;
        percents = log.json()["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["event"]["action"] == "quota.threshold")
            .filter(|e| e["event"]["details"]["resource"] == "quotes")
            .map(|e| e["event"]["details"]["percent"].as_u64().unwrap())
            .collect();
        if percents.len() >= 3 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    percents.sort_unstable();
    assert_eq!(percents, vec![80, 95, 100], "each threshold once");
    app.running.stop().await.unwrap();
}
