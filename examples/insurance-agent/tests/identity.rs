//! The reference app with tenants' own identity providers (a real OpenID
//! provider, npm `oidc-provider`), beside its own sessions: issuer → tenant,
//! memberships of `<issuer>#<subject>` users, the provider down, and the
//! application's short-lived access tokens with their refresh path.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::time::Duration;

use insurance_agent::app::Security;
use serde_json::json;
use tenancy_core::lifecycle::Transition;
use tenancy_core::oidc::{IdentitySettings, IssuerSettings, OidcConfig};
use tenancy_core::store::TenantUpdate;
use tenancy_core::{Membership, MembershipWriter, Role, UserId};
use tenancy_testkit::oidc::OidcProvider;

#[macro_use]
mod common;
use common::*;

on_both_backends!(
    a_tenants_identity_provider_signs_its_users_in_and_no_other_tenants,
    access_tokens_are_short_and_refreshed_while_the_membership_holds,
    an_operator_acts_as_a_user_through_an_audited_time_limited_grant,
    totp_enrolment_second_factor_and_a_tenant_requiring_mfa,
);

fn security() -> Security {
    Security {
        oidc: OidcConfig::default()
            .allow_http_loopback(true)
            .with_key_lifetimes(Duration::from_millis(300), Duration::from_secs(1))
            .with_refetch_intervals(Duration::from_secs(30), Duration::from_millis(100))
            .with_timeout(Duration::from_secs(1)),
        ..Security::default()
    }
}

/// Makes `issuer` the identity provider of `slug`.
async fn trust(app: &App, slug: &str, issuer: &str, audience: &str) -> tenancy_core::TenantId {
    let t = tenant(app, slug).await;
    let settings = IdentitySettings::new(vec![IssuerSettings::new(issuer, &[audience])]);
    let patch = json!({ "identity": settings });
    app.running
        .data
        .update_tenant(t.id, &TenantUpdate::new().settings_patch(patch))
        .await
        .unwrap();
    app.running.reload_identity().await.unwrap();
    t.id
}

async fn member(app: &App, tenant: tenancy_core::TenantId, user: &str, role: Role) {
    app.running
        .data
        .memberships()
        .put(&Membership::new(UserId::new(user), tenant, role))
        .await
        .unwrap();
}

