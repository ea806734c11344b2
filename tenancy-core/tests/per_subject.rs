//! Rate limits per user and per client address beside the tenant's budget,
//! client addresses behind trusted proxies, and the pipeline's
//! authentication step.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::sync::Arc;

use async_trait::async_trait;
use tenancy_core::client::TrustedProxies;
use tenancy_core::identity::{Authenticate, Principal};
use tenancy_core::pipeline::{RateSubject, RequestPipeline};
use tenancy_core::plan::PlanCatalog;
use tenancy_core::quota::MemoryQuota;
use tenancy_core::resolve::{
    HeaderLookup, HeaderStrategy, RequestView, ResolverChain, SimpleRequest,
};
use tenancy_core::store::InMemoryTenantStore;
use tenancy_core::{
    Authorizer, InMemoryMembershipStore, Membership, PlanId, RequestMeta, Role, Tenant,
    TenantError, TenantId, UserId,
};

const CATALOG: &str = r#"{"plans": [{"id": "pro", "name": "Pro", "limits": {
    "api_calls": {"rate": {"per_hour": 10}},
    "api_calls_per_user": {"rate": {"per_hour": 3}},
    "api_calls_per_client": {"rate": {"per_hour": 5}}
}}]}"#;

/// The user named by `x-user` (a test stand-in for a verified token).
struct HeaderUser;

#[async_trait]
impl Authenticate for HeaderUser {
    async fn authenticate(
        &self,
        req: &(dyn RequestView + Sync),
        _tenant: &Tenant,
    ) -> Result<Option<Principal>, TenantError> {
        Ok(match req.header("x-user") {
            HeaderLookup::One(v) => Some(Principal::new(
                UserId::new(String::from_utf8_lossy(v)),
                "test",
            )),
            _ => None,
        })
    }
}

struct World {
    pipeline: RequestPipeline,
    tenant: Tenant,
}

fn world(per_user: bool, per_client: bool) -> World {
    let tenant = Tenant::new(TenantId::new_v4(), "acme".parse().unwrap(), "Acme")
        .with_plan(PlanId::new("pro"));
    let store = Arc::new(InMemoryTenantStore::with_tenants([tenant.clone()]).unwrap());
    let members = Arc::new(InMemoryMembershipStore::new());
    for u in ["ann", "bob"] {
        members.upsert(Membership::new(UserId::new(u), tenant.id, Role::Member));
    }
    let quota = Arc::new(MemoryQuota::new());
    let mut pipeline = RequestPipeline::new(
        ResolverChain::new().with(HeaderStrategy::tenant_id()),
        store.clone(),
    )
    .trust_proxies(TrustedProxies::parse("10.0.0.0/8").unwrap())
    .authenticate_with(Arc::new(HeaderUser))
    .require_membership(Arc::new(Authorizer::new(members, store)))
    .with_plans(Arc::new(PlanCatalog::from_json(CATALOG).unwrap()))
    .with_rate_limit(quota.clone(), "api_calls");
    if per_user {
        pipeline =
            pipeline.with_rate_limit_per(RateSubject::User, quota.clone(), "api_calls_per_user");
    }
    if per_client {
        pipeline = pipeline.with_rate_limit_per(RateSubject::Client, quota, "api_calls_per_client");
    }
    World { pipeline, tenant }
}

impl World {
    async fn call(
        &self,
        user: &str,
        forwarded_for: &str,
    ) -> Result<(), (u16, &'static str, Vec<(&'static str, String)>)> {
        let req = SimpleRequest::new("/")
            .with_header("x-tenant-id", self.tenant.id.to_string())
            .with_header("x-user", user)
            .with_header("x-forwarded-for", forwarded_for);
        let meta = RequestMeta::default().with_ip("10.0.0.1".parse().unwrap());
        match self.pipeline.admit(&req, None, meta).await {
            Ok(_) => Ok(()),
            Err(r) => {
                let p = r.problem();
                Err((p.status, p.code, p.headers))
            }
        }
    }
}

