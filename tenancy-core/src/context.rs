//! [`TenantContext`] and how it travels: explicitly as a value, implicitly in a
//! tokio task-local scope, into spawned tasks, and into tracing spans.
//!
//! The explicit value is the primary API: every data-access function in the
//! adapters takes a `&TenantContext`. The task-local scope exists for code
//! that cannot thread a parameter through (logging helpers, deep library
//! callbacks). It is set by the web adapters around each request and by
//! [`scope`] wherever you need it.
//!
//! A `tokio::task_local!` value does **not** follow `tokio::spawn`: a task
//! spawned inside a scope starts with no tenant. Use [`spawn`] (or
//! [`TenantFutureExt::in_tenant`]) to carry the context across; plain
//! `tokio::spawn` gives a task in which [`current`] returns
//! [`TenantError::NoContext`] — it fails closed, it never inherits a stale
//! tenant from a previous task.

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;

use tokio::task::JoinHandle;
use tokio::task::futures::TaskLocalFuture;
use tracing::Instrument;
use tracing::instrument::Instrumented;

use crate::authorize::Actor;
use crate::flags::FlagSnapshot;
use crate::plan::Entitlements;
use crate::{Tenant, TenantError, TenantId, TenantScoped, TenantSlug};

tokio::task_local! {
    static CURRENT: TenantContext;
}

/// Metadata about the request that created a context, kept for audit records.
///
/// ```
/// # use tenancy_core::RequestMeta;
/// let meta = RequestMeta::default()
///     .with_ip("203.0.113.7".parse()?)
///     .with_user_agent("curl/8.5");
/// assert_eq!(meta.user_agent.as_deref(), Some("curl/8.5"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RequestMeta {
    /// The client's address, as the adapter determined it.
    pub ip: Option<IpAddr>,
    /// The `User-Agent` header.
    pub user_agent: Option<String>,
    /// A request id for correlating logs.
    pub request_id: Option<String>,
}

impl RequestMeta {
    /// Sets the client address.
    pub fn with_ip(mut self, ip: IpAddr) -> Self {
        self.ip = Some(ip);
        self
    }

    /// Sets the user agent.
    pub fn with_user_agent(mut self, ua: impl Into<String>) -> Self {
        self.user_agent = Some(ua.into());
        self
    }

    /// Sets the request id.
    pub fn with_request_id(mut self, id: impl Into<String>) -> Self {
        self.request_id = Some(id.into());
        self
    }
}

/// Everything known about "who is acting, for which tenant" during one unit of
/// work (a request, a job).
///
/// Immutable and cheap to clone (one reference count). The `with_*` methods
/// return a new context and leave the original untouched.
///
/// ```
/// use tenancy_core::{Tenant, TenantContext, TenantId};
///
/// let tenant = Tenant::new(TenantId::new_v4(), "acme".parse()?, "Acme");
/// let ctx = TenantContext::new(tenant);
/// assert_eq!(ctx.slug().as_str(), "acme");
/// assert!(ctx.actor().is_none());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct TenantContext {
    inner: Arc<Inner>,
}

#[derive(Debug, Clone)]
pub(crate) struct Inner {
    pub(crate) tenant: Arc<Tenant>,
    pub(crate) actor: Option<Actor>,
    pub(crate) request: RequestMeta,
    pub(crate) entitlements: Option<Arc<Entitlements>>,
    pub(crate) flags: FlagSnapshot,
}

impl TenantContext {
    /// A context for `tenant` with no actor and no request metadata.
    pub fn new(tenant: impl Into<Arc<Tenant>>) -> Self {
        Self {
            inner: Arc::new(Inner {
                tenant: tenant.into(),
                actor: None,
                request: RequestMeta::default(),
                entitlements: None,
                flags: FlagSnapshot::default(),
            }),
        }
    }

    fn with(&self, change: impl FnOnce(&mut Inner)) -> Self {
        self.clone().set(change)
    }

