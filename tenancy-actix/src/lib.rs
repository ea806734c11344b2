//! actix-web integration for [tenancy-rs](https://github.com/tenancy-rs/tenancy-rs).
//!
//! The same behaviour as `tenancy-axum`, through actix's own traits:
//!
//! - [`TenantMiddleware`]: a `Transform` that runs the framework-neutral
//!   [`RequestPipeline`] for every request. Admitted requests run inside the
//!   tenant's task-local scope and tracing span, with the [`TenantContext`]
//!   in the request extensions and `X-Tenant-ID` on the response (`RateLimit-*` too
//!   with `RequestPipeline::rate_headers_on_success`; a 429 always has them);
//!   refused requests get the core's RFC 9457 problem response. The response
//!   status is reported to the pipeline's metrics, and access denials to its
//!   audit sink, when configured.
//! - Extractors ([`FromRequest`]): [`Tenant`], [`MaybeTenant`] (routes
//!   with an optional tenant, behind [`TenantMiddleware::optional`]),
//!   [`RequireFeature`], [`RequirePermission`], each rejecting with a
//!   problem response.
//! - [`ProblemError`]: return a [`TenantError`] from a handler as the same
//!   problem response (`ResponseError`).
//!
//! ```no_run
//! use std::sync::Arc;
//! use actix_web::{App, HttpServer, web};
//! use tenancy_actix::{Tenant, TenantMiddleware};
//! use tenancy_core::pipeline::{Admitted, Rejected, RequestPipeline};
//! use tenancy_core::resolve::{HeaderStrategy, ResolverChain};
//! use tenancy_core::store::InMemoryTenantStore;
//!
//! async fn whoami(Tenant(ctx): Tenant) -> String {
//!     ctx.slug().to_string()
//! }
//!
//! # async fn run() -> std::io::Result<()> {
//! let store = Arc::new(InMemoryTenantStore::new());
//! let pipeline = RequestPipeline::new(ResolverChain::new().with(HeaderStrategy::tenant_id()), store);
//! HttpServer::new(move || {
//!     App::new()
//!         .wrap(TenantMiddleware::new(pipeline.clone()))
//!         .route("/whoami", web::get().to(whoami))
//! })
//! .bind(("127.0.0.1", 8080))?
//! .run()
//! .await
//! # }
//! ```
#![forbid(unsafe_code)]

use std::future::{Ready, ready};
use std::marker::PhantomData;
use std::rc::Rc;
use std::sync::Arc;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{Payload, Service, ServiceRequest, ServiceResponse, Transform};
use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::{FromRequest, HttpMessage, HttpRequest, HttpResponse, ResponseError};
use futures_util::future::LocalBoxFuture;
use tenancy_core::pipeline::{Admitted, Rejected, RequestPipeline};
use tenancy_core::problem::{self, CONTENT_TYPE, Problem};
use tenancy_core::resolve::{HeaderLookup, RequestView};
use tenancy_core::{InTenant, RequestMeta, TenantContext, TenantError, UserId};

/// Reads the authenticated user of a request (set by your authentication
/// middleware).
pub type UserSource = Arc<dyn Fn(&ServiceRequest) -> Option<UserId> + Send + Sync>;

/// The `Transform` that runs the tenant pipeline. See the [crate docs](crate).
#[derive(Clone)]
pub struct TenantMiddleware {
    pipeline: RequestPipeline,
    user: Option<UserSource>,
    optional: bool,
}

impl std::fmt::Debug for TenantMiddleware {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantMiddleware")
            .field("pipeline", &self.pipeline)
            .finish_non_exhaustive()
    }
}

impl TenantMiddleware {
    /// Middleware running `pipeline`.
    pub fn new(pipeline: RequestPipeline) -> Self {
        Self {
            pipeline,
            user: None,
            optional: false,
        }
    }

    /// Middleware for routes with an optional tenant ("universal" routes).
    /// A request that names no tenant at all reaches the handler without a
    /// context ([`MaybeTenant`] is `None`); a request that names one runs
    /// the whole pipeline like [`TenantMiddleware::new`] — a malformed,
    /// unknown, suspended or refused tenant is refused, never served as if
    /// no tenant were named.
    ///
    /// ```no_run
    /// use std::sync::Arc;
    /// use actix_web::{App, web};
    /// use tenancy_actix::{MaybeTenant, TenantMiddleware};
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
    /// let app = App::new()
    ///     .wrap(TenantMiddleware::optional(pipeline))
    ///     .route("/", web::get().to(home));
    /// ```
    pub fn optional(pipeline: RequestPipeline) -> Self {
        Self {
            optional: true,
            ..Self::new(pipeline)
        }
    }