fn header(headers: &[(&'static str, String)], name: &str) -> Option<String> {
    headers
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.clone())
}

#[tokio::test]
async fn one_member_cannot_spend_the_whole_tenants_budget() {
    let w = world(true, false);
    for _ in 0..3 {
        w.call("ann", "203.0.113.1").await.unwrap();
    }
    // Ann's fourth call is refused with her own limit's headers...
    let (status, code, headers) = w.call("ann", "203.0.113.1").await.unwrap_err();
    assert_eq!((status, code), (429, "rate-limited"));
    assert_eq!(header(&headers, "ratelimit-limit").as_deref(), Some("3"));
    assert_eq!(
        header(&headers, "ratelimit-remaining").as_deref(),
        Some("0")
    );
    assert!(header(&headers, "retry-after").is_some());
    // ... and costs the tenant nothing: Bob still has the tenant's other 7 calls.
    for _ in 0..3 {
        w.call("bob", "203.0.113.2").await.unwrap();
    }
    // Twin: without the per-user limit, Ann alone spends the tenant's 10 and
    // Bob is refused.
    let twin = world(false, false);
    for _ in 0..10 {
        twin.call("ann", "203.0.113.1").await.unwrap();
    }
    let (status, _, headers) = twin.call("bob", "203.0.113.2").await.unwrap_err();
    assert_eq!(status, 429);
    assert_eq!(header(&headers, "ratelimit-limit").as_deref(), Some("10"));
}

#[tokio::test]
async fn client_addresses_are_limited_per_forwarded_client_and_v6_per_64() {
    let w = world(false, true);
    for user in ["ann", "bob", "ann", "bob", "ann"] {
        w.call(user, "203.0.113.9").await.unwrap();
    }
    // The sixth call from that client is refused, whoever makes it.
    let (status, _, headers) = w.call("bob", "203.0.113.9").await.unwrap_err();
    assert_eq!(status, 429);
    assert_eq!(header(&headers, "ratelimit-limit").as_deref(), Some("5"));
    // A client spoofing its own X-Forwarded-For left of the proxy's entry is
    // still counted as itself.
    assert!(w.call("ann", "198.51.100.1, 203.0.113.9").await.is_err());
    // Another client is not.
    w.call("ann", "203.0.113.10").await.unwrap();
    // IPv6: one /64 is one client.
    let w = world(false, true);
    for i in 0..5 {
        w.call("ann", &format!("2001:db8:1:2::{i:x}"))
            .await
            .unwrap();
    }
    assert!(w.call("ann", "2001:db8:1:2:ffff::1").await.is_err());
    w.call("ann", "2001:db8:1:3::1").await.unwrap();
}

#[tokio::test]
async fn the_authenticated_principal_is_the_user_whose_membership_is_checked() {
    let w = world(false, false);
    w.call("ann", "203.0.113.1").await.unwrap();
    let (status, code, _) = w.call("mallory", "203.0.113.1").await.unwrap_err();
    assert_eq!((status, code), (403, "not-a-member"));
    // A malformed forwarded header from the trusted proxy: 400.
    let (status, code, _) = w.call("ann", "not-an-ip").await.unwrap_err();
    assert_eq!((status, code), (400, "forwarded-invalid"));
}

#[tokio::test]
async fn the_memory_quota_counts_subjects_apart() {
    let catalog = PlanCatalog::from_json(CATALOG).unwrap();
    let tenant = Tenant::new(TenantId::new_v4(), "acme".parse().unwrap(), "Acme");
    let ctx = tenancy_core::TenantContext::new(tenant).with_entitlements(Arc::new(
        catalog
            .entitlements(&PlanId::new("pro"), &Default::default())
            .unwrap(),
    ));
    tenancy_testkit::rate::subjects_are_counted_apart(&MemoryQuota::new(), &ctx, "api_calls", 10)
        .await;
}

#[tokio::test]
async fn a_tenants_network_policy_admits_only_its_blocks() {
    let mut w = world(false, false);
    let mut tenant = w.tenant.clone();
    tenant.settings =
        serde_json::json!({"network": {"allow": ["203.0.113.0/24", "2001:db8::/32"]}});
    let store = Arc::new(InMemoryTenantStore::with_tenants([tenant.clone()]).unwrap());
    let members = Arc::new(InMemoryMembershipStore::new());
    members.upsert(Membership::new(UserId::new("ann"), tenant.id, Role::Member));
    w.pipeline = RequestPipeline::new(
        ResolverChain::new().with(HeaderStrategy::tenant_id()),
        store.clone(),
    )
    .trust_proxies(TrustedProxies::parse("10.0.0.0/8").unwrap())
    .authenticate_with(Arc::new(HeaderUser))
    .require_membership(Arc::new(Authorizer::new(members, store)));
    w.tenant = tenant.clone();
    w.call("ann", "203.0.113.77").await.unwrap();
    w.call("ann", "2001:db8:5::1").await.unwrap();
    let (status, code, _) = w.call("ann", "198.51.100.1").await.unwrap_err();
    assert_eq!((status, code), (403, "address-not-allowed"));
    // No address known: refused, not waved through.
    let req = SimpleRequest::new("/")
        .with_header("x-tenant-id", tenant.id.to_string())
        .with_header("x-user", "ann");
    let refused = w
        .pipeline
        .admit(&req, None, RequestMeta::default())
        .await
        .unwrap_err();
    assert_eq!(refused.problem().code, "address-not-allowed");
    // A malformed policy admits no one (503, logged).
    let mut broken = tenant.clone();
    broken.settings = serde_json::json!({"network": {"allow": ["not-a-block"]}});
    let store = Arc::new(InMemoryTenantStore::with_tenants([broken.clone()]).unwrap());
    let p = RequestPipeline::new(
        ResolverChain::new().with(HeaderStrategy::tenant_id()),
        store,
    );
    let req = SimpleRequest::new("/").with_header("x-tenant-id", broken.id.to_string());
    let meta = RequestMeta::default().with_ip("203.0.113.77".parse().unwrap());
    assert_eq!(
        p.admit(&req, None, meta)
            .await
            .unwrap_err()
            .problem()
            .status,
        503
    );
}