    /// Changes this context in place when it is not shared (no allocation),
    /// else a copy: what the request pipeline uses while assembling one.
    pub(crate) fn set(mut self, change: impl FnOnce(&mut Inner)) -> Self {
        change(Arc::make_mut(&mut self.inner));
        self
    }

    /// The same context acting as `actor`.
    pub fn with_actor(&self, actor: Actor) -> Self {
        self.with(|i| i.actor = Some(actor))
    }

    /// The same context with request metadata attached.
    pub fn with_request(&self, request: RequestMeta) -> Self {
        self.with(|i| i.request = request)
    }

    /// The same context with the tenant's plan entitlements (limits and
    /// feature defaults) attached, for the quota engine.
    pub fn with_entitlements(&self, entitlements: Arc<Entitlements>) -> Self {
        self.with(|i| i.entitlements = Some(entitlements))
    }

    /// The same context with an evaluated flag snapshot attached.
    pub fn with_flags(&self, flags: FlagSnapshot) -> Self {
        self.with(|i| i.flags = flags)
    }

    /// The tenant's plan entitlements, if attached.
    pub fn entitlements(&self) -> Option<&Arc<Entitlements>> {
        self.inner.entitlements.as_ref()
    }

    /// The flag snapshot (empty — every flag off — if none was attached).
    pub fn flags(&self) -> &FlagSnapshot {
        &self.inner.flags
    }

    /// Whether a boolean feature flag is on for this tenant (a map lookup).
    pub fn feature_enabled(&self, flag: &str) -> bool {
        self.inner.flags.enabled(flag)
    }

    /// [`TenantError::FeatureDisabled`] unless `flag` is on.
    pub fn require_feature(&self, flag: &str) -> Result<(), TenantError> {
        if self.feature_enabled(flag) {
            Ok(())
        } else {
            Err(TenantError::FeatureDisabled { flag: flag.into() })
        }
    }

    /// The tenant snapshot this context was built from.
    pub fn tenant(&self) -> &Tenant {
        &self.inner.tenant
    }

    /// The tenant snapshot as a shared pointer.
    pub fn tenant_arc(&self) -> &Arc<Tenant> {
        &self.inner.tenant
    }

    /// The tenant's id.
    pub fn tenant_id(&self) -> TenantId {
        self.inner.tenant.id
    }

    /// The tenant's slug.
    pub fn slug(&self) -> &TenantSlug {
        &self.inner.tenant.slug
    }

    /// The acting user, if the request was authenticated and authorized.
    pub fn actor(&self) -> Option<&Actor> {
        self.inner.actor.as_ref()
    }

    /// Request metadata for audit records.
    pub fn request(&self) -> &RequestMeta {
        &self.inner.request
    }

    /// Checks that `entity` belongs to this context's tenant.
    ///
    /// Shorthand for [`TenantScoped::ensure_tenant`].
    pub fn check<T: TenantScoped + ?Sized>(&self, entity: &T) -> Result<(), TenantError> {
        entity.ensure_tenant(self).map_err(TenantError::from)
    }

    /// A tracing span carrying `tenant.id` and `tenant.slug` (and `user.id`
    /// when an actor is present). [`scope`] enters it around the future.
    pub fn span(&self) -> tracing::Span {
        let user = self.actor().map(|a| a.user_id.as_str());
        tracing::info_span!(
            "tenant",
            tenant.id = %self.tenant_id(),
            tenant.slug = %self.slug(),
            user.id = user,
        )
    }

    /// Runs `fut` inside this tenant's task-local scope and span.
    ///
    /// Shorthand for [`scope`]`(self.clone(), fut)`.
    pub fn scope<F: Future>(&self, fut: F) -> InTenant<F> {
        scope(self.clone(), fut)
    }

    /// Spawns `fut` on the tokio runtime inside this tenant's scope.
    ///
    /// Shorthand for [`spawn`].
    pub fn spawn<F>(&self, fut: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        spawn(self.clone(), fut)
    }
}

/// A future running inside a tenant scope (see [`scope`]).
pub type InTenant<F> = TaskLocalFuture<TenantContext, Instrumented<F>>;

