//! The REST API: routes, the shared state, errors as problem+json, and
//! pagination.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tenancy_axum::{Tenant, TenantLayer};
use tenancy_core::identity::Authenticators;
use tenancy_core::lifecycle::LifecycleError;
use tenancy_core::oidc::{IssuerDirectory, IssuerStrategy, OidcVerifier};
use tenancy_core::pipeline::{RateCheck, RateSubject, RequestPipeline};
use tenancy_core::plan::PlanCatalog;
use tenancy_core::problem::{CONTENT_TYPE, Problem};
use tenancy_core::quota::MemoryQuota;
use tenancy_core::resolve::{JwtStrategy, ResolverChain};
use tenancy_core::store::WriteError;
use tenancy_core::{Authorizer, Role, TenantContext, TenantError, UserId};
use tenancy_sqlx::DbError;

use crate::auth::{self, Sessions};
use crate::data::Data;

pub mod agents;
pub mod audit;
pub mod billing;
pub mod customers;
pub mod dashboard;
pub mod domains;
pub mod invitations;
pub mod members;
pub mod mfa;
pub mod openapi;
pub mod payments;
pub mod policies;
pub mod session;
pub mod settings;
pub mod tenant;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// The data layer.
    pub data: Data,
    /// Session tokens.
    pub sessions: Sessions,
    /// The plan catalog.
    pub plans: Arc<PlanCatalog>,
    /// The pipeline's hourly API-call limiter (in memory, or Redis).
    pub rate: Arc<dyn RateCheck>,
    /// The in-process quota engine, when it is the limiter (`/usage` reads it).
    pub quota: Option<Arc<MemoryQuota>>,
    /// Password hashing, off the async workers.
    pub hasher: crate::auth::Hasher,
    /// Sign-in limits per account and per client address.
    pub signin: tenancy_core::signin::SignInGuard,
    /// Proxies whose forwarding headers are believed.
    pub proxies: Arc<tenancy_core::client::TrustedProxies>,
    /// Tokens of the tenants' own identity providers.
    pub oidc: Arc<OidcVerifier>,
    /// Issuer → tenant, from the tenants' `identity` settings.
    pub issuers: IssuerDirectory,
    /// Metrics, health and the queue of audited refusals.
    pub observer: crate::observe::Observer,
    /// Verifies the billing side's signed callbacks (replays refused).
    pub billing: Arc<tenancy_core::webhook::WebhookVerifier>,
    /// Usage per calendar month (quotes), thresholds audited.
    pub monthly: tenancy_core::quota::monthly::MonthlyQuota,
    /// DNS TXT look-ups proving a tenant controls a custom domain.
    pub dns: Arc<dyn tenancy_core::ownership::TxtResolver>,
    /// Throttled sign-ins recently audited (tenant, email, client): one
    /// audit event per minute each, so a flood cannot flood the log.
    pub refusals_audited: moka::sync::Cache<String, ()>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("data", &self.data)
            .field("quota_in_memory", &self.quota.is_some())
            .finish_non_exhaustive()
    }
}