async fn a_tenants_identity_provider_signs_its_users_in_and_no_other_tenants(backend: Backend) {
    let app = start_configured(backend, None, security()).await;
    let addr = app.running.addr;
    let a = OidcProvider::start(&[("sunrise-app", "s3cret")])
        .await
        .unwrap();
    let b = OidcProvider::start(&[("bharat-app", "s3cret")])
        .await
        .unwrap();
    let sunrise = trust(
        &app,
        "sunrise-insurance",
        &a.issuer,
        "https://api.sunrise.test",
    )
    .await;
    let bharat = trust(&app, "bharat-agents", &b.issuer, "https://api.bharat.test").await;

    // A's token resolves to Sunrise by its issuer; its client is not a member yet.
    let token_a = a
        .token("sunrise-app", "s3cret", "https://api.sunrise.test")
        .await
        .unwrap();
    let r = call(addr, "GET", "/customers", Some(&token_a), None).await;
    assert_problem(&r, 403, "not-a-member");
    let user_a = format!("{}#sunrise-app", a.issuer);
    member(&app, sunrise, &user_a, Role::Admin).await;
    let r = call(addr, "GET", "/customers", Some(&token_a), None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-tenant-id"), Some(sunrise.to_string().as_str()));
    let sunrise_customers = r.text();

    // B's token lands in Bharat, whose customers are not Sunrise's — even
    // when B's client claims the same subject name as A's member.
    member(
        &app,
        bharat,
        &format!("{}#bharat-app", b.issuer),
        Role::Admin,
    )
    .await;
    let token_b = b
        .token("bharat-app", "s3cret", "https://api.bharat.test")
        .await
        .unwrap();
    let r = call(addr, "GET", "/customers", Some(&token_b), None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-tenant-id"), Some(bharat.to_string().as_str()));
    assert_ne!(r.text(), sunrise_customers);
    // B's provider minting A's member's *subject* gets B's namespace: not a member of Sunrise.
    let (pem, kid) = b.rs256_key().unwrap();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some(kid);
    let now = jsonwebtoken::get_current_timestamp();
    let claims = json!({"iss": b.issuer, "aud": "https://api.bharat.test", "sub": "sunrise-app", "exp": now + 300});
    let forged = jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_rsa_pem(&pem).unwrap(),
    )
    .unwrap();
    let r = call(addr, "GET", "/customers", Some(&forged), None).await;
    assert_problem(&r, 403, "not-a-member");

    // A token with the wrong audience: 401, with a generic body.
    let wrong_aud = a
        .token("sunrise-app", "s3cret", "https://api.bharat.test")
        .await
        .unwrap();
    let r = call(addr, "GET", "/customers", Some(&wrong_aud), None).await;
    assert_problem(&r, 401, "token-invalid");
    assert!(!r.text().contains("audience"), "{}", r.text());

    // The application's own sessions keep working beside the providers.
    let own = login(addr, "admin@sunrise.test", "sunrise-insurance").await;
    let r = call(addr, "GET", "/customers", Some(&own), None).await;
    assert_eq!(r.status, 200, "{}", r.text());

    // Provider A goes down: its cached keys verify until they expire (1 s
    // here), then 503 with Retry-After — never 500, never acceptance.
    drop(a);
    let r = call(addr, "GET", "/customers", Some(&token_a), None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let r = call(addr, "GET", "/customers", Some(&token_a), None).await;
    assert_problem(&r, 503, "identity-provider-unavailable");
    assert_eq!(r.header("retry-after"), Some("1"));
    // Bharat's provider is unaffected.
    let r = call(addr, "GET", "/customers", Some(&token_b), None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    app.running.stop().await.unwrap();
}

async fn access_tokens_are_short_and_refreshed_while_the_membership_holds(backend: Backend) {
    let app = start_configured(backend, None, Security::default()).await;
    let addr = app.running.addr;
    let r = call(
        addr,
        "POST",
        "/auth/login",
        None,
        Some(json!({"email": "agent@sunrise.test", "password": insurance_agent::seed::DEMO_PASSWORD, "tenant": "sunrise-insurance"})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    assert_eq!(body["expires_in"], 900);
    let access = body["token"].as_str().unwrap().to_owned();
    let refresh_token = body["refresh_token"].as_str().unwrap().to_owned();
    let claims = jsonwebtoken::dangerous::insecure_decode::<serde_json::Value>(&access)
        .unwrap()
        .claims;
    assert_eq!(claims["iss"], "insurance-agent");
    assert_eq!(claims["aud"], "insurance-agent:api");

    // A refresh token is no access token.
    let r = call(addr, "GET", "/me", Some(&refresh_token), None).await;
    assert!(r.status == 400 || r.status == 401, "{}", r.text());
    // Refreshing gives a working pair.
    let r = refresh(addr, &refresh_token).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let renewed = r.json()["token"].as_str().unwrap().to_owned();
    assert_eq!(
        call(addr, "GET", "/me", Some(&renewed), None).await.status,
        200
    );
    // An access token is no refresh token.
    let r = refresh(addr, &access).await;
    assert_problem(&r, 401, "app.unauthorized");

    // Sign-out ends the session at once: the access token and the refresh
    // token issued before it are refused; a new sign-in works.
    let r = call(addr, "POST", "/auth/logout", Some(&renewed), None).await;
    assert_eq!(r.status, 204, "{}", r.text());
    let r = call(addr, "GET", "/me", Some(&renewed), None).await;
    assert_problem(&r, 401, "session-revoked");
    let r = refresh(addr, &refresh_token).await;
    assert_problem(&r, 401, "session-revoked");
    let agent = login(addr, "agent@sunrise.test", "sunrise-insurance").await;
    let admin = login(addr, "admin@sunrise.test", "sunrise-insurance").await;
    assert_eq!(
        call(addr, "GET", "/me", Some(&agent), None).await.status,
        200
    );
    // Only that user's sessions in that tenant: the admin's still work.
    assert_eq!(
        call(addr, "GET", "/me", Some(&admin), None).await.status,
        200
    );

    // The tenant suspended: refused while suspended, and still refused after
    // it resumes — its sessions ended with the suspension.
    let sunrise = async || tenant(&app, "sunrise-insurance").await;
    let suspend = Transition::Suspend {
        reason: "test".into(),
    };
    app.running
        .data
        .transition(&*sunrise().await, suspend, "test")
        .await
        .unwrap();
    let r = call(addr, "GET", "/me", Some(&admin), None).await;
    assert!(r.status == 401 || r.status == 403, "{}", r.text());
    app.running
        .data
        .transition(&*sunrise().await, Transition::Resume, "test")
        .await
        .unwrap();
    let r = call(addr, "GET", "/me", Some(&admin), None).await;
    assert_problem(&r, 401, "session-revoked");
    let admin = login(addr, "admin@sunrise.test", "sunrise-insurance").await;
    assert_eq!(
        call(addr, "GET", "/me", Some(&admin), None).await.status,
        200
    );

    // A role change (the operator's `tenant member` command revokes too).
    let agent = login(addr, "agent@sunrise.test", "sunrise-insurance").await;
    let me = call(addr, "GET", "/me", Some(&agent), None).await.json();
    let agent_id = UserId::new(me["user_id"].as_str().unwrap());
    let tenant = sunrise().await.id;
    app.running
        .data
        .session_epochs()
        .revoke(tenant, &agent_id)
        .await
        .unwrap();
    let r = call(addr, "GET", "/me", Some(&agent), None).await;
    assert_problem(&r, 401, "session-revoked");
    assert_eq!(
        call(addr, "GET", "/me", Some(&admin), None).await.status,
        200
    );
    app.running.stop().await.unwrap();
}

async fn an_operator_acts_as_a_user_through_an_audited_time_limited_grant(backend: Backend) {
    let app = start_configured(backend, None, Security::default()).await;
    let addr = app.running.addr;
    let sunrise = tenant(&app, "sunrise-insurance").await;
    let sessions = insurance_agent::auth::Sessions::new(
        insurance_agent::app::session_key(app._dir.path()).unwrap(),
    )
    .with_epochs(app.running.data.session_epochs());
    let imp = |email: &'static str, reason: &'static str, minutes: u64| {
        let (data, sessions, sunrise) = (&app.running.data, &sessions, &sunrise);
        async move {
            insurance_agent::ops::impersonate(
                data, sessions, sunrise, email, "sam", reason, minutes,
            )
            .await
        }
    };
    // No reason, or too long: no grant.
    assert!(imp("admin@sunrise.test", " ", 15).await.is_err());
    assert!(imp("admin@sunrise.test", "ticket 42", 61).await.is_err());
    // A user of another tenant: no grant.
    assert!(imp("asha@asha.test", "ticket 42", 15).await.is_err());

    let (token, ttl) = imp("admin@sunrise.test", "ticket 42: dashboard totals", 5)
        .await
        .unwrap();
    assert_eq!(ttl, 300);
    let claims = jsonwebtoken::dangerous::insecure_decode::<serde_json::Value>(&token)
        .unwrap()
        .claims;
    assert_eq!(claims["act"]["sub"], "operator:sam");
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        300
    );
    // The operator sees what the admin sees...
    let me = call(addr, "GET", "/me", Some(&token), None).await;
    assert_eq!(me.status, 200, "{}", me.text());
    assert_eq!(me.json()["email"], "admin@sunrise.test");
    // ... but cannot change security settings.
    let policy = json!({"min_length": 8});
    let r = call(
        addr,
        "PUT",
        "/settings/password-policy",
        Some(&token),
        Some(policy.clone()),
    )
    .await;
    assert_problem(&r, 403, "impersonation-forbidden");
    // The admin in person can (control).
    let admin = login(addr, "admin@sunrise.test", "sunrise-insurance").await;
    let r = call(
        addr,
        "PUT",
        "/settings/password-policy",
        Some(&admin),
        Some(policy),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    // There is no refresh for an impersonation.
    let r = refresh(addr, &token).await;
    assert_problem(&r, 401, "app.unauthorized");

    // The grant and what was done with it are in the tenant's log, with
    // both identities.
    let r = call(addr, "POST", "/auth/logout", Some(&token), None).await;
    assert_eq!(r.status, 204, "{}", r.text());
    let audit = call(addr, "GET", "/audit?limit=1000", Some(&admin), None).await;
    // The logout ended the admin's sessions too (they were the admin's).
    let admin = if audit.status == 401 {
        login(addr, "admin@sunrise.test", "sunrise-insurance").await
    } else {
        admin
    };
    let audit = call(addr, "GET", "/audit?limit=1000", Some(&admin), None).await;
    assert_eq!(audit.status, 200, "{}", audit.text());
    let items = audit.json()["items"].as_array().unwrap().clone();
    let grant = items
        .iter()
        .find(|e| e["event"]["action"] == "impersonate")
        .unwrap_or_else(|| panic!("{items:#?}"));
    assert_eq!(grant["event"]["actor"]["id"], "operator:sam");
    assert_eq!(
        grant["event"]["details"]["reason"],
        "ticket 42: dashboard totals"
    );
    let acted = items
        .iter()
        .find(|e| e["event"]["action"] == "logout")
        .unwrap_or_else(|| panic!("{items:#?}"));
    assert_eq!(acted["event"]["details"]["impersonated_by"], "operator:sam");
    assert_eq!(acted["event"]["actor"]["kind"], "user");
    app.running.stop().await.unwrap();
}

async fn totp_enrolment_second_factor_and_a_tenant_requiring_mfa(backend: Backend) {
    use insurance_agent::auth::totp;
    use insurance_agent::seed::DEMO_PASSWORD;
    let app = start_configured(backend, None, Security::default()).await;
    let addr = app.running.addr;
    let agent = |extra: serde_json::Value| {
        let mut body = json!({"email": "agent@sunrise.test", "password": DEMO_PASSWORD, "tenant": "sunrise-insurance"});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        body
    };
    let wrong = json!({"email": "agent@sunrise.test", "password": "nope"});
    let r = call(addr, "POST", "/auth/mfa/enroll", None, Some(wrong)).await;
    assert_problem(&r, 401, "app.unauthorized");
    let r = call(
        addr,
        "POST",
        "/auth/mfa/enroll",
        None,
        Some(agent(json!({}))),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let secret = totp::from_base32(r.json()["secret"].as_str().unwrap()).unwrap();
    assert!(
        r.json()["otpauth_uri"]
            .as_str()
            .unwrap()
            .starts_with("otpauth://totp/")
    );
    // Unconfirmed: the password alone still signs in.
    let r = call(addr, "POST", "/auth/login", None, Some(agent(json!({})))).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let now = jsonwebtoken::get_current_timestamp();
    let r = call(
        addr,
        "POST",
        "/auth/mfa/confirm",
        None,
        Some(agent(json!({"code": "000000"}))),
    )
    .await;
    assert_problem(&r, 401, "app.unauthorized");
    let code = totp::code(&secret, now);
    let r = call(
        addr,
        "POST",
        "/auth/mfa/confirm",
        None,
        Some(agent(json!({"code": code}))),
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.text());
    // Confirmed: no code, or the confirmation's code again, is refused.
    let r = call(addr, "POST", "/auth/login", None, Some(agent(json!({})))).await;
    assert_problem(&r, 401, "app.mfa-required");
    let r = call(
        addr,
        "POST",
        "/auth/login",
        None,
        Some(agent(json!({"totp": code}))),
    )
    .await;
    assert_problem(&r, 401, "app.mfa-required");
    // The next step's code works once.
    let next = totp::code(&secret, now + totp::STEP);
    let r = call(
        addr,
        "POST",
        "/auth/login",
        None,
        Some(agent(json!({"totp": next}))),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = call(
        addr,
        "POST",
        "/auth/login",
        None,
        Some(agent(json!({"totp": next}))),
    )
    .await;
    assert_problem(&r, 401, "app.mfa-required");
    // A second enrolment cannot replace the confirmed one.
    let r = call(
        addr,
        "POST",
        "/auth/mfa/enroll",
        None,
        Some(agent(json!({}))),
    )
    .await;
    assert_problem(&r, 409, "app.conflict");

    // The tenant requires MFA: a member without an authenticator is told to enrol.
    let admin = login(addr, "admin@sunrise.test", "sunrise-insurance").await;
    let r = call(
        addr,
        "PUT",
        "/settings/security",
        Some(&admin),
        Some(json!({"mfa_required": true})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let manager = json!({"email": "manager@sunrise.test", "password": DEMO_PASSWORD, "tenant": "sunrise-insurance"});
    let r = call(addr, "POST", "/auth/login", None, Some(manager.clone())).await;
    assert_problem(&r, 403, "app.mfa-enrollment-required");
    // Another tenant without the policy is not affected.
    login(addr, "admin@bharat.test", "bharat-agents").await;
    // Lifting the policy (control): the manager signs in again.
    let r = call(
        addr,
        "PUT",
        "/settings/security",
        Some(&admin),
        Some(json!({"mfa_required": false})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = call(addr, "POST", "/auth/login", None, Some(manager)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    app.running.stop().await.unwrap();
}
