//! The behaviour table every web adapter must pass: one set of tenants, one
//! pipeline configuration, one list of requests with the expected status,
//! problem code and headers. Each adapter's test serves [`World::pipeline`]
//! (and [`World::members_only`] on a second server, with the user read from
//! the `x-test-user` header) plus the routes in [`ROUTES`], then calls
//! [`run_table`].

use std::net::SocketAddr;
use std::sync::Arc;

use chrono::{Duration, Utc};
use tenancy_core::audit::MemorySink;
use tenancy_core::flags::{FlagDefinition, FlagEngine};
use tenancy_core::pipeline::RequestPipeline;
use tenancy_core::plan::PlanCatalog;
use tenancy_core::quota::MemoryQuota;
use tenancy_core::quota::QuotaError;
use tenancy_core::resolve::{
    HeaderStrategy, JwtStrategy, PathPrefixStrategy, ResolverChain, SubdomainStrategy,
};
use tenancy_core::store::InMemoryTenantStore;
use tenancy_core::{
    Authorizer, InMemoryMembershipStore, Membership, PlanId, Role, Tenant, TenantContext,
    TenantError, TenantId, TenantStatus, UserId,
};

use crate::http::{RawResponse, get, send};

/// Routes each adapter's test app serves:
/// - `/whoami`: the tenant id from the task-local scope (`tenancy_core::current`);
/// - `/spawned`: the same, read inside a task started with `tenancy_core::spawn_current`;
/// - `/analytics`: guarded by the feature `analytics` (only plan `pro` has it);
/// - `/admin`: guarded by the permission `tenant:manage`;
/// - `/boom`: a handler returning a server error with internal details;
/// - `/upload`: reserves 1 000 `storage_bytes` through [`upload`] (the plans allow 100).
pub const ROUTES: [&str; 7] = [
    "/whoami",
    "/t/{slug}/whoami",
    "/spawned",
    "/analytics",
    "/admin",
    "/boom",
    "/upload",
];

/// The HS256 secret of the JWT strategy in the world's resolver.
pub const JWT_SECRET: &[u8] = b"behaviour-table-secret-0123456789abcdef";

/// What `/upload` does: reserve 1 000 bytes of `storage_bytes` for the
/// request's tenant (a quota refusal becomes [`TenantError::Quota`]: 413).
pub fn upload(w: &World, ctx: &TenantContext) -> Result<(), TenantError> {
    match w.storage.reserve(ctx, "storage_bytes", 1000) {
        Ok(reservation) => {
            reservation.commit();
            Ok(())
        }
        Err(QuotaError::Exceeded(q)) => Err(TenantError::Quota(q)),
        Err(e) => Err(TenantError::Store(tenancy_core::StoreError::new(e))),
    }
}

/// What `/whoami` does: checks the task-local scope holds the same tenant
/// as the adapter's extractor, and returns its id.
pub fn whoami(extracted: &TenantContext) -> Result<String, TenantError> {
    let scoped = tenancy_core::current()?;
    if scoped.tenant_id() != extracted.tenant_id() {
        return Err(TenantError::Store(tenancy_core::StoreError::msg(
            "task-local scope differs from the extracted context",
        )));
    }
    Ok(scoped.tenant_id().to_string())
}

/// What `/spawned` does: reads the tenant inside a task started with
/// `tenancy_core::spawn_current`.
pub async fn spawned() -> Result<String, TenantError> {
    let handle =
        tenancy_core::spawn_current(async { tenancy_core::current().map(|c| c.tenant_id()) })?;
    let id = handle
        .await
        .map_err(|e| TenantError::Store(tenancy_core::StoreError::new(e)))??;
    Ok(id.to_string())
}

/// What `/boom` returns: a server error carrying [`SECRET_DETAIL`].
pub fn boom() -> TenantError {
    TenantError::Store(tenancy_core::StoreError::msg(SECRET_DETAIL))
}

/// An HS256 JWT with `claims`, signed with `secret` (`alg` as given, so
/// `none` can be forged).
pub fn jwt(alg: &str, claims: &serde_json::Value, secret: &[u8]) -> String {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use hmac::Mac as _;
    let header = URL_SAFE_NO_PAD.encode(serde_json::json!({"alg": alg, "typ": "JWT"}).to_string());
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    let signing_input = format!("{header}.{payload}");
    if alg == "none" {
        return format!("{signing_input}.");
    }
    let Ok(mut mac) = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret) else {
        unreachable!("HMAC takes keys of any length")
    };
    mac.update(signing_input.as_bytes());
    let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{signing_input}.{sig}")
}

