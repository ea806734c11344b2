//! The request pipeline, once for every web framework: resolve → load →
//! status gate → membership → entitlements and flags → rate quota → scope.
//!
//! Web adapters (tenancy-axum, tenancy-actix) turn their request into a
//! [`RequestView`], call [`RequestPipeline::admit`] and translate the
//! outcome: an [`Admitted`] context to put in the request and scope the
//! handler with, or a [`Rejected`] with its RFC 9457 [`Problem`] and
//! headers. Nothing here knows about HTTP types.
//!
//! ```
//! use std::sync::Arc;
//! use tenancy_core::pipeline::RequestPipeline;
//! use tenancy_core::resolve::{HeaderStrategy, ResolverChain, SimpleRequest};
//! use tenancy_core::store::InMemoryTenantStore;
//! use tenancy_core::{RequestMeta, Tenant, TenantId};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let acme = Tenant::new(TenantId::new_v4(), "acme".parse()?, "Acme");
//! let store = Arc::new(InMemoryTenantStore::with_tenants([acme.clone()])?);
//! let pipeline = RequestPipeline::new(ResolverChain::new().with(HeaderStrategy::tenant_id()), store);
//!
//! let req = SimpleRequest::new("/").with_header("x-tenant-id", acme.id.to_string());
//! let admitted = pipeline.admit(&req, None, RequestMeta::default()).await.map_err(|r| r.error)?;
//! assert_eq!(admitted.ctx.tenant_id(), acme.id);
//!
//! let rejected = pipeline.admit(&SimpleRequest::new("/"), None, RequestMeta::default()).await.unwrap_err();
//! assert_eq!(rejected.problem().status, 400); // no tenant named
//! # Ok(()) }
//! ```

use std::sync::Arc;

use async_trait::async_trait;
use chrono::Utc;

use crate::audit::{Action, AuditEvent, AuditSink};
use crate::client::TrustedProxies;
use crate::flags::FlagEngine;
use crate::gate::Admission;
use crate::identity::Authenticate;
use crate::plan::PlanCatalog;
use crate::problem::Problem;
use crate::quota::{MemoryQuota, QuotaError, RateDecision};
use crate::resolve::{RequestView, ResolverChain};
use crate::store::TenantStore;
use crate::{Authorizer, RequestMeta, StoreError, TenantContext, TenantError, TenantId, UserId};

/// A rate limiter the pipeline can consult (in-memory, Redis, PostgreSQL).
#[async_trait]
pub trait RateCheck: Send + Sync {
    /// Consumes `cost` from the tenant's `resource` rate limit.
    async fn check_rate(
        &self,
        ctx: &TenantContext,
        resource: &str,
        cost: u64,
    ) -> Result<RateDecision, QuotaError>;

    /// [`RateCheck::check_rate`] for limiters that decide without waiting
    /// (in memory); `None` — the default — means "call `check_rate`", and
    /// must then have consumed nothing.
    fn check_rate_now(
        &self,
        ctx: &TenantContext,
        resource: &str,
        cost: u64,
    ) -> Option<Result<RateDecision, QuotaError>> {
        let _ = (ctx, resource, cost);
        None
    }

    /// Consumes `cost` from the `resource` limit of one `subject` of the
    /// tenant (a user, a client address): the plan's windows for
    /// `resource`, counted per subject. The default refuses: a limiter must
    /// say it can count per subject.
    async fn check_rate_for(
        &self,
        ctx: &TenantContext,
        resource: &str,
        subject: &str,
        cost: u64,
    ) -> Result<RateDecision, QuotaError> {
        let _ = (ctx, resource, subject, cost);
        Err(QuotaError::Backend(StoreError::msg(
            "this rate limiter cannot count per user or client address",
        )))
    }
}

/// Who a per-subject rate limit counts ([`RequestPipeline::with_rate_limit_per`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RateSubject {
    /// The authenticated user (requests without one are not counted here).
    User,
    /// The client address, IPv6 per /64 (behind proxies, see
    /// [`RequestPipeline::trust_proxies`]).
    Client,
}

#[async_trait]
impl RateCheck for MemoryQuota {
    async fn check_rate(
        &self,
        ctx: &TenantContext,
        resource: &str,
        cost: u64,
    ) -> Result<RateDecision, QuotaError> {
        MemoryQuota::check_rate(self, ctx, resource, cost)
    }

    fn check_rate_now(
        &self,
        ctx: &TenantContext,
        resource: &str,
        cost: u64,
    ) -> Option<Result<RateDecision, QuotaError>> {
        Some(MemoryQuota::check_rate(self, ctx, resource, cost))
    }

