//! Maintenance windows in the request pipeline: refused with Retry-After
//! while open, served after `until`, operators and impersonated sessions
//! pass, a malformed window keeps the tenant closed, and a request naming no
//! tenant is told apart from every other refusal (universal routes).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{Duration, Utc};
use tenancy_core::identity::{Authenticate, Principal};
use tenancy_core::maintenance::Maintenance;
use tenancy_core::pipeline::RequestPipeline;
use tenancy_core::resolve::{
    HeaderLookup, HeaderStrategy, RequestView, ResolverChain, SimpleRequest,
};
use tenancy_core::store::InMemoryTenantStore;
use tenancy_core::{RequestMeta, Tenant, TenantError, TenantId, UserId};

/// `x-user` is the user; `x-operator` makes it an impersonated session.
struct HeaderUser;

#[async_trait]
impl Authenticate for HeaderUser {
    async fn authenticate(
        &self,
        req: &(dyn RequestView + Sync),
        _tenant: &Tenant,
    ) -> Result<Option<Principal>, TenantError> {
        let HeaderLookup::One(user) = req.header("x-user") else {
            return Ok(None);
        };
        let mut p = Principal::new(UserId::new(String::from_utf8_lossy(user)), "test");
        if let HeaderLookup::One(op) = req.header("x-operator") {
            p = p.with_impersonator(String::from_utf8_lossy(op).into_owned());
        }
        Ok(Some(p))
    }
}

fn pipeline(tenant: &Tenant) -> RequestPipeline {
    let store = Arc::new(InMemoryTenantStore::with_tenants([tenant.clone()]).unwrap());
    RequestPipeline::new(
        ResolverChain::new().with(HeaderStrategy::tenant_id()),
        store,
    )
    .authenticate_with(Arc::new(HeaderUser))
    .maintenance_bypass(|user, _| user.as_str().starts_with("ops:"))
}

fn acme(window: Option<serde_json::Value>) -> Tenant {
    let mut t = Tenant::new(TenantId::new_v4(), "acme".parse().unwrap(), "Acme");
    if let Some(w) = window {
        t.settings = serde_json::json!({ "maintenance": w });
    }
    t
}

async fn outcome(p: &RequestPipeline, t: &Tenant, headers: &[(&str, &str)]) -> Result<(), u16> {
    let mut req = SimpleRequest::new("/").with_header("x-tenant-id", t.id.to_string());
    for (h, v) in headers {
        req = req.with_header(h, *v);
    }
    p.admit(&req, None, RequestMeta::default())
        .await
        .map(|_| ())
        .map_err(|r| r.problem().status)
}

#[tokio::test]
async fn an_open_window_refuses_with_retry_after_and_the_message() {
    let until = Utc::now() + Duration::seconds(90);
    let t = acme(Some(
        serde_json::to_value(Maintenance::until(until).with_message("Upgrading")).unwrap(),
    ));
    let p = pipeline(&t);
    let req = SimpleRequest::new("/").with_header("x-tenant-id", t.id.to_string());
    let refused = p
        .admit(
            &req.clone().with_header("x-user", "ann"),
            None,
            RequestMeta::default(),
        )
        .await
        .unwrap_err();
    let problem = refused.problem();
    assert_eq!((problem.status, problem.code), (503, "tenant-maintenance"));
    assert_eq!(problem.detail, "Upgrading");
    let retry: u64 = problem
        .headers
        .iter()
        .find(|(h, _)| *h == "retry-after")
        .map(|(_, v)| v.parse().unwrap())
        .unwrap();
    assert!((85..=90).contains(&retry), "{retry}");
    // Anonymous requests too.
    assert_eq!(outcome(&p, &t, &[]).await, Err(503));
    // Operators and impersonated sessions pass.
    assert_eq!(outcome(&p, &t, &[("x-user", "ops:kim")]).await, Ok(()));
    assert_eq!(
        outcome(&p, &t, &[("x-user", "ann"), ("x-operator", "operator:kim")]).await,
        Ok(())
    );
}

#[tokio::test]
async fn the_window_closes_by_itself_and_no_window_is_no_refusal() {
    let ended = acme(Some(
        serde_json::json!({"until": Utc::now() - Duration::seconds(1)}),
    ));
    assert_eq!(outcome(&pipeline(&ended), &ended, &[]).await, Ok(()));
    let plain = acme(None);
    assert_eq!(outcome(&pipeline(&plain), &plain, &[]).await, Ok(()));
    let lifted = acme(Some(serde_json::Value::Null));
    assert_eq!(outcome(&pipeline(&lifted), &lifted, &[]).await, Ok(()));
}

#[tokio::test]
async fn a_window_that_cannot_be_read_keeps_the_tenant_closed() {
    for bad in [
        serde_json::json!({"until": "tomorrow"}),
        serde_json::json!({"untill": "2030-01-01T00:00:00Z"}),
        serde_json::json!("yes"),
    ] {
        let t = acme(Some(bad.clone()));
        assert_eq!(outcome(&pipeline(&t), &t, &[]).await, Err(503), "{bad}");
    }
}

#[tokio::test]
async fn only_a_request_naming_no_tenant_counts_as_central() {
    let t = acme(None);
    let p = pipeline(&t);
    let none = p
        .admit(&SimpleRequest::new("/"), None, RequestMeta::default())
        .await
        .unwrap_err();
    assert!(none.names_no_tenant());
    for (name, value) in [
        ("x-tenant-id", "not-a-uuid".to_owned()),
        ("x-tenant-id", TenantId::new_v4().to_string()),
    ] {
        let r = p
            .admit(
                &SimpleRequest::new("/").with_header(name, value.clone()),
                None,
                RequestMeta::default(),
            )
            .await
            .unwrap_err();
        assert!(!r.names_no_tenant(), "{value}: {}", r.error);
    }
}