/// Runs `fut` with `ctx` as the task-local current tenant, inside the
/// context's tracing span.
///
/// ```
/// use tenancy_core::{current, scope, Tenant, TenantContext, TenantId};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let ctx = TenantContext::new(Tenant::new(TenantId::new_v4(), "acme".parse()?, "Acme"));
/// let seen = scope(ctx.clone(), async {
///     tokio::task::yield_now().await;
///     current().map(|c| c.tenant_id())
/// })
/// .await?;
/// assert_eq!(seen, ctx.tenant_id());
/// assert!(current().is_err()); // outside the scope there is no tenant
/// # Ok(()) }
/// ```
pub fn scope<F: Future>(ctx: TenantContext, fut: F) -> InTenant<F> {
    let span = ctx.span();
    CURRENT.scope(ctx, fut.instrument(span))
}

/// Runs the synchronous closure `f` with `ctx` as the current tenant.
///
/// ```
/// # use tenancy_core::{current, scope_sync, Tenant, TenantContext, TenantId};
/// let ctx = TenantContext::new(Tenant::new(TenantId::new_v4(), "acme".parse()?, "Acme"));
/// let id = scope_sync(ctx.clone(), || current().map(|c| c.tenant_id()))?;
/// assert_eq!(id, ctx.tenant_id());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn scope_sync<R>(ctx: TenantContext, f: impl FnOnce() -> R) -> R {
    let span = ctx.span();
    let _entered = span.enter();
    CURRENT.sync_scope(ctx, f)
}

/// The current tenant context, or [`TenantError::NoContext`] outside a scope.
pub fn current() -> Result<TenantContext, TenantError> {
    try_current().ok_or(TenantError::NoContext)
}

/// The current tenant context, or `None` outside a scope.
pub fn try_current() -> Option<TenantContext> {
    CURRENT.try_with(TenantContext::clone).ok()
}

/// Spawns `fut` on the tokio runtime inside `ctx`'s scope.
///
/// Unlike plain `tokio::spawn`, the task sees `ctx` through [`current`].
///
/// ```
/// # use tenancy_core::{current, spawn, Tenant, TenantContext, TenantId};
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let ctx = TenantContext::new(Tenant::new(TenantId::new_v4(), "acme".parse()?, "Acme"));
/// let id = spawn(ctx.clone(), async { current().map(|c| c.tenant_id()) }).await??;
/// assert_eq!(id, ctx.tenant_id());
/// # Ok(()) }
/// ```
pub fn spawn<F>(ctx: TenantContext, fut: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio::spawn(scope(ctx, fut))
}

/// Spawns `fut` inside the *current* tenant's scope.
///
/// Fails with [`TenantError::NoContext`] (and spawns nothing) outside a
/// scope, so a background task can never start without its tenant.
pub fn spawn_current<F>(fut: F) -> Result<JoinHandle<F::Output>, TenantError>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    Ok(spawn(current()?, fut))
}

/// Runs any future inside a tenant scope: `fut.in_tenant(ctx)`.
///
/// ```
/// # use tenancy_core::{current, Tenant, TenantContext, TenantFutureExt, TenantId};
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let ctx = TenantContext::new(Tenant::new(TenantId::new_v4(), "acme".parse()?, "Acme"));
/// let slug = async { current().map(|c| c.slug().to_string()) }.in_tenant(ctx).await?;
/// assert_eq!(slug, "acme");
/// # Ok(()) }
/// ```
pub trait TenantFutureExt: Future + Sized {
    /// Wraps `self` so it runs with `ctx` as the current tenant.
    fn in_tenant(self, ctx: TenantContext) -> InTenant<Self> {
        scope(ctx, self)
    }

    /// Wraps `self` so it runs inside the current tenant's scope.
    ///
    /// Fails with [`TenantError::NoContext`] outside a scope.
    fn in_current_tenant(self) -> Result<InTenant<Self>, TenantError> {
        Ok(scope(current()?, self))
    }
}

impl<F: Future> TenantFutureExt for F {}