    async fn check_rate_for(
        &self,
        ctx: &TenantContext,
        resource: &str,
        subject: &str,
        cost: u64,
    ) -> Result<RateDecision, QuotaError> {
        MemoryQuota::check_rate_for(self, ctx, resource, subject, cost)
    }
}

/// A request that may proceed.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Admitted {
    /// The tenant context: tenant, actor, request metadata, entitlements and flags.
    pub ctx: TenantContext,
    /// The rate decision, when a rate limit was checked.
    pub rate: Option<RateDecision>,
    rate_headers: bool,
    /// When the pipeline started on the request (metrics only).
    #[cfg(feature = "metrics")]
    started: Option<std::time::Instant>,
}

impl Admitted {
    /// Headers to add to the response: `x-tenant-id`, and `ratelimit-*`
    /// when the pipeline was built with
    /// [`RequestPipeline::rate_headers_on_success`].
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        let mut h = Vec::with_capacity(4);
        self.write_headers(|name, value| {
            h.push((name, String::from_utf8_lossy(value).into_owned()));
        });
        h
    }

    /// Calls `put(name, value)` for each response header, without
    /// allocating (names lower case, values ASCII): what the web adapters use.
    pub fn write_headers(&self, mut put: impl FnMut(&'static str, &[u8])) {
        let mut id = [0u8; 36];
        put(
            crate::problem::X_TENANT_ID,
            self.ctx.tenant_id().encode(&mut id).as_bytes(),
        );
        if let Some(rate) = self.rate.as_ref().filter(|_| self.rate_headers) {
            let mut buf = [0u8; 20];
            put(
                crate::problem::RATELIMIT_LIMIT,
                decimal(rate.limit(), &mut buf),
            );
            put(
                crate::problem::RATELIMIT_REMAINING,
                decimal(rate.remaining(), &mut buf),
            );
            let reset = crate::problem::secs_up(rate.reset_after());
            put(crate::problem::RATELIMIT_RESET, decimal(reset, &mut buf));
        }
    }
}

/// `n` in decimal, written at the end of `buf`.
fn decimal(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        // n % 10 < 10: the cast cannot truncate.
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

/// A request that is refused.
#[derive(Debug)]
#[non_exhaustive]
pub struct Rejected {
    /// Why.
    pub error: TenantError,
    /// The rate decision, when the refusal came from the rate limit.
    pub rate: Option<RateDecision>,
    /// The tenant, when it was resolved before the refusal.
    pub tenant: Option<TenantId>,
    /// The authenticated user, when the refusal came after authentication.
    pub user: Option<UserId>,
}

impl Rejected {
    fn in_tenant(error: TenantError, tenant: TenantId) -> Self {
        Self {
            error,
            rate: None,
            tenant: Some(tenant),
            user: None,
        }
    }

    fn new(error: TenantError) -> Self {
        Self {
            error,
            rate: None,
            tenant: None,
            user: None,
        }
    }

    /// Whether the request named no tenant at all (no strategy found one):
    /// what a route with an optional tenant serves without a context. A
    /// tenant that was named but is malformed, unknown or refused is never
    /// this.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use tenancy_core::pipeline::RequestPipeline;
    /// use tenancy_core::resolve::{HeaderStrategy, ResolverChain, SimpleRequest};
    /// use tenancy_core::store::InMemoryTenantStore;
    /// use tenancy_core::RequestMeta;
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let pipeline = RequestPipeline::new(
    ///     ResolverChain::new().with(HeaderStrategy::tenant_id()),
    ///     Arc::new(InMemoryTenantStore::new()),
    /// );
    /// let none = SimpleRequest::new("/");
    /// let rejected = pipeline.admit(&none, None, RequestMeta::default()).await.unwrap_err();
    /// assert!(rejected.names_no_tenant());
    /// let bad = SimpleRequest::new("/").with_header("x-tenant-id", "not-an-id");
    /// let rejected = pipeline.admit(&bad, None, RequestMeta::default()).await.unwrap_err();
    /// assert!(!rejected.names_no_tenant());
    /// # }
    /// ```
    pub fn names_no_tenant(&self) -> bool {
        matches!(self.error, TenantError::Missing) && self.tenant.is_none()
    }

    /// The RFC 9457 response: status, body and headers.
    pub fn problem(&self) -> Problem {
        Problem::from_error(&self.error, self.rate.as_ref())
    }
}

/// The tenant pipeline. See the [module docs](self).
#[derive(Clone)]
pub struct RequestPipeline {
    /// Entitlements and flag snapshots per tenant, reused while the store
    /// returns the same tenant record and the flag engine has not changed.
    derived: Arc<dashmap::DashMap<TenantId, Derived>>,
    resolver: ResolverChain,
    store: Arc<dyn TenantStore>,
    authorizer: Option<Arc<Authorizer>>,
    authenticator: Option<Arc<dyn Authenticate>>,
    catalog: Option<Arc<PlanCatalog>>,
    flags: Option<Arc<FlagEngine>>,
    rate: Option<(Arc<dyn RateCheck>, Arc<str>)>,
    per_subject: Vec<(RateSubject, Arc<dyn RateCheck>, Arc<str>)>,
    rate_headers: bool,
    admission: Admission,
    audit: Option<Arc<dyn AuditSink>>,
    proxies: Arc<TrustedProxies>,
    operators: Option<OperatorCheck>,
    #[cfg(feature = "metrics")]
    metrics: Option<Arc<crate::telemetry::TenantMetrics>>,
}

/// Decides whether a user (and the operator impersonating them, if any) is
/// an operator, who passes a tenant's maintenance window.
pub type OperatorCheck = Arc<dyn Fn(&UserId, Option<&str>) -> bool + Send + Sync>;

#[derive(Clone)]
struct Derived {
    tenant: Arc<crate::Tenant>,
    entitlements: Option<Arc<crate::plan::Entitlements>>,
    flags: Option<(u64, crate::flags::FlagSnapshot)>,
}

impl std::fmt::Debug for RequestPipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestPipeline")
            .field("resolver", &self.resolver)
            .field("membership", &self.authorizer.is_some())
            .field("plans", &self.catalog.is_some())
            .field("flags", &self.flags.is_some())
            .field("rate", &self.rate.as_ref().map(|(_, r)| r.clone()))
            .finish_non_exhaustive()
    }
}

