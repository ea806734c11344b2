//! The behaviour table every web adapter must pass: one set of tenants, one
//! pipeline configuration, one list of requests with the expected status,
//! problem code and headers. Each adapter's test serves [`World::pipeline`]
//! (and [`World::members_only`] on a second server, with the user read from
//! the `x-test-user` header) plus the routes in [`ROUTES`], then calls
//! [`run_table`]; and serves [`home`] at `/home` behind the adapter's
//! optional-tenant layer over [`World::pipeline`], then calls
//! [`run_universal`].

use std::net::SocketAddr;
use std::sync::Arc;

use chrono::{Duration, Utc};
use tenancy_core::audit::MemorySink;
use tenancy_core::client::TrustedProxies;
use tenancy_core::flags::{FlagDefinition, FlagEngine};
use tenancy_core::pipeline::RequestPipeline;
use tenancy_core::plan::PlanCatalog;
use tenancy_core::quota::MemoryQuota;
use tenancy_core::quota::QuotaError;
use tenancy_core::resolve::{
    HeaderStrategy, JwtStrategy, PathPrefixStrategy, ResolverChain, SubdomainStrategy,
};
use tenancy_core::store::{InMemoryTenantStore, TenantRef, TenantStore};
use tenancy_core::{
    Authorizer, InMemoryMembershipStore, Membership, PlanId, Role, Tenant, TenantContext,
    TenantError, TenantId, TenantStatus, UserId,
};

use crate::http::{RawResponse, get, get_keep_alive, send, send_all};

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

/// Which way the adapters must admit the table's requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// The synchronous fast path (`RequestPipeline::admit_now`): the store
    /// answers `peek`.
    Fast,
    /// The asynchronous path: the store never answers `peek`, every tenant
    /// is loaded with `by_id`/`by_slug`/`by_domain`.
    Async,
}

/// The world's tenant store, counting which way it was asked.
#[derive(Debug)]
pub struct CountingStore {
    inner: InMemoryTenantStore,
    path: Path,
    /// `peek` calls answered.
    pub peeks: std::sync::atomic::AtomicU64,
    /// Asynchronous loads.
    pub loads: std::sync::atomic::AtomicU64,
}

impl CountingStore {
    fn load(&self) {
        self.loads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

#[async_trait::async_trait]
impl TenantStore for CountingStore {
    async fn by_id(&self, id: TenantId) -> Result<Option<Arc<Tenant>>, tenancy_core::StoreError> {
        self.load();
        self.inner.by_id(id).await
    }

    async fn by_slug(
        &self,
        slug: &tenancy_core::TenantSlug,
    ) -> Result<Option<Arc<Tenant>>, tenancy_core::StoreError> {
        self.load();
        self.inner.by_slug(slug).await
    }

    async fn by_domain(
        &self,
        domain: &tenancy_core::DomainName,
    ) -> Result<Option<Arc<Tenant>>, tenancy_core::StoreError> {
        self.load();
        self.inner.by_domain(domain).await
    }

    fn peek(&self, key: &TenantRef) -> Option<Arc<Tenant>> {
        match self.path {
            Path::Fast => {
                self.peeks
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.inner.peek(key)
            }
            Path::Async => None,
        }
    }
}

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
    /// Active, plan `pro`, slug `beta`: the second tenant the identity
    /// checks interleave with `acme`.
    pub beta: Tenant,
    /// The store behind [`World::pipeline`] (counts the path taken).
    pub store: Arc<CountingStore>,
    /// The path [`World::pipeline`] is meant to take.
    pub path: Path,
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
    /// Active, plan `pro`, slug `walled`: accepts requests only from
    /// `192.0.2.0/24` (tenant setting `network`).
    pub walled: Tenant,
    /// The stock quota `/upload` reserves from.
    pub storage: Arc<MemoryQuota>,
    /// Active, plan `pro`, slug `closed`: in a maintenance window for the
    /// next two minutes; `ann` and the operator `ops` are its admins.
    pub closed: Tenant,
}

/// The message of [`World::closed`]'s maintenance window.
pub const MAINTENANCE_MESSAGE: &str = "Moving to a new region";

/// What `/home` answers: the tenant's id, or `central` when the request
/// named no tenant.
pub fn home(ctx: Option<&TenantContext>) -> String {
    ctx.map_or_else(|| "central".to_owned(), |c| c.tenant_id().to_string())
}

impl World {
    /// Builds the world (fresh ids each time); [`World::pipeline`] takes the
    /// synchronous fast path.
    pub fn new() -> Self {
        Self::on(Path::Fast)
    }

