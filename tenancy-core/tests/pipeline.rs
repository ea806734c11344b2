//! The framework-neutral request pipeline and its problem responses: the
//! behaviour table the web adapters (issue 7) will share.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{Duration, Utc};
use tenancy_core::flags::FlagEngine;
use tenancy_core::pipeline::RequestPipeline;
use tenancy_core::plan::PlanCatalog;
use tenancy_core::quota::MemoryQuota;
use tenancy_core::resolve::{HeaderStrategy, ResolverChain, SimpleRequest, SubdomainStrategy};
use tenancy_core::store::{InMemoryTenantStore, TenantStore};
use tenancy_core::{
    Authorizer, DomainName, InMemoryMembershipStore, Membership, PlanId, RequestMeta, Role,
    StoreError, Tenant, TenantId, TenantSlug, TenantStatus, UserId,
};

const CATALOG: &str = r#"{"plans": [{"id": "pro", "name": "Pro",
    "limits": {"api_calls": {"rate": {"per_minute": 2}}},
    "features": {"analytics": true}}]}"#;

struct World {
    pipeline: RequestPipeline,
    members_only: RequestPipeline,
    active: Tenant,
    other: Tenant,
    ids: Vec<(&'static str, TenantId)>,
    /// A pipeline over the same tenants with a rate limit and default settings.
    quiet: RequestPipeline,
}

fn world() -> World {
    let now = Utc::now();
    let t = |slug: &str| {
        Tenant::new(TenantId::new_v4(), slug.parse().unwrap(), slug).with_plan(PlanId::new("pro"))
    };
    let active = t("acme");
    let other = t("globex");
    let suspended = t("frozen").with_status(TenantStatus::Suspended {
        reason: "unpaid invoice".into(),
    });
    let expired = t("lapsed").with_status(TenantStatus::Trial {
        ends_at: now - Duration::days(1),
    });
    let deleted = t("gone").with_status(TenantStatus::Deleted);
    let offboarding = t("leaving").with_status(TenantStatus::Offboarding {
        purge_after: now + Duration::days(9),
    });
    let ids = vec![
        ("suspended", suspended.id),
        ("expired", expired.id),
        ("deleted", deleted.id),
        ("offboarding", offboarding.id),
    ];
    let store = Arc::new(
        InMemoryTenantStore::with_tenants([
            active.clone(),
            other.clone(),
            suspended,
            expired,
            deleted,
            offboarding,
        ])
        .unwrap(),
    );
    let catalog = Arc::new(PlanCatalog::from_json(CATALOG).unwrap());
    let resolver =
        ResolverChain::new()
            .with(HeaderStrategy::tenant_id())
            .with(SubdomainStrategy::new(
                "example.com".parse::<DomainName>().unwrap(),
            ));
    let pipeline = RequestPipeline::new(resolver.clone(), store.clone())
        .with_plans(catalog.clone())
        .with_flags(Arc::new(FlagEngine::new([
            tenancy_core::flags::FlagDefinition::boolean("analytics"),
        ])))
        .with_rate_limit(Arc::new(MemoryQuota::new()), "api_calls")
        .rate_headers_on_success(true);
    let members = Arc::new(InMemoryMembershipStore::new());
    members.upsert(Membership::new(UserId::new("ann"), active.id, Role::Member));
    let quiet = RequestPipeline::new(resolver.clone(), store.clone())
        .with_plans(catalog.clone())
        .with_rate_limit(Arc::new(MemoryQuota::new()), "api_calls");
    let members_only = RequestPipeline::new(resolver, store.clone())
        .require_membership(Arc::new(Authorizer::new(members, store)));
    World {
        pipeline,
        members_only,
        quiet,
        active,
        other,
        ids,
    }
}

fn header(id: impl std::fmt::Display) -> SimpleRequest {
    SimpleRequest::new("/").with_header("x-tenant-id", id.to_string())
}

#[tokio::test]
async fn the_behaviour_table() {
    let w = world();
    let id = |name: &str| w.ids.iter().find(|(n, _)| *n == name).unwrap().1;
    // (case, request, status, problem code)
    let cases: Vec<(&str, SimpleRequest, u16, &str)> = vec![
        (
            "no tenant named",
            SimpleRequest::new("/"),
            400,
            "tenant-missing",
        ),
        (
            "malformed id",
            header("not-a-uuid"),
            400,
            "tenant-id-malformed",
        ),
        (
            "nil id",
            header("00000000-0000-0000-0000-000000000000"),
            400,
            "tenant-id-malformed",
        ),
        (
            "duplicate header",
            header(w.active.id).with_header("x-tenant-id", w.active.id.to_string()),
            400,
            "tenant-header-duplicated",
        ),
        (
            "sql-looking",
            header("1' OR '1'='1"),
            400,
            "tenant-id-malformed",
        ),
        (
            "header over 8 KiB",
            header("a".repeat(9000)),
            400,
            "tenant-id-malformed",
        ),
        (
            "non-utf8 header",
            SimpleRequest::new("/").with_header("x-tenant-id", vec![0xff, 0xfe]),
            400,
            "tenant-id-malformed",
        ),
        (
            "unknown",
            header(TenantId::new_v4()),
            404,
            "tenant-not-found",
        ),
        ("deleted", header(id("deleted")), 404, "tenant-not-found"),
        (
            "suspended",
            header(id("suspended")),
            403,
            "tenant-suspended",
        ),
        ("trial over", header(id("expired")), 402, "trial-expired"),
        (
            "offboarding",
            header(id("offboarding")),
            403,
            "tenant-offboarding",
        ),
        (
            "header and subdomain disagree",
            header(w.other.id).with_host("acme.example.com"),
            403,
            "tenant-conflict",
        ),
    ];
    for (name, req, status, code) in cases {
        // The synchronous fast path gives the same answer whenever it gives
        // one; only a tenant the store cannot name at once sends it back.
        match w.pipeline.admit_now(&req, None, RequestMeta::default()) {
            Some(outcome) => {
                let p = outcome.unwrap_err().problem();
                assert_eq!((p.status, p.code), (status, code), "fast path, {name}");
            }
            None => assert_eq!(name, "unknown", "the fast path stepped aside"),
        }
        let rejected = w
            .pipeline
            .admit(&req, None, RequestMeta::default())
            .await
            .unwrap_err();
        let p = rejected.problem();
        assert_eq!(
            (p.status, p.code),
            (status, code),
            "{name}: {}",
            rejected.error
        );
        assert_eq!(
            p.type_uri,
            format!("urn:tenancy-rs:problem:{code}"),
            "{name}"
        );
        let body = p.to_json();
        assert_eq!(body["status"], status, "{name}");
        assert_eq!(body["title"], p.title, "{name}");
    }
    // Unknown and deleted tenants are indistinguishable on the wire.
    let unknown = w
        .pipeline
        .admit(&header(TenantId::new_v4()), None, RequestMeta::default())
        .await
        .unwrap_err();
    let deleted = w
        .pipeline
        .admit(&header(id("deleted")), None, RequestMeta::default())
        .await
        .unwrap_err();
    assert_eq!(unknown.problem().to_json(), deleted.problem().to_json());
    // The suspension reason reaches the tenant's users.
    let suspended = w
        .pipeline
        .admit(&header(id("suspended")), None, RequestMeta::default())
        .await
        .unwrap_err();
    assert!(suspended.problem().detail.contains("unpaid invoice"));
}

#[tokio::test]
async fn admitted_requests_carry_context_flags_and_rate_headers_then_429() {
    let w = world();
    let req = SimpleRequest::new("/").with_host("acme.example.com");
    let ip = "198.51.100.4".parse().unwrap();
    let ok = w
        .pipeline
        .admit(&req, None, RequestMeta::default().with_ip(ip))
        .await
        .unwrap();
    assert_eq!(ok.ctx.tenant_id(), w.active.id);
    assert_eq!(ok.ctx.request().ip, Some(ip));
    assert!(
        ok.ctx.feature_enabled("analytics"),
        "flags evaluated with the plan"
    );
    let headers = ok.headers();
    assert!(headers.contains(&("x-tenant-id", w.active.id.to_string())));
    assert!(headers.contains(&("ratelimit-limit", "2".to_string())));
    assert!(headers.contains(&("ratelimit-remaining", "1".to_string())));

    w.pipeline
        .admit(&req, None, RequestMeta::default())
        .await
        .unwrap();
    let limited = w
        .pipeline
        .admit(&req, None, RequestMeta::default())
        .await
        .unwrap_err();
    let p = limited.problem();
    assert_eq!((p.status, p.code), (429, "rate-limited"));
    assert!(p.headers.iter().any(|(n, _)| *n == "ratelimit-remaining"));

    // Without `rate_headers_on_success` only the refusal carries them.
    let ok = w
        .quiet
        .admit(&header(w.active.id), None, RequestMeta::default())
        .await
        .unwrap();
    assert!(ok.rate.is_some(), "the rate is still checked");
    let names: Vec<_> = ok.headers().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["x-tenant-id"]);
    let retry: u64 = p
        .headers
        .iter()
        .find(|(h, _)| *h == "retry-after")
        .unwrap()
        .1
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(p.to_json()["resource"], "api_calls");
    // Another tenant has its own allowance.
    assert!(
        w.pipeline
            .admit(&header(w.other.id), None, RequestMeta::default())
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn membership_is_required_when_configured() {
    let w = world();
    let req = header(w.active.id);
    let p = w
        .members_only
        .admit(&req, None, RequestMeta::default())
        .await
        .unwrap_err()
        .problem();
    assert_eq!((p.status, p.code), (401, "unauthenticated"));
    let p = w
        .members_only
        .admit(&req, Some(&UserId::new("bob")), RequestMeta::default())
        .await
        .unwrap_err()
        .problem();
    assert_eq!((p.status, p.code), (403, "not-a-member"));
    let ok = w
        .members_only
        .admit(&req, Some(&UserId::new("ann")), RequestMeta::default())
        .await
        .unwrap();
    assert_eq!(ok.ctx.actor().unwrap().role, Role::Member);
    // A member of acme is not a member of globex.
    let p = w
        .members_only
        .admit(
            &header(w.other.id),
            Some(&UserId::new("ann")),
            RequestMeta::default(),
        )
        .await
        .unwrap_err()
        .problem();
    assert_eq!(p.status, 403);
}

/// A store that is down.
struct Down;

#[async_trait]
impl TenantStore for Down {
    async fn by_id(&self, _: TenantId) -> Result<Option<Arc<Tenant>>, StoreError> {
        Err(StoreError::msg("connection refused by 10.0.0.7:5432"))
    }
    async fn by_slug(&self, _: &TenantSlug) -> Result<Option<Arc<Tenant>>, StoreError> {
        Err(StoreError::msg("connection refused by 10.0.0.7:5432"))
    }
    async fn by_domain(&self, _: &DomainName) -> Result<Option<Arc<Tenant>>, StoreError> {
        Err(StoreError::msg("connection refused by 10.0.0.7:5432"))
    }
}

#[tokio::test]
async fn server_errors_carry_no_internals() {
    let pipeline = RequestPipeline::new(
        ResolverChain::new().with(HeaderStrategy::tenant_id()),
        Arc::new(Down),
    );
    let rejected = pipeline
        .admit(&header(TenantId::new_v4()), None, RequestMeta::default())
        .await
        .unwrap_err();
    let body = rejected.problem().to_json().to_string();
    // The store did not answer: 503 with Retry-After, no internals.
    assert_eq!(rejected.problem().status, 503);
    assert!(
        rejected
            .problem()
            .headers
            .iter()
            .any(|(n, v)| *n == "retry-after" && v == "1"),
        "{:?}",
        rejected.problem().headers
    );
    assert!(!body.contains("10.0.0.7"), "{body}");
    assert!(body.contains("tenant-store-unavailable"), "{body}");
}

#[tokio::test]
async fn cached_flag_snapshots_follow_engine_changes() {
    let acme = Tenant::new(TenantId::new_v4(), "acme".parse().unwrap(), "Acme")
        .with_plan(PlanId::new("pro"));
    let store = Arc::new(tenancy_core::store::CachedStore::new(
        InMemoryTenantStore::with_tenants([acme.clone()]).unwrap(),
    ));
    let engine = Arc::new(FlagEngine::new([
        tenancy_core::flags::FlagDefinition::boolean("analytics"),
    ]));
    let pipeline = RequestPipeline::new(
        ResolverChain::new().with(HeaderStrategy::tenant_id()),
        store,
    )
    .with_plans(Arc::new(PlanCatalog::from_json(CATALOG).unwrap()))
    .with_flags(engine.clone());
    let req = header(acme.id);
    let on = |p: &RequestPipeline| {
        let (p, req) = (p.clone(), req.clone());
        async move {
            p.admit(&req, None, RequestMeta::default())
                .await
                .unwrap()
                .ctx
                .feature_enabled("analytics")
        }
    };
    assert!(on(&pipeline).await);
    assert!(on(&pipeline).await, "served from the per-tenant cache");
    engine.set_kill_switch("analytics", true).unwrap();
    assert!(
        !on(&pipeline).await,
        "a kill switch applies to the next request"
    );
    engine.set_kill_switch("analytics", false).unwrap();
    engine
        .set_tenant_override(
            acme.id,
            "analytics",
            tenancy_core::plan::FlagValue::Bool(false),
        )
        .unwrap();
    assert!(!on(&pipeline).await, "so does a tenant override");
}

#[tokio::test]
async fn access_denials_are_audited_in_the_tenant_log_rate_refusals_are_not() {
    use tenancy_core::audit::{AuditActor, MemorySink};
    let w = world();
    let sink = Arc::new(MemorySink::default());
    let members_only = w.members_only.clone().with_audit(sink.clone());
    let ip = "203.0.113.9".parse().unwrap();
    // No user: 401. A user who is not a member: 403. A member: admitted.
    let anonymous = members_only
        .admit(
            &header(w.active.id),
            None,
            RequestMeta::default().with_ip(ip),
        )
        .await
        .unwrap_err();
    assert_eq!(anonymous.problem().status, 401);
    let stranger = members_only
        .admit(
            &header(w.active.id),
            Some(&UserId::new("eve")),
            RequestMeta::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(stranger.problem().status, 403);
    members_only
        .admit(
            &header(w.active.id),
            Some(&UserId::new("ann")),
            RequestMeta::default(),
        )
        .await
        .unwrap();
    // A malformed id names no tenant: nothing to record it in.
    members_only
        .admit(&header("not-a-uuid"), None, RequestMeta::default())
        .await
        .unwrap_err();

    let events = sink.events();
    assert_eq!(events.len(), 2, "{events:?}");
    assert!(
        events
            .iter()
            .all(|e| e.tenant == w.active.id && e.action == "denied")
    );
    assert_eq!(events[0].actor, AuditActor::System("pipeline".into()));
    assert_eq!(events[0].ip, Some(ip));
    assert_eq!(events[0].details["status"], 401);
    assert_eq!(events[1].actor, AuditActor::User("eve".into()));
    assert_eq!(events[1].details["code"], "not-a-member");

    // A suspended tenant's refusal is recorded; hitting the rate limit is not.
    let sink = Arc::new(MemorySink::default());
    let open = w.pipeline.clone().with_audit(sink.clone());
    let suspended = w.ids.iter().find(|(n, _)| *n == "suspended").unwrap().1;
    open.admit(&header(suspended), None, RequestMeta::default())
        .await
        .unwrap_err();
    let mut refused = None;
    for _ in 0..5 {
        if let Err(r) = open
            .admit(&header(w.other.id), None, RequestMeta::default())
            .await
        {
            refused = Some(r);
            break;
        }
    }
    assert_eq!(refused.unwrap().problem().status, 429);
    let events = sink.events();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].tenant, suspended);
    assert_eq!(events[0].details["code"], "tenant-suspended");
}

#[tokio::test]
async fn the_fast_path_admits_like_admit_and_shares_its_rate_limit() {
    let w = world();
    let req = header(w.active.id);
    let slow = w
        .pipeline
        .admit(&req, None, RequestMeta::default())
        .await
        .unwrap();
    let ip = "192.0.2.7".parse().unwrap();
    let fast = w
        .pipeline
        .admit_now(&req, None, RequestMeta::default().with_ip(ip))
        .expect("an in-memory store and limiter answer at once")
        .unwrap();
    assert_eq!(fast.ctx.tenant_id(), slow.ctx.tenant_id());
    assert_eq!(fast.ctx.request().ip, Some(ip));
    assert!(fast.ctx.feature_enabled("analytics"));
    let header_of = |a: &tenancy_core::pipeline::Admitted, name: &str| {
        a.headers()
            .into_iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v)
    };
    for name in ["x-tenant-id", "ratelimit-limit"] {
        assert_eq!(header_of(&fast, name), header_of(&slow, name), "{name}");
    }
    // The second request of the two allowed per minute.
    assert_eq!(
        header_of(&slow, "ratelimit-remaining").as_deref(),
        Some("1")
    );
    assert_eq!(
        header_of(&fast, "ratelimit-remaining").as_deref(),
        Some("0")
    );
    // The limit is the same counter: the third request is refused, by
    // either path.
    let limited = w
        .pipeline
        .admit_now(&req, None, RequestMeta::default())
        .unwrap()
        .unwrap_err();
    let p = limited.problem();
    assert_eq!((p.status, p.code), (429, "rate-limited"));
    assert!(p.headers.iter().any(|(n, _)| *n == "retry-after"));
    assert_eq!(
        w.pipeline
            .admit(&req, None, RequestMeta::default())
            .await
            .unwrap_err()
            .problem()
            .status,
        429
    );
}