    /// Where the authenticated user comes from (needed when the pipeline
    /// requires membership).
    pub fn with_user(
        mut self,
        source: impl Fn(&ServiceRequest) -> Option<UserId> + Send + Sync + 'static,
    ) -> Self {
        self.user = Some(Arc::new(source));
        self
    }
}

impl<S, B> Transform<S, ServiceRequest> for TenantMiddleware
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = actix_web::Error;
    type Transform = TenantService<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(TenantService {
            service: Rc::new(service),
            pipeline: Rc::new(self.pipeline.clone()),
            user: self.user.clone(),
            optional: self.optional,
        }))
    }
}

/// The service [`TenantMiddleware`] wraps around yours.
pub struct TenantService<S> {
    service: Rc<S>,
    pipeline: Rc<RequestPipeline>,
    user: Option<UserSource>,
    optional: bool,
}

impl<S> std::fmt::Debug for TenantService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantService").finish_non_exhaustive()
    }
}

/// The request head as the core's [`RequestView`].
struct HeadView<'a> {
    headers: &'a header::HeaderMap,
    uri: &'a actix_web::http::Uri,
}

impl RequestView for HeadView<'_> {
    fn host(&self) -> Option<&[u8]> {
        match self.headers.get(header::HOST) {
            Some(h) => Some(h.as_bytes()),
            None => self.uri.host().map(str::as_bytes),
        }
    }

    fn path(&self) -> &str {
        self.uri.path()
    }

    fn header(&self, name: &str) -> HeaderLookup<'_> {
        // The default tenant header by its prebuilt name: a `&str` name
        // is parsed on every lookup.
        let mut values = if name == problem::X_TENANT_ID {
            self.headers.get_all(header_name(problem::X_TENANT_ID))
        } else {
            self.headers.get_all(name)
        };
        match (values.next(), values.next()) {
            (None, _) => HeaderLookup::Absent,
            (Some(v), None) => HeaderLookup::One(v.as_bytes()),
            (Some(_), Some(_)) => HeaderLookup::Many,
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
fn success_headers(headers: &mut header::HeaderMap, admitted: &Admitted) {
    admitted.write_headers(|name, value| {
        if let Ok(value) = HeaderValue::from_bytes(value) {
            headers.insert(header_name(name), value);
        }
    });
}

fn problem_response(p: &Problem) -> HttpResponse {
    let status = StatusCode::from_u16(p.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut builder = HttpResponse::build(status);
    builder.insert_header((header::CONTENT_TYPE, CONTENT_TYPE));
    for (name, value) in &p.headers {
        if let Ok(value) = HeaderValue::from_str(value) {
            builder.insert_header((header_name(name), value));
        }
    }
    builder.body(p.to_json().to_string())
}

pin_project_lite::pin_project! {
    /// The response future of [`TenantService`]: the inner service's future
    /// in the tenant's scope when the pipeline admitted the request without
    /// waiting ([`RequestPipeline::admit_now`]), a ready refusal, or — on a
    /// cache miss, a membership check, a remote rate limiter — the whole
    /// asynchronous pipeline, boxed.
    pub struct ResponseFuture<F, B> {
        #[pin]
        state: State<F, B>,
    }
}

type Outcome<B> = Result<ServiceResponse<EitherBody<B>>, actix_web::Error>;

pin_project_lite::pin_project! {
    #[project = StateProj]
    enum State<F, B> {
        Scoped {
            #[pin]
            inner: InTenant<F>,
            admitted: Option<Admitted>,
            pipeline: Rc<RequestPipeline>,
        },
        Ready {
            response: Option<ServiceResponse<EitherBody<B>>>,
        },
        Waiting {
            future: LocalBoxFuture<'static, Outcome<B>>,
        },
    }
}

impl<F, B> std::fmt::Debug for ResponseFuture<F, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, B> std::future::Future for ResponseFuture<F, B>
where
    F: std::future::Future<Output = Result<ServiceResponse<B>, actix_web::Error>>,
    B: MessageBody,
{
    type Output = Outcome<B>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        use std::task::Poll;
        match self.project().state.project() {
            StateProj::Scoped {
                inner,
                admitted,
                pipeline,
            } => {
                let outcome = match inner.poll(cx) {
                    Poll::Ready(outcome) => outcome,
                    Poll::Pending => return Poll::Pending,
                };
                match admitted.take() {
                    Some(admitted) => Poll::Ready(admitted_response(pipeline, &admitted, outcome)),
                    None => Poll::Pending,
                }
            }
            // Polled again after completion: there is nothing left to give.
            StateProj::Ready { response } => match response.take() {
                Some(r) => Poll::Ready(Ok(r)),
                None => Poll::Pending,
            },
            StateProj::Waiting { future } => future.as_mut().poll(cx),
        }
    }
}

/// The headers and metrics of an admitted request's response.
fn admitted_response<B: MessageBody>(
    pipeline: &RequestPipeline,
    admitted: &Admitted,
    outcome: Result<ServiceResponse<B>, actix_web::Error>,
) -> Outcome<B> {
    match outcome {
        Ok(mut response) => {
            success_headers(response.headers_mut(), admitted);
            pipeline.record_admitted(admitted, response.status().as_u16());
            Ok(response.map_into_left_body())
        }
        Err(e) => {
            let status = e.as_response_error().status_code().as_u16();
            pipeline.record_admitted(admitted, status);
            Err(e)
        }
    }
}

/// The problem response of a refused request.
fn refused_response<B>(
    pipeline: &RequestPipeline,
    req: ServiceRequest,
    rejected: &Rejected,
) -> ServiceResponse<EitherBody<B>> {
    if rejected.error.status() >= 500 {
        tracing::error!(error = %rejected.error, "tenant pipeline failed");
    }
    let problem = rejected.problem();
    pipeline.record_response(rejected.tenant, problem.status);
    req.into_response(problem_response(&problem))
        .map_into_right_body()
}

fn request_meta(req: &ServiceRequest) -> RequestMeta {
    let mut meta = RequestMeta::default();
    if let Some(addr) = req.peer_addr() {
        meta = meta.with_ip(addr.ip());
    }
    if let Some(agent) = req
        .headers()
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
    {
        meta = meta.with_user_agent(agent);
    }
    meta
}

impl<S, B> Service<ServiceRequest> for TenantService<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = actix_web::Error;
    type Future = ResponseFuture<S::Future, B>;

    actix_web::dev::forward_ready!(service);

    fn call(&self, req: ServiceRequest) -> Self::Future {
        let user = self.user.as_ref().and_then(|f| f(&req));
        let view = HeadView {
            headers: req.headers(),
            uri: req.uri(),
        };
        // The hot path: every step answers at once, nothing is boxed.
        match self
            .pipeline
            .admit_now(&view, user.as_ref(), request_meta(&req))
        {
            Some(Ok(admitted)) => {
                admit_into(&self.pipeline, &req, &admitted);
                let call = self.service.call(req);
                return ResponseFuture {
                    state: State::Scoped {
                        inner: admitted.ctx.scope(call),
                        admitted: Some(admitted),
                        pipeline: self.pipeline.clone(),
                    },
                };
            }
            Some(Err(rejected)) if self.optional && rejected.names_no_tenant() => {
                req.extensions_mut().insert(NoTenantNamed);
                let service = self.service.clone();
                return ResponseFuture {
                    state: State::Waiting {
                        future: Box::pin(async move {
                            service
                                .call(req)
                                .await
                                .map(ServiceResponse::map_into_left_body)
                        }),
                    },
                };
            }
            Some(Err(rejected)) => {
                return ResponseFuture {
                    state: State::Ready {
                        response: Some(refused_response(&self.pipeline, req, &rejected)),
                    },
                };
            }
            None => {}
        }
        let service = self.service.clone();
        let pipeline = self.pipeline.clone();
        let optional = self.optional;
        ResponseFuture {
            state: State::Waiting {
                future: Box::pin(async move {
                    let view = HeadView {
                        headers: req.headers(),
                        uri: req.uri(),
                    };
                    let meta = request_meta(&req);
                    match pipeline.admit(&view, user.as_ref(), meta).await {
                        Ok(admitted) => {
                            admit_into(&pipeline, &req, &admitted);
                            let outcome = admitted.ctx.scope(service.call(req)).await;
                            admitted_response(&pipeline, &admitted, outcome)
                        }
                        Err(rejected) if optional && rejected.names_no_tenant() => {
                            req.extensions_mut().insert(NoTenantNamed);
                            service
                                .call(req)
                                .await
                                .map(ServiceResponse::map_into_left_body)
                        }
                        Err(rejected) => Ok(refused_response(&pipeline, req, &rejected)),
                    }
                }),
            },
        }
    }
}