/// The whole application: public routes, and tenant routes behind
/// authentication and the tenancy pipeline (resolve from the token → load →
/// status gate → membership → plan → hourly API quota).
pub fn router(state: AppState) -> Router {
    // The tenant comes from the application's own token (its `tenant_id`
    // claim), or from the issuer of a tenant's identity provider; the caller
    // is authenticated once the tenant is known, by the application's
    // sessions or by that tenant's provider.
    let resolver = ResolverChain::new()
        .with(
            JwtStrategy::hs256(state.sessions.secret())
                .only_issuer(auth::ISSUER)
                .audience(&[auth::ACCESS_AUDIENCE]),
        )
        .with(IssuerStrategy::new(state.issuers.clone()));
    let authenticators = Authenticators::new()
        .with(Arc::new(state.sessions.clone()))
        .with(state.oidc.clone());
    let pipeline = RequestPipeline::new(resolver, state.data.store())
        .trust_proxies((*state.proxies).clone())
        .authenticate_with(Arc::new(authenticators))
        .require_membership(Arc::new(authorizer(&state)))
        .with_plans(state.plans.clone())
        .with_rate_limit_per(
            RateSubject::Client,
            state.rate.clone(),
            "api_calls_per_client",
        )
        .with_rate_limit_per(RateSubject::User, state.rate.clone(), "api_calls_per_user")
        .with_rate_limit(state.rate.clone(), "api_calls")
        .with_metrics(state.observer.tenants.clone())
        .with_audit(state.observer.audit.clone());
    let tenant_routes = Router::new()
        .route("/me", get(session::me))
        .route("/auth/logout", post(session::logout))
        .route(
            "/settings/security",
            get(mfa::security).put(mfa::set_security),
        )
        .route("/agents", get(agents::list).post(agents::create))
        .route("/agents/{id}", get(agents::get).delete(agents::deactivate))
        .route("/policies", get(policies::list).post(policies::create))
        .route("/policies/{id}", get(policies::get))
        .route("/policies/{id}/issue", post(policies::issue))
        .route("/policies/{id}/status", post(policies::change_status))
        .route("/payments", get(payments::list))
        .route("/payments/{id}/complete", post(payments::complete))
        .route("/payments/{id}/fail", post(payments::fail))
        .route("/payments/{id}/refund", post(payments::refund))
        .route("/commissions", get(payments::commissions))
        .route("/commissions/{id}/pay", post(payments::pay_commission))
        .route("/dashboard", get(dashboard::dashboard))
        .route("/health/tenant", get(crate::observe::tenant))
        .route("/invitations", post(invitations::invite))
        .route(
            "/invitations/{id}",
            axum::routing::delete(invitations::revoke),
        )
        .route("/settings", get(settings::get).patch(settings::patch))
        .route("/domains", get(domains::list).post(domains::create))
        .route("/domains/{domain}", axum::routing::delete(domains::remove))
        .route("/domains/{domain}/verify", post(domains::verify))
        .route("/members", get(members::list))
        .route(
            "/members/{user_id}",
            axum::routing::put(members::change_role).delete(members::remove),
        )
        .route("/members/{user_id}/suspend", post(members::suspend))
        .route("/members/{user_id}/resume", post(members::resume))
        .route(
            "/settings/password-policy",
            get(invitations::password_policy).put(invitations::set_password_policy),
        )
        .route("/usage", get(tenant::usage))
        .route("/export", get(tenant::export))
        .route("/plan", get(billing::get).post(billing::change))
        .route("/reports/data-access", get(tenant::data_access))
        .route("/reports/user-activity", get(tenant::user_activity))
        .route("/audit", get(audit::list))
        .route("/audit/verify", get(audit::verify))
        .route("/customers", get(customers::list).post(customers::create))
        .route(
            "/customers/{id}",
            get(customers::get)
                .patch(customers::update)
                .delete(customers::deactivate),
        )
        .route("/customers/{id}/forget", post(customers::forget))
        .route("/customers/{id}/export", get(customers::export))
        .layer(TenantLayer::new(pipeline));
    Router::new()
        .route("/health", get(health))
        .route("/health/live", get(crate::observe::live))
        .route("/health/ready", get(crate::observe::ready))
        .route("/metrics", get(crate::observe::metrics))
        .route("/openapi.json", get(openapi::document))
        .route("/auth/login", post(session::login))
        .route("/auth/refresh", post(session::refresh))
        .route("/auth/mfa/enroll", post(mfa::enroll))
        .route("/auth/mfa/confirm", post(mfa::confirm))
        .route("/invitations/accept", post(invitations::accept))
        .route("/billing/callback", post(billing::callback))
        .merge(tenant_routes)
        .with_state(state)
}

/// Who may act in a tenant: its members, and the tenant admins of its
/// parent (an insurance provider administering its regional offices), as
/// tenant admins there.
pub fn authorizer(state: &AppState) -> Authorizer {
    Authorizer::new(Arc::new(state.data.memberships()), state.data.store()).with_hierarchy(
        tenancy_core::HierarchyRule::Inherit {
            min_role: Role::Admin,
            max_depth: 1,
            cap: Role::Admin,
        },
    )
}

/// Liveness.
#[utoipa::path(get, path = "/health", responses((status = 200, description = "The server is up")))]
pub async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

/// An error response: RFC 9457 problem+json, the same shape as the tenancy
/// adapters' refusals. 5xx responses never carry internal details.
#[derive(Debug)]
pub struct ApiError(pub Box<Problem>);

