//! axum integration for [tenancy-rs](https://github.com/tenancy-rs/tenancy-rs).
//!
//! - [`TenantLayer`]: a tower `Layer` that runs the framework-neutral
//!   [`RequestPipeline`] (resolve → load → gate → membership → plan and
//!   flags → rate quota) for every request. Admitted requests run inside the
//!   tenant's task-local scope and tracing span, with the [`TenantContext`]
//!   in the request extensions and `X-Tenant-ID` on the response (`RateLimit-*` too
//!   with `RequestPipeline::rate_headers_on_success`; a 429 always has them).
//!   The response status is reported to the pipeline's metrics, and
//!   access denials to its audit sink, when configured. Refused requests get an RFC 9457 `application/problem+json`
//!   response with the status and headers the core chose.
//! - Extractors: [`Tenant`] (the context, with its own rejection),
//!   [`MaybeTenant`] (routes with an optional tenant, behind
//!   [`TenantLayer::optional`]), [`RequireFeature`] and
//!   [`RequirePermission`] guards.
//! - [`ProblemResponse`]: turn any [`TenantError`] returned by a handler
//!   into the same problem response.
//!
//! ```no_run
//! use std::sync::Arc;
//! use axum::{Router, routing::get};
//! use tenancy_axum::{Tenant, TenantLayer};
//! use tenancy_core::pipeline::{Admitted, RequestPipeline};
//! use tenancy_core::resolve::{HeaderStrategy, ResolverChain};
//! use tenancy_core::store::InMemoryTenantStore;
//!
//! async fn whoami(Tenant(ctx): Tenant) -> String {
//!     ctx.slug().to_string()
//! }
//!
//! let store = Arc::new(InMemoryTenantStore::new());
//! let pipeline = RequestPipeline::new(ResolverChain::new().with(HeaderStrategy::tenant_id()), store);
//! let app: Router = Router::new()
//!     .route("/whoami", get(whoami))
//!     .layer(TenantLayer::new(pipeline));
//! ```
#![forbid(unsafe_code)]

use std::future::Future;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::response::{IntoResponse, Response};
use http::request::Parts;
use http::{HeaderName, HeaderValue, Request, StatusCode};
use tenancy_core::pipeline::{Admitted, Rejected, RequestPipeline};
use tenancy_core::problem::{self, CONTENT_TYPE, Problem};
use tenancy_core::resolve::{HeaderLookup, RequestView};
use tenancy_core::{InTenant, RequestMeta, TenantContext, TenantError, UserId};

/// Reads the authenticated user of a request (set by your authentication
/// layer, e.g. from a verified session or token in the extensions).
pub type UserSource = Arc<dyn Fn(&Parts) -> Option<UserId> + Send + Sync>;

struct Shared {
    pipeline: RequestPipeline,
    user: Option<UserSource>,
    optional: bool,
}

/// The tower layer. See the [crate docs](crate).
#[derive(Clone)]
pub struct TenantLayer {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for TenantLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantLayer")
            .field("pipeline", &self.shared.pipeline)
            .finish_non_exhaustive()
    }
}

impl TenantLayer {
    /// A layer running `pipeline`.
    pub fn new(pipeline: RequestPipeline) -> Self {
        Self {
            shared: Arc::new(Shared {
                pipeline,
                user: None,
                optional: false,
            }),
        }
    }