/// A [`TenantError`] as an actix error: the core's problem response.
///
/// ```no_run
/// use tenancy_actix::{ProblemError, Tenant};
///
/// async fn admin(Tenant(ctx): Tenant) -> Result<&'static str, ProblemError> {
///     tenancy_core::authorize(&ctx, "tenant:manage")?;
///     Ok("welcome")
/// }
/// ```
#[derive(Debug)]
pub struct ProblemError(pub Box<Problem>);

impl std::fmt::Display for ProblemError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.0.detail, self.0.code)
    }
}

impl From<TenantError> for ProblemError {
    fn from(e: TenantError) -> Self {
        if e.status() >= 500 {
            tracing::error!(error = %e, "request failed");
        }
        Self(Box::new(Problem::from_error(&e, None)))
    }
}

impl ResponseError for ProblemError {
    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.0.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn error_response(&self) -> HttpResponse {
        problem_response(&self.0)
    }
}

fn context(req: &HttpRequest) -> Result<TenantContext, ProblemError> {
    req.extensions()
        .get::<TenantContext>()
        .cloned()
        .ok_or_else(|| TenantError::Missing.into())
}

/// The request's [`TenantContext`]. Without [`TenantMiddleware`] the request
/// is refused with the `tenant-missing` problem (400), never a 500.
#[derive(Debug, Clone)]
pub struct Tenant(pub TenantContext);