impl ApiError {
    /// 400.
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self(Box::new(Problem::new(
            400,
            "app.bad-request",
            "Bad request",
            detail,
        )))
    }

    /// 401.
    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self(Box::new(Problem::new(
            401,
            "app.unauthorized",
            "Unauthorized",
            detail,
        )))
    }

    /// 403.
    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self(Box::new(Problem::new(
            403,
            "app.forbidden",
            "Forbidden",
            detail,
        )))
    }

    /// 404 — also what a record of another tenant, or one the caller may
    /// not see, looks like.
    pub fn not_found(what: &str) -> Self {
        Self(Box::new(Problem::new(
            404,
            "app.not-found",
            "Not found",
            format!("no such {what}"),
        )))
    }

    /// 409.
    pub fn conflict(detail: impl Into<String>) -> Self {
        Self(Box::new(Problem::new(
            409,
            "app.conflict",
            "Conflict",
            detail,
        )))
    }

    /// 410: the thing existed and was erased for good.
    pub fn gone(detail: impl Into<String>) -> Self {
        Self(Box::new(Problem::new(410, "app.gone", "Gone", detail)))
    }

    /// 422.
    pub fn invalid(detail: impl Into<String>) -> Self {
        Self(Box::new(Problem::new(
            422,
            "app.invalid",
            "Invalid input",
            detail,
        )))
    }

    /// 422 naming the offending field (`"field"` in the body).
    pub fn invalid_field(field: &str, detail: impl Into<String>) -> Self {
        let mut p = Problem::new(422, "app.invalid", "Invalid input", detail);
        p.extensions.insert("field".into(), field.into());
        Self(Box::new(p))
    }

    /// 503 with `Retry-After`: a dependency did not answer; nothing was changed.
    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self(Box::new(Problem::new(
            503,
            "app.unavailable",
            "Try again",
            detail,
        )))
    }

    /// 500: logged with the detail, answered without it.
    pub fn internal(detail: impl Into<String>) -> Self {
        let detail = detail.into();
        tracing::error!(error = %detail, "request failed");
        Self(Box::new(Problem::new(
            500,
            "app.internal",
            "Internal error",
            "the request failed; the error was logged",
        )))
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.0.title, self.0.status, self.0.detail)
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = http::StatusCode::from_u16(self.0.status)
            .unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (
            status,
            [(http::header::CONTENT_TYPE, CONTENT_TYPE)],
            self.0.to_json().to_string(),
        )
            .into_response();
        for (name, value) in &self.0.headers {
            if let (Ok(name), Ok(value)) = (
                http::HeaderName::from_bytes(name.as_bytes()),
                http::HeaderValue::from_str(value),
            ) {
                response.headers_mut().insert(name, value);
            }
        }
        if status == http::StatusCode::SERVICE_UNAVAILABLE
            && !response.headers().contains_key(http::header::RETRY_AFTER)
        {
            response.headers_mut().insert(
                http::header::RETRY_AFTER,
                http::HeaderValue::from_static("1"),
            );
        }
        response
    }
}

impl From<DbError> for ApiError {
    fn from(e: DbError) -> Self {
        match &e {
            DbError::Mismatch(m) => Self::forbidden(m.to_string()),
            DbError::Conflict(c) => Self::conflict(c.clone()),
            DbError::Sqlx(sqlx::Error::Database(d)) if d.is_unique_violation() => {
                Self::conflict("a record with the same unique value exists")
            }
            DbError::Sqlx(sqlx::Error::Database(d)) if d.is_foreign_key_violation() => {
                Self::invalid("a referenced record does not exist")
            }
            DbError::TenantMoved { .. } => Self(Box::new(Problem::new(
                503,
                "app.tenant-moved",
                "Try again",
                "the tenant's data moved while the request was in flight; retry",
            ))),
            _ if e.is_unavailable() => {
                tracing::warn!(error = %e, "database unavailable");
                Self::unavailable(
                    "the database is not answering; nothing was changed, retry shortly",
                )
            }
            _ => Self::internal(e.to_string()),
        }
    }
}

impl From<WriteError> for ApiError {
    fn from(e: WriteError) -> Self {
        match e.status() {
            500 => Self::internal(e.to_string()),
            status => Self(Box::new(Problem::new(
                status,
                e.code(),
                match status {
                    409 => "Conflict",
                    404 => "Not found",
                    _ => "Invalid change",
                },
                e.to_string(),
            ))),
        }
    }
}

impl From<LifecycleError> for ApiError {
    fn from(e: LifecycleError) -> Self {
        match e {
            LifecycleError::Write(w) => w.into(),
            LifecycleError::InvalidTransition { .. } | LifecycleError::GracePeriod { .. } => {
                Self::conflict(e.to_string())
            }
            LifecycleError::Invalid(_) => Self::invalid(e.to_string()),
            other => Self::internal(other.to_string()),
        }
    }
}

impl From<TenantError> for ApiError {
    fn from(e: TenantError) -> Self {
        Self(Box::new(Problem::from_error(&e, None)))
    }
}

impl From<tenancy_core::signin::SignInError> for ApiError {
    fn from(e: tenancy_core::signin::SignInError) -> Self {
        if let tenancy_core::signin::SignInError::Unavailable(cause) = &e {
            tracing::warn!(error = %cause, "sign-in attempts cannot be counted");
        }
        Self(Box::new(e.problem()))
    }
}