    /// A layer for routes with an optional tenant ("universal" routes: a
    /// landing page, a sign-up form, a health page that also works per
    /// tenant). A request that names no tenant at all reaches the handler
    /// without a context ([`MaybeTenant`] is `None`); a request that names
    /// one runs the whole pipeline like [`TenantLayer::new`] — a malformed,
    /// unknown, suspended or refused tenant is refused, never served as if
    /// no tenant were named.
    ///
    /// ```no_run
    /// use std::sync::Arc;
    /// use axum::{Router, routing::get};
    /// use tenancy_axum::{MaybeTenant, TenantLayer};
    /// use tenancy_core::pipeline::RequestPipeline;
    /// use tenancy_core::resolve::{HeaderStrategy, ResolverChain};
    /// use tenancy_core::store::InMemoryTenantStore;
    ///
    /// async fn home(MaybeTenant(ctx): MaybeTenant) -> String {
    ///     match ctx {
    ///         Some(ctx) => format!("welcome to {}", ctx.slug()),
    ///         None => "welcome".to_owned(),
    ///     }
    /// }
    ///
    /// let store = Arc::new(InMemoryTenantStore::new());
    /// let pipeline = RequestPipeline::new(ResolverChain::new().with(HeaderStrategy::tenant_id()), store);
    /// let app: Router = Router::new()
    ///     .route("/", get(home))
    ///     .layer(TenantLayer::optional(pipeline));
    /// ```
    pub fn optional(pipeline: RequestPipeline) -> Self {
        Self {
            shared: Arc::new(Shared {
                pipeline,
                user: None,
                optional: true,
            }),
        }
    }

    /// Where the authenticated user comes from (needed when the pipeline
    /// requires membership).
    pub fn with_user(
        self,
        source: impl Fn(&Parts) -> Option<UserId> + Send + Sync + 'static,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                pipeline: self.shared.pipeline.clone(),
                user: Some(Arc::new(source)),
                optional: self.shared.optional,
            }),
        }
    }
}

impl<S> tower_layer::Layer<S> for TenantLayer {
    type Service = TenantService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TenantService {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service [`TenantLayer`] wraps around yours.
#[derive(Clone)]
pub struct TenantService<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> std::fmt::Debug for TenantService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantService").finish_non_exhaustive()
    }
}

/// The request parts as the core's [`RequestView`].
struct PartsView<'a>(&'a Parts);

impl RequestView for PartsView<'_> {
    fn host(&self) -> Option<&[u8]> {
        match self.0.headers.get(http::header::HOST) {
            Some(h) => Some(h.as_bytes()),
            None => self.0.uri.host().map(str::as_bytes),
        }
    }

    fn path(&self) -> &str {
        self.0.uri.path()
    }

    fn header(&self, name: &str) -> HeaderLookup<'_> {
        // The default tenant header by its prebuilt name: a `&str` name
        // is parsed on every lookup.
        let mut values = if name == problem::X_TENANT_ID {
            self.0
                .headers
                .get_all(header_name(problem::X_TENANT_ID))
                .iter()
        } else {
            self.0.headers.get_all(name).iter()
        };
        match (values.next(), values.next()) {
            (None, _) => HeaderLookup::Absent,
            (Some(v), None) => HeaderLookup::One(v.as_bytes()),
            (Some(_), Some(_)) => HeaderLookup::Many,
        }
    }
}

/// The [`RequestMeta`] of a request outside the tenant pipeline (a sign-in
/// route, say): the client address — read from `Forwarded` /
/// `X-Forwarded-For` only when the connection comes from one of `proxies` —
/// and the user agent. The pipeline does the same for tenant routes
/// ([`RequestPipeline::trust_proxies`]).
///
/// The peer address comes from axum's `ConnectInfo<SocketAddr>`: serve with
/// `into_make_service_with_connect_info::<SocketAddr>()`.
///
/// ```
/// use std::net::SocketAddr;
/// use axum::extract::ConnectInfo;
/// use tenancy_core::client::TrustedProxies;
///
/// let mut req = http::Request::builder()
///     .header("x-forwarded-for", "203.0.113.9")
///     .header("user-agent", "curl/8")
///     .body(())?;
/// req.extensions_mut().insert(ConnectInfo("10.0.0.2:5000".parse::<SocketAddr>()?));
/// let (parts, ()) = req.into_parts();
/// let meta = tenancy_axum::request_meta(&parts, &TrustedProxies::parse("10.0.0.0/8")?)?;
/// assert_eq!(meta.ip, Some("203.0.113.9".parse()?));
/// assert_eq!(meta.user_agent.as_deref(), Some("curl/8"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn request_meta(
    parts: &Parts,
    proxies: &tenancy_core::client::TrustedProxies,
) -> Result<RequestMeta, TenantError> {
    let mut meta = meta(parts);
    if let Some(peer) = meta.ip {
        meta.ip = Some(proxies.client_ip(peer, &PartsView(parts))?);
    }
    Ok(meta)
}