impl RequestPipeline {
    /// Resolution through `resolver`, tenants loaded from `store` (wrap it
    /// in a `CachedStore`), every status gated. Nothing else until added.
    pub fn new(resolver: ResolverChain, store: Arc<dyn TenantStore>) -> Self {
        Self {
            derived: Arc::new(dashmap::DashMap::new()),
            resolver,
            store,
            authorizer: None,
            authenticator: None,
            catalog: None,
            flags: None,
            rate: None,
            per_subject: Vec::new(),
            rate_headers: false,
            admission: Admission::Serving,
            audit: None,
            proxies: Arc::new(TrustedProxies::none()),
            operators: None,
            #[cfg(feature = "metrics")]
            metrics: None,
        }
    }

    /// Who passes a tenant's maintenance window
    /// ([`crate::maintenance`]): users for whom `is_operator` is true, and
    /// always impersonated sessions (an operator acting as a user). Everyone
    /// else gets `503 tenant-maintenance` with `Retry-After` while the
    /// window is open.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use chrono::{Duration, Utc};
    /// use tenancy_core::maintenance::Maintenance;
    /// use tenancy_core::pipeline::RequestPipeline;
    /// use tenancy_core::resolve::{HeaderStrategy, ResolverChain, SimpleRequest};
    /// use tenancy_core::store::InMemoryTenantStore;
    /// use tenancy_core::{RequestMeta, Tenant, TenantId, UserId};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let mut acme = Tenant::new(TenantId::new_v4(), "acme".parse()?, "Acme");
    /// Maintenance::until(Utc::now() + Duration::minutes(5)).apply_to(&mut acme.settings);
    /// let store = Arc::new(InMemoryTenantStore::with_tenants([acme.clone()])?);
    /// let pipeline = RequestPipeline::new(ResolverChain::new().with(HeaderStrategy::tenant_id()), store)
    ///     .maintenance_bypass(|user, _| user.as_str().starts_with("ops:"));
    /// let req = SimpleRequest::new("/").with_header("x-tenant-id", acme.id.to_string());
    ///
    /// let refused = pipeline.admit(&req, Some(&UserId::new("ann")), RequestMeta::default()).await.unwrap_err();
    /// assert_eq!(refused.problem().status, 503);
    /// let ops = UserId::new("ops:kim");
    /// assert!(pipeline.admit(&req, Some(&ops), RequestMeta::default()).await.is_ok());
    /// # Ok(()) }
    /// ```
    pub fn maintenance_bypass(
        mut self,
        is_operator: impl Fn(&UserId, Option<&str>) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.operators = Some(Arc::new(is_operator));
        self
    }

    /// Requires an authenticated user who is a member of the tenant (401
    /// without a user, 403 for a non-member); the actor goes in the context.
    pub fn require_membership(mut self, authorizer: Arc<Authorizer>) -> Self {
        self.authorizer = Some(authorizer);
        self
    }