/// The client of a request: its address (behind trusted proxies, the one
/// they forwarded) and user agent — for routes outside the tenant pipeline.
#[derive(Debug, Clone, Default)]
pub struct Client(pub tenancy_core::RequestMeta);

impl FromRequestParts<AppState> for Client {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        tenancy_axum::request_meta(parts, &state.proxies)
            .map(Client)
            .map_err(ApiError::from)
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        DbError::from(e).into()
    }
}

/// `Json<T>` whose rejections (malformed JSON, a wrong field, a value
/// outside an enum) are problem+json: 400 for syntax, 422 for content.
#[derive(Debug, axum::extract::FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct Body<T>(pub T);

/// `Path<T>` whose rejection (e.g. a malformed id) is a problem+json 400.
#[derive(Debug, axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct PathOf<T>(pub T);

/// `Query<T>` whose rejection is a problem+json 400.
#[derive(Debug, axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct QueryOf<T>(pub T);

impl From<axum::extract::rejection::JsonRejection> for ApiError {
    fn from(r: axum::extract::rejection::JsonRejection) -> Self {
        use axum::extract::rejection::JsonRejection as J;
        match r {
            J::JsonDataError(e) => Self::invalid(e.body_text()),
            other => Self::bad_request(other.body_text()),
        }
    }
}

impl From<axum::extract::rejection::PathRejection> for ApiError {
    fn from(r: axum::extract::rejection::PathRejection) -> Self {
        Self::bad_request(r.body_text())
    }
}

impl From<axum::extract::rejection::QueryRejection> for ApiError {
    fn from(r: axum::extract::rejection::QueryRejection) -> Self {
        Self::bad_request(r.body_text())
    }
}

/// The caller of a tenant route: the tenant context the pipeline admitted,
/// the authenticated user and their role in the tenant.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The admitted tenant context.
    pub ctx: TenantContext,
    /// The user.
    pub user: UserId,
    /// Their role in this tenant.
    pub role: Role,
}

impl Caller {
    /// Whether the caller's role or membership grants `permission`
    /// (`resource:action`, e.g. [`SETTLE_PAYMENTS`]).
    pub fn can(&self, permission: &str) -> bool {
        self.ctx.actor().is_some_and(|a| a.can(permission))
    }
}

/// Completing and refunding payments: tenant admins (`*`) and members
/// granted it (the `finance` role).
pub const SETTLE_PAYMENTS: &str = "payments:settle";

/// Paying out commissions: tenant admins and the `finance` role.
pub const PAY_COMMISSIONS: &str = "commissions:pay";

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Response> {
        let Tenant(ctx) = Tenant::from_request_parts(parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        // The pipeline requires a membership on these routes, so an admitted
        // context always carries its actor; refuse rather than assume.
        let actor = ctx
            .actor()
            .cloned()
            .ok_or_else(|| ApiError::unauthorized("sign in first").into_response())?;
        Ok(Self {
            user: actor.user_id,
            role: actor.role,
            ctx,
        })
    }
}

/// `?limit=&offset=` on list endpoints.
#[derive(Debug, Clone, Copy, Deserialize, utoipa::IntoParams)]
pub struct PageQuery {
    /// Items per page (1–200, default 50).
    pub limit: Option<i64>,
    /// Items to skip (default 0).
    pub offset: Option<i64>,
}

impl PageQuery {
    /// `(limit, offset)`, validated.
    pub fn bounds(self) -> Result<(i64, i64), ApiError> {
        let limit = self.limit.unwrap_or(50);
        let offset = self.offset.unwrap_or(0);
        if !(1..=200).contains(&limit) {
            return Err(ApiError::bad_request("limit must be between 1 and 200"));
        }
        if offset < 0 {
            return Err(ApiError::bad_request("offset must not be negative"));
        }
        Ok((limit, offset))
    }
}

/// One page of a list.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Page<T> {
    /// The items.
    pub items: Vec<T>,
    /// The page size asked for.
    pub limit: i64,
    /// Items skipped.
    pub offset: i64,
    /// Items in the whole list.
    pub total: i64,
}

/// The stock resources the plans limit, and how each is counted in a tenant file.
pub const STOCK: [(&str, &str); 3] = [
    ("agents", "SELECT count(*) FROM agents WHERE active = TRUE"),
    (
        "customers",
        "SELECT count(*) FROM customers WHERE active = TRUE",
    ),
    (
        "policies",
        "SELECT count(*) FROM policies WHERE active = TRUE",
    ),
];