fn meta(parts: &Parts) -> RequestMeta {
    let mut meta = RequestMeta::default();
    if let Some(ConnectInfo(addr)) = parts.extensions.get::<ConnectInfo<SocketAddr>>() {
        meta = meta.with_ip(addr.ip());
    }
    if let Some(agent) = parts
        .headers
        .get(http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
    {
        meta = meta.with_user_agent(agent);
    }
    meta
}

fn add_headers(response: &mut Response, headers: &[(&'static str, String)]) {
    for (name, value) in headers {
        if let Ok(value) = HeaderValue::from_str(value) {
            response.headers_mut().insert(header_name(name), value);
        }
    }
}

/// The header names the pipeline writes, validated at compile time
/// (`HeaderName::from_static` at run time re-checks every byte).
fn header_name(name: &'static str) -> HeaderName {
    static X_TENANT: HeaderName = HeaderName::from_static(problem::X_TENANT_ID);
    static LIMIT: HeaderName = HeaderName::from_static(problem::RATELIMIT_LIMIT);
    static REMAINING: HeaderName = HeaderName::from_static(problem::RATELIMIT_REMAINING);
    static RESET: HeaderName = HeaderName::from_static(problem::RATELIMIT_RESET);
    static RETRY: HeaderName = HeaderName::from_static(problem::RETRY_AFTER);
    match name {
        problem::X_TENANT_ID => X_TENANT.clone(),
        problem::RATELIMIT_LIMIT => LIMIT.clone(),
        problem::RATELIMIT_REMAINING => REMAINING.clone(),
        problem::RATELIMIT_RESET => RESET.clone(),
        problem::RETRY_AFTER => RETRY.clone(),
        other => HeaderName::from_static(other),
    }
}

/// `x-tenant-id` and `ratelimit-*` on an admitted request's response.
fn success_headers(response: &mut Response, admitted: &Admitted) {
    let headers = response.headers_mut();
    admitted.write_headers(|name, value| {
        if let Ok(value) = HeaderValue::from_bytes(value) {
            headers.insert(header_name(name), value);
        }
    });
}

/// A problem response (RFC 9457) for a [`TenantError`] or a [`Problem`].
///
/// Return it (or a `TenantError` converted with `?`) from handlers:
///
/// ```no_run
/// use tenancy_axum::{ProblemResponse, Tenant};
///
/// async fn admin(Tenant(ctx): Tenant) -> Result<&'static str, ProblemResponse> {
///     tenancy_core::authorize(&ctx, "tenant:manage")?;
///     Ok("welcome")
/// }
/// ```
#[derive(Debug)]
pub struct ProblemResponse(pub Problem);

impl From<TenantError> for ProblemResponse {
    fn from(e: TenantError) -> Self {
        if e.status() >= 500 {
            tracing::error!(error = %e, "request failed");
        }
        Self(Problem::from_error(&e, None))
    }
}

impl IntoResponse for ProblemResponse {
    fn into_response(self) -> Response {
        let p = self.0;
        let status = StatusCode::from_u16(p.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (
            status,
            [(http::header::CONTENT_TYPE, CONTENT_TYPE)],
            p.to_json().to_string(),
        )
            .into_response();
        add_headers(&mut response, &p.headers);
        response
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

pin_project_lite::pin_project! {
    /// The response future of [`TenantService`]: the inner service's future
    /// in the tenant's scope when the pipeline admitted the request without
    /// waiting ([`RequestPipeline::admit_now`]), a ready refusal, or — on a
    /// cache miss, a membership check, a remote rate limiter — the whole
    /// asynchronous pipeline, boxed.
    pub struct ResponseFuture<F, E> {
        #[pin]
        state: State<F, E>,
    }
}

pin_project_lite::pin_project! {
    #[project = StateProj]
    enum State<F, E> {
        Scoped {
            #[pin]
            inner: InTenant<F>,
            admitted: Option<Admitted>,
            shared: Arc<Shared>,
        },
        Ready {
            response: Option<Response>,
        },
        Central {
            #[pin]
            inner: F,
        },
        Waiting {
            future: BoxFuture<Result<Response, E>>,
        },
    }
}

impl<F, E> std::fmt::Debug for ResponseFuture<F, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, E> Future for ResponseFuture<F, E>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Scoped {
                inner,
                admitted,
                shared,
            } => {
                let mut response = match inner.poll(cx) {
                    Poll::Ready(r) => r?,
                    Poll::Pending => return Poll::Pending,
                };
                if let Some(admitted) = admitted.take() {
                    admitted_response(shared, &admitted, &mut response);
                }
                Poll::Ready(Ok(response))
            }
            // Polled again after completion: there is nothing left to give.
            StateProj::Ready { response } => match response.take() {
                Some(r) => Poll::Ready(Ok(r)),
                None => Poll::Pending,
            },
            StateProj::Central { inner } => inner.poll(cx),
            StateProj::Waiting { future } => future.as_mut().poll(cx),
        }
    }
}

/// Marks a request that named no tenant on a route with an optional tenant
/// ([`TenantLayer::optional`]).
#[derive(Debug, Clone, Copy)]
struct NoTenantNamed;

/// What an admitted request carries to the handlers: its context, and —
/// when refusals are audited — the pipeline, for [`RequirePermission`].
fn admit_into(shared: &Arc<Shared>, parts: &mut Parts, admitted: &Admitted) {
    parts.extensions.insert(admitted.ctx.clone());
    if shared.pipeline.audits_denials() {
        parts.extensions.insert(Denials(shared.clone()));
    }
}

/// The pipeline of an admitted request whose refusals are audited.
#[derive(Clone)]
struct Denials(Arc<Shared>);

/// The headers and metrics of an admitted request's response.
fn admitted_response(shared: &Shared, admitted: &Admitted, response: &mut Response) {
    success_headers(response, admitted);
    shared
        .pipeline
        .record_admitted(admitted, response.status().as_u16());
}

/// The problem response of a refused request.
fn refused_response(shared: &Shared, rejected: &Rejected) -> Response {
    if rejected.error.status() >= 500 {
        tracing::error!(error = %rejected.error, "tenant pipeline failed");
    }
    let problem = rejected.problem();
    shared
        .pipeline
        .record_response(rejected.tenant, problem.status);
    ProblemResponse(problem).into_response()
}

impl<S, B> tower_service::Service<Request<B>> for TenantService<S>
where
    S: tower_service::Service<Request<B>, Response = Response> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // The clone that was driven to readiness is the one that serves.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let (mut parts, body) = req.into_parts();
        let user = self.shared.user.as_ref().and_then(|f| f(&parts));
        // The hot path: every step answers at once, nothing is boxed.
        match self
            .shared
            .pipeline
            .admit_now(&PartsView(&parts), user.as_ref(), meta(&parts))
        {
            Some(Ok(admitted)) => {
                admit_into(&self.shared, &mut parts, &admitted);
                let call = inner.call(Request::from_parts(parts, body));
                return ResponseFuture {
                    state: State::Scoped {
                        inner: admitted.ctx.scope(call),
                        admitted: Some(admitted),
                        shared: self.shared.clone(),
                    },
                };
            }
            Some(Err(rejected)) if self.shared.optional && rejected.names_no_tenant() => {
                parts.extensions.insert(NoTenantNamed);
                return ResponseFuture {
                    state: State::Central {
                        inner: inner.call(Request::from_parts(parts, body)),
                    },
                };
            }
            Some(Err(rejected)) => {
                return ResponseFuture {
                    state: State::Ready {
                        response: Some(refused_response(&self.shared, &rejected)),
                    },
                };
            }
            None => {}
        }
        let shared = self.shared.clone();
        ResponseFuture {
            state: State::Waiting {
                future: Box::pin(async move {
                    let outcome = shared
                        .pipeline
                        .admit(&PartsView(&parts), user.as_ref(), meta(&parts))
                        .await;
                    match outcome {
                        Ok(admitted) => {
                            admit_into(&shared, &mut parts, &admitted);
                            let req = Request::from_parts(parts, body);
                            let mut response = admitted.ctx.scope(inner.call(req)).await?;
                            admitted_response(&shared, &admitted, &mut response);
                            Ok(response)
                        }
                        Err(rejected) if shared.optional && rejected.names_no_tenant() => {
                            parts.extensions.insert(NoTenantNamed);
                            inner.call(Request::from_parts(parts, body)).await
                        }
                        Err(rejected) => Ok(refused_response(&shared, &rejected)),
                    }
                }),
            },
        }
    }
}

/// The request's [`TenantContext`]. Without [`TenantLayer`] in front the
/// request is refused with the `tenant-missing` problem (400), never a 500.
#[derive(Debug, Clone)]
pub struct Tenant(pub TenantContext);

impl<S: Send + Sync> FromRequestParts<S> for Tenant {
    type Rejection = ProblemResponse;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<TenantContext>()
            .cloned()
            .map(Tenant)
            .ok_or_else(|| TenantError::Missing.into())
    }
}