    /// Authenticates every request once its tenant is known (after the
    /// status gate): the principal `auth` finds is the user whose membership
    /// [`Self::require_membership`] checks, in place of the adapter's user.
    /// A credential that does not hold is refused with `auth`'s error (401,
    /// 403 for an issuer the tenant does not trust, 503 when the identity
    /// provider cannot be reached); no credential falls back to the
    /// adapter's user.
    pub fn authenticate_with(mut self, auth: Arc<dyn Authenticate>) -> Self {
        self.authenticator = Some(auth);
        self
    }

    /// Attaches the tenant's plan entitlements to the context.
    pub fn with_plans(mut self, catalog: Arc<PlanCatalog>) -> Self {
        self.catalog = Some(catalog);
        self
    }

    /// Evaluates every flag once per request into the context.
    pub fn with_flags(mut self, flags: Arc<FlagEngine>) -> Self {
        self.flags = Some(flags);
        self
    }

    /// Charges one unit of `resource` per request (needs [`Self::with_plans`]).
    pub fn with_rate_limit(mut self, limiter: Arc<dyn RateCheck>, resource: &str) -> Self {
        self.rate = Some((limiter, resource.into()));
        self
    }

    /// Also charges one unit of `resource` per request to each user (or
    /// client address) of the tenant, beside the tenant's own budget: one
    /// member, or one stolen token, cannot spend the whole tenant's
    /// allowance. The windows are the plan's for `resource` (e.g.
    /// `api_calls_per_user`). Per-client limits are checked first, then
    /// per-user, then the tenant's ([`Self::with_rate_limit`]), so a request
    /// refused per client or per user costs the tenant nothing. A refusal is
    /// 429 with the `RateLimit-*` and `Retry-After` of the limit that
    /// refused. The limiter must count per subject
    /// ([`RateCheck::check_rate_for`]): memory, Redis and PostgreSQL do.
    pub fn with_rate_limit_per(
        mut self,
        subject: RateSubject,
        limiter: Arc<dyn RateCheck>,
        resource: &str,
    ) -> Self {
        self.per_subject.push((subject, limiter, resource.into()));
        // Clients before users: the cheaper refusal first.
        self.per_subject
            .sort_by_key(|(s, _, _)| matches!(s, RateSubject::User));
        self
    }

    /// Also sends `RateLimit-Limit`, `RateLimit-Remaining` and
    /// `RateLimit-Reset` on admitted responses, not only with a 429.
    ///
    /// Off by default: three more headers on every response cost about as
    /// much as the rest of the pipeline over loopback (see
    /// `docs/benchmarks.md`). Turn it on when clients pace themselves by
    /// these headers.
    pub fn rate_headers_on_success(mut self, on: bool) -> Self {
        self.rate_headers = on;
        self
    }

    /// Reads the client address from `Forwarded` / `X-Forwarded-For` when
    /// the connection comes from one of `proxies` (see
    /// [`crate::client`]); by default the peer address is the client. The
    /// address goes into the context's [`RequestMeta`] (audit events,
    /// per-client limits, network policies). A malformed header from a
    /// trusted proxy is refused (400 `forwarded-invalid`).
    pub fn trust_proxies(mut self, proxies: TrustedProxies) -> Self {
        self.proxies = Arc::new(proxies);
        self
    }

    /// The client address of a request whose connection came from `meta.ip`.
    // `Rejected` is what `admit` returns anyway; these helpers only pass it on.
    #[allow(clippy::result_large_err)]
    fn client(
        &self,
        req: &dyn RequestView,
        mut meta: RequestMeta,
    ) -> Result<RequestMeta, Rejected> {
        if let Some(peer) = meta.ip.filter(|_| !self.proxies.is_empty()) {
            meta.ip = Some(
                self.proxies
                    .client_ip(peer, req)
                    .map_err(|e| Rejected::new(e.into()))?,
            );
        }
        Ok(meta)
    }

    /// Records an `access` / `denied` audit event in the tenant's log for
    /// every request refused by access control once the tenant is known:
    /// unauthenticated, not a member, suspended, trial over, offboarding.
    /// Rate-limit refusals are counted by metrics instead (a flood would
    /// otherwise flood the log).
    ///
    /// The request waits for `sink`; give it an
    /// [`AuditQueue`](crate::audit::AuditQueue) to decouple the two. A sink
    /// failure is logged and never turns a refusal into an admission.
    pub fn with_audit(mut self, sink: Arc<dyn AuditSink>) -> Self {
        self.audit = Some(sink);
        self
    }