/// Percentages of a stock limit at which a `quota.threshold` event is
/// recorded in the tenant's audit log.
pub const THRESHOLDS: [u64; 3] = [80, 95, 100];

/// Refuses (403 `quota-exceeded`, the library's problem) when the tenant's
/// plan allows no more of `resource`, counted in the same write transaction
/// that will add one (it holds the file's write lock, so two requests cannot
/// both take the last slot). When the addition crosses 80, 95 or 100 % of
/// the limit, a `quota.threshold` event goes to the audit log in the same
/// transaction.
pub async fn check_stock(
    state: &AppState,
    caller: &Caller,
    tx: &mut crate::data::Tx,
    resource: &str,
) -> Result<(), ApiError> {
    let Some(limit) = caller
        .ctx
        .entitlements()
        .and_then(|e| e.stock_limit(resource))
    else {
        return Ok(());
    };
    let count_sql = STOCK
        .iter()
        .find(|(r, _)| *r == resource)
        .map(|(_, sql)| *sql)
        .ok_or_else(|| ApiError::internal(format!("no counter for {resource}")))?;
    // Count and insert must not interleave with another request's, or two
    // creates at the boundary both see room (READ COMMITTED). On PostgreSQL a
    // transaction-scoped advisory lock per tenant and resource queues them;
    // a SQLite write transaction already holds the file's write lock.
    if let crate::data::Tx::Postgres(t) = tx {
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
            .bind(format!(
                "insurance-agent.stock:{}:{resource}",
                caller.ctx.tenant_id()
            ))
            .execute(&mut **t)
            .await
            .map_err(tenancy_sqlx::DbError::from)?;
    }
    let used: i64 = crate::on!(tx, sqlx::query_scalar(count_sql), fetch_one)?;
    let used = u64::try_from(used).unwrap_or(0);
    state
        .observer
        .tenants
        .usage(caller.ctx.tenant_id(), resource, used, Some(limit));
    if used >= limit {
        state
            .observer
            .tenants
            .quota_refused(caller.ctx.tenant_id(), resource);
        return Err(TenantError::Quota(tenancy_core::quota::QuotaExceeded::new(
            caller.ctx.tenant_id(),
            resource,
            tenancy_core::plan::ResourceKind::Stock,
            used,
            limit,
            1,
        ))
        .into());
    }
    let pct = |n: u64| n.saturating_mul(100) / limit.max(1);
    if let Some(crossed) = THRESHOLDS
        .iter()
        .rev()
        .find(|t| pct(used) < **t && pct(used + 1) >= **t)
    {
        state
            .data
            .audit()
            .append(
                tx,
                tenancy_core::audit::AuditEvent::system(
                    caller.ctx.tenant_id(),
                    "quota",
                    "quota.threshold",
                    resource,
                )
                .with_details(serde_json::json!({
                    "percent": crossed, "used": used + 1, "limit": limit
                })),
            )
            .await?;
    }
    Ok(())
}

/// Counts one `resource` against the plan's calendar-month limit (in the
/// tenant's time zone): 403 `quota-exceeded` once the included amount and
/// the overage allowance are used; thresholds go to the audit log.
pub async fn record_monthly(
    state: &AppState,
    caller: &Caller,
    resource: &str,
) -> Result<(), ApiError> {
    match state.monthly.record(&caller.ctx, resource, 1).await {
        Ok(d) => {
            state.observer.tenants.usage(
                caller.ctx.tenant_id(),
                resource,
                d.used,
                (d.limit != u64::MAX).then_some(d.limit),
            );
            Ok(())
        }
        Err(tenancy_core::quota::QuotaError::Exceeded(e)) => {
            state
                .observer
                .tenants
                .quota_refused(caller.ctx.tenant_id(), resource);
            Err(TenantError::Quota(e).into())
        }
        Err(tenancy_core::quota::QuotaError::Backend(e)) => Err(TenantError::Store(e).into()),
        Err(e) => Err(ApiError::internal(e.to_string())),
    }
}

/// Refuses (403 `feature-not-in-plan`) unless the tenant's plan has `feature`.
pub fn require_feature(caller: &Caller, feature: &str) -> Result<(), ApiError> {
    let on = caller
        .ctx
        .entitlements()
        .and_then(|e| e.feature(feature))
        .and_then(tenancy_core::plan::FlagValue::as_bool)
        .unwrap_or(false);
    if on {
        Ok(())
    } else {
        Err(TenantError::FeatureDisabled {
            flag: feature.into(),
        }
        .into())
    }
}