impl FromRequest for Tenant {
    type Error = ProblemError;
    type Future = Ready<Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(context(req).map(Tenant))
    }
}

/// Marks a request that named no tenant on a route with an optional tenant
/// ([`TenantMiddleware::optional`]).
#[derive(Debug, Clone, Copy)]
struct NoTenantNamed;

/// The request's [`TenantContext`] on a route with an optional tenant
/// ([`TenantMiddleware::optional`]): `None` when the request named no
/// tenant. Behind no tenant middleware at all the request is refused (400
/// `tenant-missing`): a route that forgot its middleware is never served as
/// if no tenant were named.
#[derive(Debug, Clone)]
pub struct MaybeTenant(pub Option<TenantContext>);

impl FromRequest for MaybeTenant {
    type Error = ProblemError;
    type Future = Ready<Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let extensions = req.extensions();
        let outcome = match extensions.get::<TenantContext>() {
            Some(ctx) => Ok(Self(Some(ctx.clone()))),
            None if extensions.get::<NoTenantNamed>().is_some() => Ok(Self(None)),
            None => Err(TenantError::Missing.into()),
        };
        ready(outcome)
    }
}

/// Names a feature flag for [`RequireFeature`].
pub trait FeatureName: 'static {
    /// The flag key.
    const NAME: &'static str;
}

/// Names a permission for [`RequirePermission`].
pub trait PermissionName: 'static {
    /// The permission (`resource:action`).
    const NAME: &'static str;
}

/// Refuses the request (403 `feature-not-in-plan`, with an upgrade hint)
/// unless the tenant has feature `F`.
#[derive(Debug)]
pub struct RequireFeature<F>(PhantomData<F>);

impl<F: FeatureName> FromRequest for RequireFeature<F> {
    type Error = ProblemError;
    type Future = Ready<Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(context(req).and_then(|ctx| {
            ctx.require_feature(F::NAME)?;
            Ok(Self(PhantomData))
        }))
    }
}

/// Refuses the request (403 `permission-missing`) unless the acting user
/// holds permission `P` in the tenant. When the pipeline audits refusals
/// ([`RequestPipeline::with_audit`]) the refusal is recorded in the
/// tenant's audit log like the pipeline's own.
#[derive(Debug)]
pub struct RequirePermission<P>(PhantomData<P>);

impl<P: PermissionName> FromRequest for RequirePermission<P> {
    type Error = ProblemError;
    type Future = LocalBoxFuture<'static, Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let ctx = context(req);
        let denials = req.extensions().get::<Denials>().cloned();
        let path = req.path().to_owned();
        Box::pin(async move {
            let ctx = ctx?;
            match denials {
                Some(Denials(pipeline)) => pipeline.authorize(&ctx, P::NAME, &path).await?,
                None => tenancy_core::authorize(&ctx, P::NAME)?,
            }
            Ok(Self(PhantomData))
        })
    }
}

/// The pipeline of an admitted request whose refusals are audited.
#[derive(Clone)]
struct Denials(Rc<RequestPipeline>);

/// What an admitted request carries to the handlers: its context, and —
/// when refusals are audited — the pipeline, for [`RequirePermission`].
fn admit_into(pipeline: &Rc<RequestPipeline>, req: &ServiceRequest, admitted: &Admitted) {
    let mut extensions = req.extensions_mut();
    extensions.insert(admitted.ctx.clone());
    if pipeline.audits_denials() {
        extensions.insert(Denials(pipeline.clone()));
    }
}