    /// Counts requests per tenant and status class, and quota refusals,
    /// through [`TenantMetrics`](crate::telemetry::TenantMetrics)
    /// (adapters report each response with [`Self::record_response`]).
    #[cfg(feature = "metrics")]
    pub fn with_metrics(mut self, metrics: Arc<crate::telemetry::TenantMetrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Called by web adapters once the response status is known; counts the
    /// request when the pipeline has metrics and the tenant is known.
    #[allow(unused_variables)]
    pub fn record_response(&self, tenant: Option<TenantId>, status: u16) {
        #[cfg(feature = "metrics")]
        if let (Some(m), Some(t)) = (&self.metrics, tenant) {
            m.request(t, status);
        }
    }

    /// Called by web adapters once an admitted request's response status is
    /// known: counts it ([`Self::record_response`]) and records its
    /// latency, from admission to response, in the tenant's
    /// `tenancy_request_duration_seconds` histogram.
    #[allow(unused_variables)]
    pub fn record_admitted(&self, admitted: &Admitted, status: u16) {
        #[cfg(feature = "metrics")]
        if let Some(m) = &self.metrics {
            let tenant = admitted.ctx.tenant_id();
            m.request(tenant, status);
            if let Some(started) = admitted.started {
                m.latency(tenant, started.elapsed());
            }
        }
    }

    /// Runs the pipeline for one request.
    pub async fn admit(
        &self,
        req: &(dyn RequestView + Sync),
        user: Option<&UserId>,
        meta: RequestMeta,
    ) -> Result<Admitted, Rejected> {
        let meta = self.client(req, meta)?;
        if self.audit.is_none() {
            return self.run(req, user, meta).await;
        }
        let kept = meta.clone();
        let outcome = self.run(req, user, meta).await;
        if let Err(rejected) = &outcome {
            self.audit_denial(rejected, user, kept, req.path()).await;
        }
        outcome
    }

    async fn audit_denial(
        &self,
        rejected: &Rejected,
        user: Option<&UserId>,
        meta: RequestMeta,
        path: &str,
    ) {
        let Some(tenant) = rejected.tenant else {
            return;
        };
        let user = rejected.user.as_ref().or(user);
        if matches!(
            rejected.error,
            TenantError::Unauthenticated
                | TenantError::IssuerNotTrusted
                | TenantError::SessionRevoked
                | TenantError::AddressNotAllowed
                | TenantError::NotAMember
                | TenantError::MembershipSuspended
                | TenantError::Suspended { .. }
                | TenantError::TrialExpired { .. }
                | TenantError::Offboarding
        ) {
            self.record_denial(tenant, user, &rejected.error, &meta, path)
                .await;
        }
    }

    async fn record_denial(
        &self,
        tenant: TenantId,
        user: Option<&UserId>,
        error: &TenantError,
        meta: &RequestMeta,
        path: &str,
    ) {
        let Some(sink) = &self.audit else {
            return;
        };
        let mut event = match user {
            Some(u) => AuditEvent::user(tenant, u.as_str(), Action::DENIED, "request"),
            None => AuditEvent::system(tenant, "pipeline", Action::DENIED, "request"),
        }
        .with_details(serde_json::json!({
            "code": error.code(),
            "status": error.status(),
            "path": path,
        }));
        if let Some(ip) = meta.ip {
            event = event.with_ip(ip);
        }
        if let Some(agent) = &meta.user_agent {
            event = event.with_user_agent(agent.to_string());
        }
        if let Err(e) = sink.record(event).await {
            tracing::error!(tenant.id = %tenant, error = %e, "could not record a denied request in the audit log");
        }
    }

    /// Whether refusals are audited ([`Self::with_audit`]). Adapters use it
    /// to hand their permission guards what [`Self::authorize`] needs.
    pub fn audits_denials(&self) -> bool {
        self.audit.is_some()
    }

    /// Checks that the context's actor holds `permission` (what the
    /// adapters' `RequirePermission` guards do), and records a refusal in
    /// the tenant's audit log like the pipeline's own denials when
    /// [`Self::with_audit`] is configured.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use tenancy_core::audit::MemorySink;
    /// use tenancy_core::pipeline::RequestPipeline;
    /// use tenancy_core::resolve::ResolverChain;
    /// use tenancy_core::store::InMemoryTenantStore;
    /// use tenancy_core::{Actor, Role, Tenant, TenantContext, TenantError, TenantId, UserId};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let sink = Arc::new(MemorySink::default());
    /// let pipeline = RequestPipeline::new(ResolverChain::new(), Arc::new(InMemoryTenantStore::new()))
    ///     .with_audit(sink.clone());
    /// let tenant = Tenant::new(TenantId::new_v4(), "acme".parse()?, "Acme");
    /// let viewer = Actor::new(UserId::new("bob"), Role::Viewer, Vec::new());
    /// let ctx = TenantContext::new(tenant).with_actor(viewer);
    /// let refused = pipeline.authorize(&ctx, "tenant:manage", "/admin").await;
    /// assert!(matches!(refused, Err(TenantError::MissingPermission { .. })));
    /// assert_eq!(sink.events()[0].action, "denied");
    /// # Ok(()) }
    /// ```
    pub async fn authorize(
        &self,
        ctx: &TenantContext,
        permission: &str,
        path: &str,
    ) -> Result<(), TenantError> {
        let outcome = crate::authorize(ctx, permission);
        if let Err(e) = &outcome {
            let user = ctx.actor().map(|a| &a.user_id);
            self.record_denial(ctx.tenant_id(), user, e, ctx.request(), path)
                .await;
        }
        outcome
    }

    /// [`RequestPipeline::admit`] without waiting, when every step can
    /// answer at once: the tenant is in the store's cache
    /// ([`TenantStore::peek`]), no membership check is configured (it asks a
    /// store), the rate limiter decides in memory
    /// ([`RateCheck::check_rate_now`]), and a refusal needs no audit record.
    /// `None` otherwise — then call `admit`; nothing was consumed. The
    /// outcome is the one `admit` would give; adapters use this to skip the
    /// asynchronous machinery on the hot path.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use tenancy_core::pipeline::RequestPipeline;
    /// use tenancy_core::resolve::{HeaderStrategy, ResolverChain, SimpleRequest};
    /// use tenancy_core::store::{CachedStore, InMemoryTenantStore};
    /// use tenancy_core::{RequestMeta, Tenant, TenantId};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let acme = Tenant::new(TenantId::new_v4(), "acme".parse()?, "Acme");
    /// let store = Arc::new(CachedStore::new(InMemoryTenantStore::with_tenants([acme.clone()])?));
    /// let pipeline = RequestPipeline::new(ResolverChain::new().with(HeaderStrategy::tenant_id()), store);
    /// let req = SimpleRequest::new("/").with_header("x-tenant-id", acme.id.to_string());
    ///
    /// // Cold cache: the fast path steps aside.
    /// assert!(pipeline.admit_now(&req, None, RequestMeta::default()).is_none());
    /// pipeline.admit(&req, None, RequestMeta::default()).await.map_err(|r| r.error)?;
    /// let admitted = pipeline.admit_now(&req, None, RequestMeta::default()).unwrap().map_err(|r| r.error)?;
    /// assert_eq!(admitted.ctx.tenant_id(), acme.id);
    /// # Ok(()) }
    /// ```
    pub fn admit_now(
        &self,
        req: &(dyn RequestView + Sync),
        user: Option<&UserId>,
        meta: RequestMeta,
    ) -> Option<Result<Admitted, Rejected>> {
        let started = self.start();
        // A membership check needs its store; let `admit` do everything.
        if self.authorizer.is_some() || self.authenticator.is_some() || !self.per_subject.is_empty()
        {
            return None;
        }
        let meta = match self.client(req, meta) {
            Ok(meta) => meta,
            Err(rejected) => return Some(Err(rejected)),
        };
        let tenant = match self.resolver.resolve_now(req, &*self.store)? {
            Ok(resolved) => resolved.tenant,
            Err(e) => return Some(Err(Rejected::new(e))),
        };
        if let Err(rejected) = self.admit_now_gates(&tenant, &meta, user) {
            // Refusals of a known tenant may have to be audited: `admit` does that.
            return if self.audit.is_some() {
                None
            } else {
                Some(Err(rejected))
            };
        }
        let ctx = TenantContext::new(tenant.clone()).set(|i| i.request = meta);
        let ctx = match self.derive(&tenant, ctx) {
            Ok(ctx) => ctx,
            Err(rejected) => return Some(Err(rejected)),
        };
        let rate = match &self.rate {
            Some((limiter, resource)) => {
                let outcome = limiter.check_rate_now(&ctx, resource, 1)?;
                match self.rate_outcome(tenant.id, resource, outcome) {
                    Ok(decision) => Some(decision),
                    Err(rejected) => return Some(Err(rejected)),
                }
            }
            None => None,
        };
        Some(Ok(self.admitted(ctx, rate, started)))
    }

    async fn run(
        &self,
        req: &(dyn RequestView + Sync),
        user: Option<&UserId>,
        meta: RequestMeta,
    ) -> Result<Admitted, Rejected> {
        let started = self.start();
        let resolved = self
            .resolver
            .resolve(req, &*self.store)
            .await
            .map_err(Rejected::new)?;
        let tenant = resolved.tenant;
        self.gate(&tenant)?;
        self.network(&tenant, &meta)?;
        let mut ctx = TenantContext::new(tenant.clone()).set(|i| i.request = meta);
        let principal = match &self.authenticator {
            Some(auth) => auth
                .authenticate(req, &tenant)
                .await
                .map_err(|e| Rejected::in_tenant(e, tenant.id))?,
            None => None,
        };
        let user = principal.as_ref().map(|p| &p.user).or(user);
        let impersonator = principal.as_ref().and_then(|p| p.impersonator.as_deref());
        self.maintenance(&tenant, user, impersonator)?;
        if let Some(authorizer) = &self.authorizer {
            let in_tenant = |error| Rejected {
                user: user.cloned(),
                ..Rejected::in_tenant(error, tenant.id)
            };
            let user = user
                .ok_or(TenantError::Unauthenticated)
                .map_err(in_tenant)?;
            let mut actor = authorizer.actor(user, &tenant).await.map_err(in_tenant)?;
            if let Some(op) = principal.as_ref().and_then(|p| p.impersonator.clone()) {
                actor.impersonator = Some(op);
            }
            ctx = ctx.set(|i| i.actor = Some(actor));
        }
        let ctx = self.derive(&tenant, ctx)?;
        for (subject, limiter, resource) in &self.per_subject {
            let key = match subject {
                RateSubject::User => ctx.actor().map(|a| format!("user:{}", a.user_id.as_str())),
                RateSubject::Client => ctx
                    .request()
                    .ip
                    .map(|ip| format!("client:{}", crate::client::counted_as(ip))),
            };
            let Some(key) = key else { continue };
            let outcome = limiter.check_rate_for(&ctx, resource, &key, 1).await;
            self.rate_outcome(tenant.id, resource, outcome)?;
        }
        let mut rate = None;
        if let Some((limiter, resource)) = &self.rate {
            let outcome = limiter.check_rate(&ctx, resource, 1).await;
            rate = Some(self.rate_outcome(tenant.id, resource, outcome)?);
        }
        Ok(self.admitted(ctx, rate, started))
    }

    #[allow(unused_variables)]
    fn admitted(
        &self,
        ctx: TenantContext,
        rate: Option<RateDecision>,
        started: Option<std::time::Instant>,
    ) -> Admitted {
        Admitted {
            ctx,
            rate,
            rate_headers: self.rate_headers,
            #[cfg(feature = "metrics")]
            started,
        }
    }

    /// The start instant of a request, when metrics are recorded.
    fn start(&self) -> Option<std::time::Instant> {
        #[cfg(feature = "metrics")]
        if self.metrics.is_some() {
            return Some(std::time::Instant::now());
        }
        None
    }

    /// The status gate, then the network policy.
    // `Rejected` is what `admit` returns anyway; these helpers only pass it on.
    #[allow(clippy::result_large_err)]
    fn admit_now_gates(
        &self,
        tenant: &crate::Tenant,
        meta: &RequestMeta,
        user: Option<&UserId>,
    ) -> Result<(), Rejected> {
        self.gate(tenant)?;
        self.network(tenant, meta)?;
        self.maintenance(tenant, user, None)
    }

    /// The tenant's maintenance window ([`crate::maintenance`]): refused
    /// unless the caller is an operator.
    // `Rejected` is what `admit` returns anyway; these helpers only pass it on.
    #[allow(clippy::result_large_err)]
    fn maintenance(
        &self,
        tenant: &crate::Tenant,
        user: Option<&UserId>,
        impersonator: Option<&str>,
    ) -> Result<(), Rejected> {
        if tenant
            .settings
            .get(crate::maintenance::MAINTENANCE_SETTING)
            .is_none()
        {
            return Ok(());
        }
        let window = match crate::maintenance::Maintenance::of(tenant) {
            Ok(Some(w)) => w,
            Ok(None) => return Ok(()),
            // A window that cannot be read keeps the tenant closed.
            Err(e) => {
                tracing::error!(tenant.id = %tenant.id, error = %e, "the tenant's maintenance setting is malformed");
                return Err(Rejected::in_tenant(
                    TenantError::Store(StoreError::new(e)),
                    tenant.id,
                ));
            }
        };
        let now = Utc::now();
        if !window.in_effect_at(now) {
            return Ok(());
        }
        let operator = impersonator.is_some()
            || matches!((&self.operators, user), (Some(is_op), Some(u)) if is_op(u, impersonator));
        if operator {
            tracing::info!(tenant.id = %tenant.id, "operator request during maintenance");
            return Ok(());
        }
        Err(Rejected {
            user: user.cloned(),
            ..Rejected::in_tenant(
                TenantError::Maintenance {
                    retry_after: window.retry_after(now),
                    message: window.message.map(Into::into),
                },
                tenant.id,
            )
        })
    }

    /// The tenant's network policy ([`crate::client::NetworkPolicy`],
    /// tenant setting `network`): requests from elsewhere are refused.
    // `Rejected` is what `admit` returns anyway; these helpers only pass it on.
    #[allow(clippy::result_large_err)]
    fn network(&self, tenant: &crate::Tenant, meta: &RequestMeta) -> Result<(), Rejected> {
        if tenant
            .settings
            .get(crate::client::NETWORK_SETTING)
            .is_none()
        {
            return Ok(());
        }
        match crate::client::NetworkPolicy::of(tenant) {
            Ok(Some(policy)) if !policy.allows(meta.ip) => Err(Rejected::in_tenant(
                TenantError::AddressNotAllowed,
                tenant.id,
            )),
            Ok(_) => Ok(()),
            // A policy that cannot be read admits no one.
            Err(e) => {
                tracing::error!(tenant.id = %tenant.id, error = %e, "the tenant's network policy is malformed");
                Err(Rejected::in_tenant(
                    TenantError::Store(StoreError::new(e)),
                    tenant.id,
                ))
            }
        }
    }

    /// The status gate. Only a trial depends on the clock: active tenants
    /// skip reading it.
    // `Rejected` is what `admit` returns anyway; these helpers only pass it on.
    #[allow(clippy::result_large_err)]
    fn gate(&self, tenant: &crate::Tenant) -> Result<(), Rejected> {
        if tenant.status != crate::TenantStatus::Active {
            crate::gate::check_for(tenant, Utc::now(), self.admission)
                .map_err(|e| Rejected::in_tenant(e, tenant.id))?;
        }
        Ok(())
    }

    /// Attaches the plan's entitlements and the flag snapshot, reused per
    /// tenant while the tenant record and the flag engine are unchanged.
    // `Rejected` is what `admit` returns anyway; these helpers only pass it on.
    #[allow(clippy::result_large_err)]
    fn derive(
        &self,
        tenant: &Arc<crate::Tenant>,
        mut ctx: TenantContext,
    ) -> Result<TenantContext, Rejected> {
        let cached = self
            .derived
            .get(&tenant.id)
            .filter(|d| Arc::ptr_eq(&d.tenant, tenant))
            .map(|d| d.clone());
        let entitlements = match (&self.catalog, &cached) {
            (None, _) => None,
            (Some(_), Some(d)) => d.entitlements.clone(),
            (Some(catalog), None) => catalog
                .entitlements_of(tenant)
                .map_err(|e| {
                    Rejected::in_tenant(TenantError::Store(StoreError::new(e)), tenant.id)
                })?
                .map(Arc::new),
        };
        if let Some(e) = &entitlements {
            ctx = ctx.set(|i| i.entitlements = Some(e.clone()));
        }
        let mut flags = None;
        if let Some(engine) = &self.flags {
            let generation = engine.generation();
            let snapshot = match cached.as_ref().and_then(|d| d.flags.clone()) {
                Some((g, snap)) if g == generation => snap,
                _ => {
                    let ancestors: Vec<TenantId> = tenant.parent.into_iter().collect();
                    engine.snapshot(tenant, &ancestors, entitlements.as_deref())
                }
            };
            let attached = snapshot.clone();
            ctx = ctx.set(|i| i.flags = attached);
            flags = Some((generation, snapshot));
        }
        let fresh = cached
            .as_ref()
            .is_none_or(|d| d.flags.as_ref().map(|(g, _)| *g) != flags.as_ref().map(|(g, _)| *g));
        if fresh {
            self.derived.insert(
                tenant.id,
                Derived {
                    tenant: tenant.clone(),
                    entitlements: entitlements.clone(),
                    flags,
                },
            );
        }
        Ok(ctx)
    }

    /// A rate decision, or the refusal (counted by metrics).
    #[allow(unused_variables)]
    // `Rejected` is what `admit` returns anyway; these helpers only pass it on.
    #[allow(clippy::result_large_err)]
    fn rate_outcome(
        &self,
        tenant: TenantId,
        resource: &str,
        outcome: Result<RateDecision, QuotaError>,
    ) -> Result<RateDecision, Rejected> {
        match outcome {
            Ok(decision) => Ok(decision),
            Err(QuotaError::Exceeded(q)) => {
                #[cfg(feature = "metrics")]
                if let Some(m) = &self.metrics {
                    m.quota_refused(tenant, resource);
                }
                Err(Rejected {
                    error: TenantError::Quota(q),
                    rate: None,
                    tenant: Some(tenant),
                    user: None,
                })
            }
            Err(e) => Err(Rejected::in_tenant(
                TenantError::Store(StoreError::new(e)),
                tenant,
            )),
        }
    }
}