    /// The world whose [`World::pipeline`] takes `path`.
    pub fn on(path: Path) -> Self {
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
        let beta = t("beta", "pro");
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
        let mut walled = t("walled", "pro");
        walled.settings = serde_json::json!({"network": {"allow": ["192.0.2.0/24"]}});
        let mut closed = t("closed", "pro");
        tenancy_core::maintenance::Maintenance::until(now + Duration::minutes(2))
            .with_message(MAINTENANCE_MESSAGE)
            .apply_to(&mut closed.settings);
        let all = [
            closed.clone(),
            walled.clone(),
            acme.clone(),
            beta.clone(),
            small.clone(),
            suspended.clone(),
            expired.clone(),
            leaving.clone(),
            deleted.clone(),
        ];
        let counting = Arc::new(CountingStore {
            inner: InMemoryTenantStore::with_tenants(all.clone())
                .unwrap_or_else(|_| unreachable!()),
            path,
            peeks: 0.into(),
            loads: 0.into(),
        });
        let store =
            Arc::new(InMemoryTenantStore::with_tenants(all).unwrap_or_else(|_| unreachable!()));
        let catalog = Arc::new(PlanCatalog::from_json(CATALOG).unwrap_or_else(|_| unreachable!()));
        let resolver = ResolverChain::new()
            .with(HeaderStrategy::tenant_id())
            .with(SubdomainStrategy::new(
                "example.test".parse().unwrap_or_else(|_| unreachable!()),
            ))
            .with(JwtStrategy::hs256(JWT_SECRET))
            .with(PathPrefixStrategy::new("t"));
        let pipeline = RequestPipeline::new(resolver.clone(), counting.clone())
            // The test servers' peer is loopback: the proxy in front of them.
            .trust_proxies(
                TrustedProxies::parse("127.0.0.1, ::1").unwrap_or_else(|_| unreachable!()),
            )
            .with_plans(catalog.clone())
            .with_flags(Arc::new(FlagEngine::new([FlagDefinition::boolean(
                "analytics",
            )])))
            .with_rate_limit(Arc::new(MemoryQuota::new()), "api_calls")
            .rate_headers_on_success(true);
        let members = Arc::new(InMemoryMembershipStore::new());
        members.upsert(Membership::new(UserId::new("ann"), acme.id, Role::Admin));
        members.upsert(Membership::new(UserId::new("bob"), acme.id, Role::Viewer));
        members.upsert(Membership::new(UserId::new("ann"), closed.id, Role::Admin));
        members.upsert(Membership::new(UserId::new("ops"), closed.id, Role::Admin));
        let denials = Arc::new(MemorySink::default());
        let members_only = RequestPipeline::new(resolver, store.clone())
            .with_plans(catalog)
            .require_membership(Arc::new(Authorizer::new(members, store)))
            .maintenance_bypass(|user, _| user.as_str() == "ops")
            .with_audit(denials.clone());
        Self {
            pipeline,
            members_only,
            denials,
            acme,
            beta,
            store: counting,
            path,
            small,
            suspended,
            expired,
            leaving,
            deleted,
            walled,
            storage: Arc::new(MemoryQuota::new()),
            closed,
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
    /// The tenant a success must answer for (`X-Tenant-ID`, and the body of
    /// the routes that return the tenant id).
    pub tenant: Option<TenantId>,
    /// The request path.
    pub path: String,
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
        tenant: None,
        path: path.to_owned(),
    }
}

/// Routes whose body is the id of the tenant that answered.
fn answers_with_id(path: &str) -> bool {
    path == "/whoami"
        || path == "/spawned"
        || (path.starts_with("/t/") && path.ends_with("/whoami"))
}

/// The rows.
pub fn table(w: &World) -> Vec<Case> {
    let mut cases = rows(w);
    let beta = w.beta.id.to_string().into_bytes();
    cases.extend([
        case(
            "beta by header",
            false,
            "/whoami",
            &[("X-Tenant-ID", &beta)],
            200,
            None,
        ),
        case(
            "beta by subdomain",
            false,
            "/whoami",
            &[("Host", b"beta.example.test")],
            200,
            None,
        ),
        case(
            "beta by path prefix",
            false,
            "/t/beta/whoami",
            &[],
            200,
            None,
        ),
        case(
            "beta spawned task",
            false,
            "/spawned",
            &[("X-Tenant-ID", &beta)],
            200,
            None,
        ),
    ]);
    let walled = w.walled.id.to_string().into_bytes();
    cases.extend([
        case(
            "network policy: the proxy's own address is refused",
            false,
            "/whoami",
            &[("X-Tenant-ID", &walled)],
            403,
            Some("address-not-allowed"),
        ),
        case(
            "walled: a forwarded client inside the policy",
            false,
            "/whoami",
            &[("X-Tenant-ID", &walled), ("X-Forwarded-For", b"192.0.2.7")],
            200,
            None,
        ),
        case(
            "network policy: a hop the client wrote left of its own is ignored",
            false,
            "/whoami",
            &[
                ("X-Tenant-ID", &walled),
                ("X-Forwarded-For", b"192.0.2.9, 198.51.100.1"),
            ],
            403,
            Some("address-not-allowed"),
        ),
        case(
            "walled: Forwarded (RFC 7239) from the trusted proxy",
            false,
            "/whoami",
            &[
                ("X-Tenant-ID", &walled),
                ("Forwarded", b"for=\"192.0.2.8:4711\";proto=https"),
            ],
            200,
            None,
        ),
        case(
            "a malformed forwarded header from a trusted proxy",
            false,
            "/whoami",
            &[
                ("X-Tenant-ID", &walled),
                ("X-Forwarded-For", b"192.0.2.7, not-an-address"),
            ],
            400,
            Some("forwarded-invalid"),
        ),
    ]);
    for c in &mut cases {
        if c.code.is_none() {
            c.tenant = Some(if c.name.starts_with("beta") {
                w.beta.id
            } else if c.name.starts_with("walled") {
                w.walled.id
            } else if c.name.starts_with("maintenance") {
                w.closed.id
            } else {
                w.acme.id
            });
        }
    }
    cases
}

fn rows(w: &World) -> Vec<Case> {
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
            "a store failure is 503 and hides details",
            false,
            "/boom",
            &[("X-Tenant-ID", &acme)],
            503,
            Some("tenant-store-unavailable"),
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
        case(
            "maintenance: 503 with Retry-After",
            false,
            "/whoami",
            &[("X-Tenant-ID", &id(&w.closed))],
            503,
            Some("tenant-maintenance"),
        ),
        case(
            "maintenance: a member is refused",
            true,
            "/whoami",
            &[("X-Tenant-ID", &id(&w.closed)), ("x-test-user", b"ann")],
            503,
            Some("tenant-maintenance"),
        ),
        case(
            "maintenance: an operator passes",
            true,
            "/whoami",
            &[("X-Tenant-ID", &id(&w.closed)), ("x-test-user", b"ops")],
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
    interleaved(w, open).await;
    // The pipeline took the path this world is built for.
    let peeks = w.store.peeks.load(std::sync::atomic::Ordering::Relaxed);
    let loads = w.store.loads.load(std::sync::atomic::Ordering::Relaxed);
    match w.path {
        Path::Fast => assert!(peeks > 0, "fast path never peeked ({loads} loads)"),
        Path::Async => assert!(
            peeks == 0 && loads > 0,
            "async path: {peeks} peeks, {loads} loads"
        ),
    }
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

/// (name, headers, status, problem code, tenant answering) of a `/home` row.
type UniversalRow = (
    &'static str,
    Vec<(String, Vec<u8>)>,
    u16,
    Option<&'static str>,
    Option<TenantId>,
);

/// The rows of a route with an optional tenant (`/home`, [`home`]) behind
/// the adapter's optional layer over [`World::pipeline`]: no tenant named →
/// served without one; a tenant named → the whole pipeline, refusals and
/// all. Panics with the failing row's name and response.
pub async fn run_universal(w: &World, addr: SocketAddr) {
    let named = |h: &str, v: &str| vec![(h.to_owned(), v.as_bytes().to_vec())];
    let rows: Vec<UniversalRow> = vec![
        ("no tenant named: central", Vec::new(), 200, None, None),
        (
            "tenant by header",
            named("X-Tenant-ID", &w.acme.id.to_string()),
            200,
            None,
            Some(w.acme.id),
        ),
        (
            "tenant by subdomain",
            named("Host", "beta.example.test"),
            200,
            None,
            Some(w.beta.id),
        ),
        (
            "malformed tenant id is not central",
            named("X-Tenant-ID", "not-a-uuid"),
            400,
            Some("tenant-id-malformed"),
            None,
        ),
        (
            "unknown tenant is not central",
            named("X-Tenant-ID", &TenantId::new_v4().to_string()),
            404,
            Some("tenant-not-found"),
            None,
        ),
        (
            "suspended tenant is refused",
            named("X-Tenant-ID", &w.suspended.id.to_string()),
            403,
            Some("tenant-suspended"),
            None,
        ),
        (
            "tenant in maintenance is refused",
            named("X-Tenant-ID", &w.closed.id.to_string()),
            503,
            Some("tenant-maintenance"),
            None,
        ),
    ];
    for (name, headers, status, code, tenant) in rows {
        let headers: Vec<(&str, &[u8])> = headers
            .iter()
            .map(|(h, v)| (h.as_str(), v.as_slice()))
            .collect();
        let r = send(addr, &get("/home", &headers))
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(r.status, status, "{name}: {}", r.text());
        match (code, tenant) {
            (Some(code), _) => assert_eq!(r.json()["code"], code, "{name}: {}", r.text()),
            (None, Some(t)) => {
                assert_eq!(r.text(), t.to_string(), "{name}: body");
                assert_eq!(
                    r.header("x-tenant-id"),
                    Some(t.to_string().as_str()),
                    "{name}"
                );
            }
            (None, None) => {
                assert_eq!(r.text(), "central", "{name}: body");
                assert_eq!(r.header("x-tenant-id"), None, "{name}: a tenant header");
            }
        }
    }
}

/// Tenants interleaved on one keep-alive connection: each response answers
/// for the tenant its request named, never the previous request's.
async fn interleaved(w: &World, open: SocketAddr) {
    let (a, b) = (w.acme.id.to_string(), w.beta.id.to_string());
    let mut requests = Vec::new();
    let mut expected = Vec::new();
    for round in 0..6 {
        let (first, second) = if round % 2 == 0 { (&a, &b) } else { (&b, &a) };
        requests.push(get_keep_alive(
            "/whoami",
            &[("X-Tenant-ID", first.as_bytes())],
        ));
        expected.push(first.clone());
        requests.push(get_keep_alive(
            "/whoami",
            &[("Host", host_of(w, second).as_bytes())],
        ));
        expected.push(second.clone());
        requests.push(get_keep_alive(
            "/spawned",
            &[("X-Tenant-ID", second.as_bytes())],
        ));
        expected.push(second.clone());
    }
    let responses = send_all(open, &requests)
        .await
        .unwrap_or_else(|e| panic!("keep-alive: {e}"));
    assert_eq!(responses.len(), expected.len());
    for (i, (r, want)) in responses.iter().zip(&expected).enumerate() {
        assert_eq!(r.status, 200, "keep-alive request {i}: {}", r.text());
        assert_eq!(r.text(), *want, "keep-alive request {i}: body");
        assert_eq!(
            r.header("x-tenant-id"),
            Some(want.as_str()),
            "keep-alive request {i}: header"
        );
    }
}

fn host_of(w: &World, id: &str) -> String {
    let slug = if id == w.acme.id.to_string() {
        "acme"
    } else {
        "beta"
    };
    format!("{slug}.example.test")
}

fn check(c: &Case, r: &RawResponse) {
    assert_eq!(r.status, c.status, "{}: {} {}", c.name, r.status, r.text());
    if let Some(tenant) = c.tenant {
        let want = tenant.to_string();
        assert_eq!(
            r.header("x-tenant-id"),
            Some(want.as_str()),
            "{}: answered for another tenant",
            c.name
        );
        if answers_with_id(&c.path) {
            assert_eq!(r.text(), want, "{}: body names another tenant", c.name);
        }
    }
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
            if code == "tenant-maintenance" {
                let retry: u64 = r
                    .header("retry-after")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                assert!(
                    (1..=120).contains(&retry),
                    "{}: Retry-After {retry}",
                    c.name
                );
                assert_eq!(body["detail"], MAINTENANCE_MESSAGE, "{}", c.name);
            } else if c.status == 503 {
                assert_eq!(r.header("retry-after"), Some("1"), "{}", c.name);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ok_response(tenant: TenantId) -> RawResponse {
        RawResponse {
            status: 200,
            headers: vec![
                ("x-tenant-id".into(), tenant.to_string()),
                ("ratelimit-limit".into(), "100".into()),
            ],
            body: tenant.to_string().into_bytes(),
        }
    }

    /// The broken twin of the identity check: a 200 that answers for the
    /// other tenant (a stale context) fails the row, by header or by body.
    #[test]
    fn a_success_for_another_tenant_fails_the_row() {
        let w = World::new();
        let c = table(&w)
            .into_iter()
            .find(|c| c.name == "by header")
            .unwrap_or_else(|| unreachable!());
        check(&c, &ok_response(w.acme.id));
        let wrong = std::panic::catch_unwind(|| check(&c, &ok_response(w.beta.id)));
        assert!(wrong.is_err(), "a response for beta passed acme's row");
        let mut body_only = ok_response(w.acme.id);
        body_only.body = w.beta.id.to_string().into_bytes();
        let wrong_body = std::panic::catch_unwind(|| check(&c, &body_only));
        assert!(wrong_body.is_err(), "a body naming beta passed acme's row");
    }
}