/// The request's [`TenantContext`] on a route with an optional tenant
/// ([`TenantLayer::optional`]): `None` when the request named no tenant.
/// Behind no tenant layer at all the request is refused (400
/// `tenant-missing`): a route that forgot its layer is never served as if
/// no tenant were named.
#[derive(Debug, Clone)]
pub struct MaybeTenant(pub Option<TenantContext>);

impl<S: Send + Sync> FromRequestParts<S> for MaybeTenant {
    type Rejection = ProblemResponse;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        if let Some(ctx) = parts.extensions.get::<TenantContext>() {
            return Ok(Self(Some(ctx.clone())));
        }
        match parts.extensions.get::<NoTenantNamed>() {
            Some(_) => Ok(Self(None)),
            None => Err(TenantError::Missing.into()),
        }
    }
}

/// Names a feature flag for [`RequireFeature`].
pub trait FeatureName: Send + Sync + 'static {
    /// The flag key.
    const NAME: &'static str;
}

/// Names a permission for [`RequirePermission`].
pub trait PermissionName: Send + Sync + 'static {
    /// The permission (`resource:action`).
    const NAME: &'static str;
}

/// Refuses the request (403 `feature-not-in-plan`, with an upgrade hint)
/// unless the tenant has feature `F`.
///
/// ```no_run
/// use tenancy_axum::{FeatureName, RequireFeature};
///
/// struct Analytics;
/// impl FeatureName for Analytics { const NAME: &'static str = "analytics"; }
///
/// async fn report(_: RequireFeature<Analytics>) -> &'static str { "numbers" }
/// ```
#[derive(Debug)]
pub struct RequireFeature<F>(PhantomData<F>);

impl<S: Send + Sync, F: FeatureName> FromRequestParts<S> for RequireFeature<F> {
    type Rejection = ProblemResponse;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Tenant(ctx) = Tenant::from_request_parts(parts, state).await?;
        ctx.require_feature(F::NAME)?;
        Ok(Self(PhantomData))
    }
}

/// Refuses the request (403 `permission-missing`) unless the acting user
/// holds permission `P` in the tenant. When the pipeline audits refusals
/// ([`RequestPipeline::with_audit`]) the refusal is recorded in the
/// tenant's audit log like the pipeline's own.
#[derive(Debug)]
pub struct RequirePermission<P>(PhantomData<P>);

impl<S: Send + Sync, P: PermissionName> FromRequestParts<S> for RequirePermission<P> {
    type Rejection = ProblemResponse;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Tenant(ctx) = Tenant::from_request_parts(parts, state).await?;
        match parts.extensions.get::<Denials>().cloned() {
            Some(Denials(shared)) => {
                shared
                    .pipeline
                    .authorize(&ctx, P::NAME, parts.uri.path())
                    .await?;
            }
            None => tenancy_core::authorize(&ctx, P::NAME)?,
        }
        Ok(Self(PhantomData))
    }
}