#[tokio::test]
async fn the_fast_path_steps_aside_for_membership_and_audited_refusals() {
    use tenancy_core::audit::MemorySink;
    let w = world();
    // Membership is checked against a store: always the asynchronous path.
    assert!(
        w.members_only
            .admit_now(
                &header(w.active.id),
                Some(&UserId::new("ann")),
                RequestMeta::default()
            )
            .is_none()
    );
    // A refusal that must be audited goes to `admit`, which records it;
    // an admission does not need the audit sink and stays fast.
    let sink = Arc::new(MemorySink::default());
    let audited = w.quiet.clone().with_audit(sink.clone());
    let suspended = w.ids.iter().find(|(n, _)| *n == "suspended").unwrap().1;
    assert!(
        audited
            .admit_now(&header(suspended), None, RequestMeta::default())
            .is_none()
    );
    assert!(
        sink.events().is_empty(),
        "nothing recorded by the fast path"
    );
    assert!(
        audited
            .admit_now(&header(w.active.id), None, RequestMeta::default())
            .unwrap()
            .is_ok()
    );
    // A store that cannot answer at once (no `peek`): always asynchronous.
    struct Remote(InMemoryTenantStore);
    #[async_trait]
    impl TenantStore for Remote {
        async fn by_id(&self, id: TenantId) -> Result<Option<Arc<Tenant>>, StoreError> {
            self.0.by_id(id).await
        }
        async fn by_slug(&self, s: &TenantSlug) -> Result<Option<Arc<Tenant>>, StoreError> {
            self.0.by_slug(s).await
        }
        async fn by_domain(&self, d: &DomainName) -> Result<Option<Arc<Tenant>>, StoreError> {
            self.0.by_domain(d).await
        }
    }
    let remote = RequestPipeline::new(
        ResolverChain::new().with(HeaderStrategy::tenant_id()),
        Arc::new(Remote(
            InMemoryTenantStore::with_tenants([w.active.clone()]).unwrap(),
        )),
    );
    let req = header(w.active.id);
    assert!(
        remote
            .admit_now(&req, None, RequestMeta::default())
            .is_none()
    );
    assert!(
        remote
            .admit(&req, None, RequestMeta::default())
            .await
            .is_ok()
    );
    // But a malformed id needs no store: refused at once.
    let malformed = remote
        .admit_now(&header("nope"), None, RequestMeta::default())
        .unwrap()
        .unwrap_err();
    assert_eq!(malformed.problem().status, 400);
}