fn claims(tenant: TenantId, exp_from_now: i64) -> serde_json::Value {
    serde_json::json!({"sub": "user-1", "tenant_id": tenant.to_string(), "exp": Utc::now().timestamp() + exp_from_now})
}

/// The internal detail `/boom` fails with; it must never reach a client.
pub const SECRET_DETAIL: &str = "db at 10.9.8.7 refused password for app_user";

const CATALOG: &str = r#"{"plans": [
  {"id": "pro", "name": "Pro", "limits": {"api_calls": {"rate": {"per_minute": 1000}}, "storage_bytes": {"stock": 100}}, "features": {"analytics": true}},
  {"id": "free", "name": "Free", "limits": {"api_calls": {"rate": {"per_minute": 3}}, "storage_bytes": {"stock": 100}}, "features": {"analytics": false}}
]}"#;

/// Tenants and pipelines for the table.
#[derive(Debug, Clone)]
pub struct World {
    /// Header and subdomain (`*.example.test`) resolution, plans, flags, rate limit `api_calls`.
    pub pipeline: RequestPipeline,
    /// The same resolution, requiring membership; denials audited to [`World::denials`].
    pub members_only: RequestPipeline,
    /// The audit sink of [`World::members_only`].
    pub denials: Arc<MemorySink>,
    /// Active, plan `pro`, slug `acme`.
    pub acme: Tenant,
    /// Active, plan `free` (3 requests a minute), slug `small`.
    pub small: Tenant,
    /// Suspended, trial over, offboarding, deleted.
    pub suspended: Tenant,
    /// Trial ended yesterday.
    pub expired: Tenant,
    /// Offboarding.
    pub leaving: Tenant,
    /// Deleted.
    pub deleted: Tenant,
    /// The stock quota `/upload` reserves from.
    pub storage: Arc<MemoryQuota>,
}

impl World {
    /// Builds the world (fresh ids each time).
    pub fn new() -> Self {
        let now = Utc::now();
        let t = |slug: &str, plan: &str| {
            Tenant::new(
                TenantId::new_v4(),
                slug.parse().unwrap_or_else(|_| unreachable!()),
                slug,
            )
            .with_plan(PlanId::new(plan))
        };
        let acme = t("acme", "pro");
        let small = t("small", "free");
        let suspended = t("frozen", "pro").with_status(TenantStatus::Suspended {
            reason: "unpaid invoice".into(),
        });
        let expired = t("lapsed", "pro").with_status(TenantStatus::Trial {
            ends_at: now - Duration::days(1),
        });
        let leaving = t("leaving", "pro").with_status(TenantStatus::Offboarding {
            purge_after: now + Duration::days(9),
        });
        let deleted = t("gone", "pro").with_status(TenantStatus::Deleted);
        let store = Arc::new(
            InMemoryTenantStore::with_tenants([
                acme.clone(),
                small.clone(),
                suspended.clone(),
                expired.clone(),
                leaving.clone(),
                deleted.clone(),
            ])
            .unwrap_or_else(|_| unreachable!()),
        );
        let catalog = Arc::new(PlanCatalog::from_json(CATALOG).unwrap_or_else(|_| unreachable!()));
        let resolver = ResolverChain::new()
            .with(HeaderStrategy::tenant_id())
            .with(SubdomainStrategy::new(
                "example.test".parse().unwrap_or_else(|_| unreachable!()),
            ))
            .with(JwtStrategy::hs256(JWT_SECRET))
            .with(PathPrefixStrategy::new("t"));
        let pipeline = RequestPipeline::new(resolver.clone(), store.clone())
            .with_plans(catalog.clone())
            .with_flags(Arc::new(FlagEngine::new([FlagDefinition::boolean(
                "analytics",
            )])))
            .with_rate_limit(Arc::new(MemoryQuota::new()), "api_calls")
            .rate_headers_on_success(true);
        let members = Arc::new(InMemoryMembershipStore::new());
        members.upsert(Membership::new(UserId::new("ann"), acme.id, Role::Admin));
        members.upsert(Membership::new(UserId::new("bob"), acme.id, Role::Viewer));
        let denials = Arc::new(MemorySink::default());
        let members_only = RequestPipeline::new(resolver, store.clone())
            .with_plans(catalog)
            .require_membership(Arc::new(Authorizer::new(members, store)))
            .with_audit(denials.clone());
        Self {
            pipeline,
            members_only,
            denials,
            acme,
            small,
            suspended,
            expired,
            leaving,
            deleted,
            storage: Arc::new(MemoryQuota::new()),
        }
    }
}

impl Default for World {
    fn default() -> Self {
        Self::new()
    }
}

/// One row of the table.
#[derive(Debug)]
pub struct Case {
    /// What it checks.
    pub name: String,
    /// Which server: `false` = [`World::pipeline`], `true` = [`World::members_only`].
    pub members_only: bool,
    /// The raw request.
    pub request: Vec<u8>,
    /// Expected status.
    pub status: u16,
    /// Expected problem code (`None` for a success).
    pub code: Option<&'static str>,
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn case(
    name: &str,
    members_only: bool,
    path: &str,
    headers: &[(&str, &[u8])],
    status: u16,
    code: Option<&'static str>,
) -> Case {
    Case {
        name: name.to_owned(),
        members_only,
        request: get(path, headers),
        status,
        code,
    }
}

/// The rows.
pub fn table(w: &World) -> Vec<Case> {
    let id = |t: &Tenant| t.id.to_string().into_bytes();
    let acme = id(&w.acme);
    let long = vec![b'a'; 9000];
    let unknown = TenantId::new_v4().to_string().into_bytes();
    let bad_utf8: &[u8] = &[0xff, 0xfe, 0x41];
    vec![
        case(
            "by header",
            false,
            "/whoami",
            &[("X-Tenant-ID", &acme)],
            200,
            None,
        ),
        case(
            "by subdomain",
            false,
            "/whoami",
            &[("Host", b"acme.example.test")],
            200,
            None,
        ),
        case(
            "host with port",
            false,
            "/whoami",
            &[("Host", b"acme.example.test:8080")],
            200,
            None,
        ),
        case(
            "uppercase host",
            false,
            "/whoami",
            &[("Host", b"ACME.Example.TEST")],
            200,
            None,
        ),
        case(
            "trailing dot",
            false,
            "/whoami",
            &[("Host", b"acme.example.test.")],
            200,
            None,
        ),
        case(
            "spawned task keeps the tenant",
            false,
            "/spawned",
            &[("X-Tenant-ID", &acme)],
            200,
            None,
        ),
        case(
            "no tenant",
            false,
            "/whoami",
            &[],
            400,
            Some("tenant-missing"),
        ),
        case(
            "malformed id",
            false,
            "/whoami",
            &[("X-Tenant-ID", b"not-a-uuid")],
            400,
            Some("tenant-id-malformed"),
        ),
        case(
            "sql in header",
            false,
            "/whoami",
            &[("X-Tenant-ID", b"1' OR '1'='1")],
            400,
            Some("tenant-id-malformed"),
        ),
        case(
            "header over 8 KiB",
            false,
            "/whoami",
            &[("X-Tenant-ID", &long)],
            400,
            Some("tenant-id-malformed"),
        ),
        case(
            "non-UTF-8 header",
            false,
            "/whoami",
            &[("X-Tenant-ID", bad_utf8)],
            400,
            Some("tenant-id-malformed"),
        ),
        case(
            "duplicate header",
            false,
            "/whoami",
            &[("X-Tenant-ID", &acme), ("X-Tenant-ID", &acme)],
            400,
            Some("tenant-header-duplicated"),
        ),
        case(
            "unknown tenant",
            false,
            "/whoami",
            &[("X-Tenant-ID", &unknown)],
            404,
            Some("tenant-not-found"),
        ),
        case(
            "deleted tenant",
            false,
            "/whoami",
            &[("X-Tenant-ID", &id(&w.deleted))],
            404,
            Some("tenant-not-found"),
        ),
        case("by path prefix", false, "/t/acme/whoami", &[], 200, None),
        case(
            "path traversal in the slug",
            false,
            "/t/../whoami",
            &[],
            400,
            Some("tenant-slug-malformed"),
        ),
        case(
            "percent-encoded traversal in the slug",
            false,
            "/t/%2e%2e/whoami",
            &[],
            400,
            Some("tenant-slug-malformed"),
        ),
        case(
            "SQL-looking slug",
            false,
            "/t/acme'%20OR%201=1--/whoami",
            &[],
            400,
            Some("tenant-slug-malformed"),
        ),
        case(
            "path prefix and header disagree",
            false,
            "/t/acme/whoami",
            &[("X-Tenant-ID", &id(&w.small))],
            403,
            Some("tenant-conflict"),
        ),
        case(
            "unknown subdomain (punycode)",
            false,
            "/whoami",
            &[("Host", b"xn--bcher-kva.example.test")],
            404,
            Some("tenant-not-found"),
        ),
        case(
            "IDN host not in punycode",
            false,
            "/whoami",
            &[("Host", "bücher.example.test".as_bytes())],
            400,
            Some("host-malformed"),
        ),
        case(
            "suspended",
            false,
            "/whoami",
            &[("X-Tenant-ID", &id(&w.suspended))],
            403,
            Some("tenant-suspended"),
        ),
        case(
            "trial over",
            false,
            "/whoami",
            &[("X-Tenant-ID", &id(&w.expired))],
            402,
            Some("trial-expired"),
        ),
        case(
            "offboarding",
            false,
            "/whoami",
            &[("X-Tenant-ID", &id(&w.leaving))],
            403,
            Some("tenant-offboarding"),
        ),
        case(
            "header and subdomain disagree",
            false,
            "/whoami",
            &[("Host", b"small.example.test"), ("X-Tenant-ID", &acme)],
            403,
            Some("tenant-conflict"),
        ),
        case(
            "feature in plan",
            false,
            "/analytics",
            &[("X-Tenant-ID", &acme)],
            200,
            None,
        ),
        case(
            "feature not in plan",
            false,
            "/analytics",
            &[("X-Tenant-ID", &id(&w.small))],
            403,
            Some("feature-not-in-plan"),
        ),
        case(
            "valid JWT",
            false,
            "/whoami",
            &[(
                "Authorization",
                bearer(&jwt("HS256", &claims(w.acme.id, 300), JWT_SECRET)).as_bytes(),
            )],
            200,
            None,
        ),
        case(
            "JWT alg none",
            false,
            "/whoami",
            &[(
                "Authorization",
                bearer(&jwt("none", &claims(w.acme.id, 300), b"")).as_bytes(),
            )],
            401,
            Some("token-invalid"),
        ),
        case(
            "JWT wrong key",
            false,
            "/whoami",
            &[(
                "Authorization",
                bearer(&jwt("HS256", &claims(w.acme.id, 300), b"not-the-secret")).as_bytes(),
            )],
            401,
            Some("token-invalid"),
        ),
        case(
            "JWT expired",
            false,
            "/whoami",
            &[(
                "Authorization",
                bearer(&jwt("HS256", &claims(w.acme.id, -3600), JWT_SECRET)).as_bytes(),
            )],
            401,
            Some("token-invalid"),
        ),
        case(
            "JWT tenant differs from header",
            false,
            "/whoami",
            &[
                (
                    "Authorization",
                    bearer(&jwt("HS256", &claims(w.acme.id, 300), JWT_SECRET)).as_bytes(),
                ),
                ("X-Tenant-ID", &id(&w.small)),
            ],
            403,
            Some("tenant-conflict"),
        ),
        case(
            "storage quota",
            false,
            "/upload",
            &[("X-Tenant-ID", &acme)],
            413,
            Some("quota-exceeded"),
        ),
        case(
            "server error hides details",
            false,
            "/boom",
            &[("X-Tenant-ID", &acme)],
            500,
            Some("internal"),
        ),
        case(
            "unauthenticated",
            true,
            "/whoami",
            &[("X-Tenant-ID", &acme)],
            401,
            Some("unauthenticated"),
        ),
        case(
            "not a member",
            true,
            "/whoami",
            &[("X-Tenant-ID", &acme), ("x-test-user", b"eve")],
            403,
            Some("not-a-member"),
        ),
        case(
            "member",
            true,
            "/whoami",
            &[("X-Tenant-ID", &acme), ("x-test-user", b"bob")],
            200,
            None,
        ),
        case(
            "missing permission",
            true,
            "/admin",
            &[("X-Tenant-ID", &acme), ("x-test-user", b"bob")],
            403,
            Some("permission-missing"),
        ),
        case(
            "permission held",
            true,
            "/admin",
            &[("X-Tenant-ID", &acme), ("x-test-user", b"ann")],
            200,
            None,
        ),
    ]
}

/// Runs every row against the two servers and then the rate-limit
/// sequence; panics with the failing row's name and response.
pub async fn run_table(w: &World, open: SocketAddr, members: SocketAddr) {
    for c in table(w) {
        let addr = if c.members_only { members } else { open };
        let r = send(addr, &c.request)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", c.name));
        check(&c, &r);
    }
    rate_limit(w, open).await;
    // The adapter handed the pipeline the user: denials name who was refused.
    let denied: Vec<(String, serde_json::Value)> = w
        .denials
        .events()
        .into_iter()
        .filter(|e| e.tenant == w.acme.id && e.action == "denied")
        .map(|e| (e.actor.id().to_owned(), e.details["status"].clone()))
        .collect();
    assert!(
        denied.contains(&("pipeline".to_owned(), 401.into())),
        "401 audited: {denied:?}"
    );
    assert!(
        denied.contains(&("eve".to_owned(), 403.into())),
        "403 audited: {denied:?}"
    );
    // The adapter's permission guard records its refusal too.
    let refused_permission = w
        .denials
        .events()
        .into_iter()
        .filter(|e| e.tenant == w.acme.id && e.details["code"] == "permission-missing")
        .map(|e| (e.actor.id().to_owned(), e.details["path"].clone()))
        .collect::<Vec<_>>();
    assert_eq!(
        refused_permission,
        [("bob".to_owned(), serde_json::Value::from("/admin"))],
        "missing permission audited once, with who and where"
    );
}

fn check(c: &Case, r: &RawResponse) {
    assert_eq!(r.status, c.status, "{}: {} {}", c.name, r.status, r.text());
    match c.code {
        None => {
            assert!(
                r.header("x-tenant-id").is_some(),
                "{}: X-Tenant-ID missing",
                c.name
            );
            assert!(
                r.header("ratelimit-limit").is_some() || c.members_only,
                "{}: RateLimit-Limit missing",
                c.name
            );
        }
        Some(code) => {
            assert_eq!(
                r.header("content-type"),
                Some("application/problem+json"),
                "{}",
                c.name
            );
            let body = r.json();
            assert_eq!(body["code"], code, "{}: {}", c.name, r.text());
            assert_eq!(
                body["type"],
                format!("urn:tenancy-rs:problem:{code}"),
                "{}",
                c.name
            );
            assert_eq!(body["status"], c.status, "{}", c.name);
            if c.status >= 500 {
                assert!(
                    !r.text().contains("10.9.8.7"),
                    "{}: leaked {}",
                    c.name,
                    r.text()
                );
            }
            if code == "feature-not-in-plan" {
                assert!(body["upgrade"].is_string(), "{}: no upgrade hint", c.name);
            }
        }
    }
}

async fn rate_limit(w: &World, open: SocketAddr) {
    let small = w.small.id.to_string();
    let req = get("/whoami", &[("X-Tenant-ID", small.as_bytes())]);
    let mut last = None;
    for _ in 0..4 {
        last = Some(
            send(open, &req)
                .await
                .unwrap_or_else(|e| panic!("rate: {e}")),
        );
    }
    let r = last.unwrap_or_else(|| unreachable!());
    assert_eq!(
        r.status,
        429,
        "fourth request in a minute on a 3/min plan: {}",
        r.text()
    );
    assert_eq!(r.json()["code"], "rate-limited");
    let retry: u64 = r
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    assert_eq!(
        r.header("ratelimit-limit"),
        Some("3"),
        "RateLimit-Limit on 429"
    );
    assert_eq!(r.header("ratelimit-remaining"), Some("0"));
    let reset: u64 = r
        .header("ratelimit-reset")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!((1..=60).contains(&reset), "RateLimit-Reset {reset}");
}
