//! Tenant resolution: from a request to a tenant.
//!
//! A [`Strategy`] looks at a framework-neutral [`RequestView`] (host, path,
//! headers) and names a tenant as a [`TenantRef`] — by id, slug or custom
//! domain — without any I/O. A [`ResolverChain`] runs its strategies in
//! priority order, loads what they name from a [`TenantStore`] and insists
//! that they agree.
#![doc = include_str!("../../docs/resolution.md")]

use std::fmt;
use std::sync::Arc;

use crate::store::{TenantRef, TenantStore};
use crate::{Tenant, TenantError};

mod custom_domain;
mod header;
#[cfg(feature = "jwt")]
mod jwt;
mod path;
mod static_tenant;
mod subdomain;

pub use custom_domain::CustomDomainStrategy;
pub use header::HeaderStrategy;
#[cfg(feature = "jwt")]
pub use jwt::{JwtKeyError, JwtStrategy};
pub use path::PathPrefixStrategy;
pub use static_tenant::StaticStrategy;
pub use subdomain::SubdomainStrategy;

/// The longest header value a strategy will look at (8 KiB).
pub const MAX_HEADER_LEN: usize = 8 * 1024;

/// What a header lookup found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderLookup<'a> {
    /// The header is absent.
    Absent,
    /// The header appears exactly once, with these raw bytes.
    One(&'a [u8]),
    /// The header appears more than once.
    Many,
}

/// The parts of an HTTP request that tenant resolution reads.
///
/// Each web adapter implements this for its request type, so the core depends
/// on no web framework and no particular `http` crate version.
pub trait RequestView {
    /// The raw `Host` (or URI authority host), if any.
    fn host(&self) -> Option<&[u8]>;
    /// The URI path, still percent-encoded (`/t/acme/policies`).
    fn path(&self) -> &str;
    /// The value(s) of the header `name` (ASCII, case-insensitive).
    fn header(&self, name: &str) -> HeaderLookup<'_>;
}

/// An owned [`RequestView`] for tests, jobs and benchmarks.
///
/// ```
/// use tenancy_core::resolve::{HeaderLookup, RequestView, SimpleRequest};
///
/// let req = SimpleRequest::new("/policies")
///     .with_host("acme.example.com")
///     .with_header("X-Tenant-ID", "67e55044-10b1-426f-9247-bb680e5fe0c8");
/// assert_eq!(req.header("x-tenant-id"), HeaderLookup::One(b"67e55044-10b1-426f-9247-bb680e5fe0c8"));
/// ```
#[derive(Debug, Clone, Default)]
pub struct SimpleRequest {
    host: Option<Vec<u8>>,
    path: String,
    headers: Vec<(String, Vec<u8>)>,
}

impl SimpleRequest {
    /// A request for `path` with no host and no headers.
    pub fn new(path: impl Into<String>) -> Self {
        Self {
            host: None,
            path: path.into(),
            headers: Vec::new(),
        }
    }

    /// Sets the host.
    pub fn with_host(mut self, host: impl Into<Vec<u8>>) -> Self {
        self.host = Some(host.into());
        self
    }

    /// Adds a header (repeat the call to send it twice).
    pub fn with_header(mut self, name: &str, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push((name.to_ascii_lowercase(), value.into()));
        self
    }
}

impl RequestView for SimpleRequest {
    fn host(&self) -> Option<&[u8]> {
        self.host.as_deref()
    }

    fn path(&self) -> &str {
        &self.path
    }

    fn header(&self, name: &str) -> HeaderLookup<'_> {
        let mut found = HeaderLookup::Absent;
        for (n, v) in &self.headers {
            if n.eq_ignore_ascii_case(name) {
                if found != HeaderLookup::Absent {
                    return HeaderLookup::Many;
                }
                found = HeaderLookup::One(v);
            }
        }
        found
    }
}

/// One way of naming a tenant in a request.
///
/// `identify` does no I/O: it returns `Ok(None)` when the request does not
/// use this strategy, `Ok(Some(..))` when it names a tenant, and `Err` when
/// the request tries to name one but the input is malformed (fail closed: a
/// malformed tenant header is an error, never a reason to fall back to
/// another strategy).
pub trait Strategy: Send + Sync + fmt::Debug {
    /// A short name for logs and [`TenantError::Conflict`] (`"header"`, `"subdomain"`).
    fn name(&self) -> &'static str;

    /// The tenant this request names, if it uses this strategy.
    fn identify(&self, req: &dyn RequestView) -> Result<Option<TenantRef>, TenantError>;
}

/// The outcome of [`ResolverChain::resolve`].
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The tenant, as loaded from the store (not yet gated).
    pub tenant: Arc<Tenant>,
    /// The strategy that named it first (`"fallback"` for the chain's fallback).
    pub strategy: &'static str,
}

/// Strategies in priority order, plus an optional fallback tenant.
///
/// Every strategy is consulted; when two name different tenants the result
/// is [`TenantError::Conflict`] — never a silent pick. A tenant named by id or
/// slug that does not exist is [`TenantError::NotFound`]; a custom domain that
/// is not registered simply does not match. When no strategy matches, the
/// fallback (if any) is used, else [`TenantError::Missing`].
///
/// ```
/// use tenancy_core::resolve::{HeaderStrategy, ResolverChain, SimpleRequest, SubdomainStrategy};
/// use tenancy_core::store::InMemoryTenantStore;
/// use tenancy_core::{Tenant, TenantError, TenantId};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let acme = Tenant::new(TenantId::new_v4(), "acme".parse()?, "Acme");
/// let globex = Tenant::new(TenantId::new_v4(), "globex".parse()?, "Globex");
/// let store = InMemoryTenantStore::with_tenants([acme.clone(), globex.clone()])?;
///
/// let chain = ResolverChain::new()
///     .with(HeaderStrategy::tenant_id())
///     .with(SubdomainStrategy::new("example.com".parse()?));
///
/// let req = SimpleRequest::new("/").with_host("acme.example.com");
/// assert_eq!(chain.resolve(&req, &store).await?.tenant.id, acme.id);
///
/// // Header and subdomain disagree: refused.
/// let spoof = req.with_header("x-tenant-id", globex.id.to_string());
/// assert!(matches!(chain.resolve(&spoof, &store).await, Err(TenantError::Conflict { .. })));
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default)]
pub struct ResolverChain {
    strategies: Vec<Arc<dyn Strategy>>,
    fallback: Option<TenantRef>,
}

impl ResolverChain {
    /// An empty chain (resolves nothing until strategies are added).
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a strategy (lower priority than those already added).
    pub fn with(mut self, strategy: impl Strategy + 'static) -> Self {
        self.strategies.push(Arc::new(strategy));
        self
    }

    /// Appends a shared strategy.
    pub fn with_shared(mut self, strategy: Arc<dyn Strategy>) -> Self {
        self.strategies.push(strategy);
        self
    }

    /// The tenant to use when no strategy matches (single-tenant mode, a
    /// default tenant). Unlike [`StaticStrategy`], a fallback never conflicts.
    pub fn fallback(mut self, tenant: TenantRef) -> Self {
        self.fallback = Some(tenant);
        self
    }

    /// The strategies, in priority order.
    pub fn strategies(&self) -> &[Arc<dyn Strategy>] {
        &self.strategies
    }

    /// Runs every strategy and returns what each named, in priority order,
    /// without loading anything.
    pub fn identify(
        &self,
        req: &dyn RequestView,
    ) -> Result<Vec<(&'static str, TenantRef)>, TenantError> {
        let mut out = Vec::new();
        for s in &self.strategies {
            if let Some(r) = s.identify(req)? {
                out.push((s.name(), r));
            }
        }
        Ok(out)
    }

    /// Identifies and loads the request's tenant, checking that every
    /// matching strategy agrees.
    pub async fn resolve<S: TenantStore + ?Sized>(
        &self,
        req: &(dyn RequestView + Sync),
        store: &S,
    ) -> Result<Resolved, TenantError> {
        let mut found: Option<Found> = None;
        for s in &self.strategies {
            let Some(named) = s.identify(req)? else {
                continue;
            };
            if found.as_ref().is_some_and(|(_, _, r)| *r == named) {
                continue;
            }
            let loaded = named.load(store).await?;
            merge(&mut found, loaded, s.name(), named)?;
        }
        if let Some((tenant, strategy, _)) = found {
            return Ok(Resolved { tenant, strategy });
        }
        match &self.fallback {
            Some(r) => fallback(r.load(store).await?),
            None => Err(TenantError::Missing),
        }
    }

    /// [`ResolverChain::resolve`] without waiting: `None` when a tenant
    /// would have to be loaded (the store's [`TenantStore::peek`] did not
    /// answer), otherwise exactly what `resolve` would return.
    ///
    /// ```
    /// use tenancy_core::resolve::{HeaderStrategy, ResolverChain, SimpleRequest};
    /// use tenancy_core::store::{CachedStore, InMemoryTenantStore};
    /// use tenancy_core::{Tenant, TenantId};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let acme = Tenant::new(TenantId::new_v4(), "acme".parse()?, "Acme");
    /// let store = CachedStore::new(InMemoryTenantStore::with_tenants([acme.clone()])?);
    /// let chain = ResolverChain::new().with(HeaderStrategy::tenant_id());
    /// let req = SimpleRequest::new("/").with_header("x-tenant-id", acme.id.to_string());
    /// assert!(chain.resolve_now(&req, &store).is_none()); // not cached yet
    /// chain.resolve(&req, &store).await?;
    /// assert_eq!(chain.resolve_now(&req, &store).unwrap()?.tenant.id, acme.id);
    /// # Ok(()) }
    /// ```
    pub fn resolve_now<S: TenantStore + ?Sized>(
        &self,
        req: &(dyn RequestView + Sync),
        store: &S,
    ) -> Option<Result<Resolved, TenantError>> {
        let mut found: Option<Found> = None;
        for s in &self.strategies {
            let named = match s.identify(req) {
                Ok(Some(named)) => named,
                Ok(None) => continue,
                Err(e) => return Some(Err(e)),
            };
            if found.as_ref().is_some_and(|(_, _, r)| *r == named) {
                continue;
            }
            let loaded = store.peek(&named)?;
            if let Err(e) = merge(&mut found, Some(loaded), s.name(), named) {
                return Some(Err(e));
            }
        }
        if let Some((tenant, strategy, _)) = found {
            return Some(Ok(Resolved { tenant, strategy }));
        }
        Some(match &self.fallback {
            Some(r) => fallback(Some(store.peek(r)?)),
            None => Err(TenantError::Missing),
        })
    }
}

/// The tenant found so far, the strategy that named it, and how.
type Found = (Arc<Tenant>, &'static str, TenantRef);

/// Adds what strategy `name` found for `named` to `found`: a tenant named by
/// id or slug must exist, an unknown domain simply does not match, and two
/// strategies naming different tenants is a conflict.
fn merge(
    found: &mut Option<Found>,
    loaded: Option<Arc<Tenant>>,
    name: &'static str,
    named: TenantRef,
) -> Result<(), TenantError> {
    let Some(tenant) = loaded else {
        if matches!(named, TenantRef::Domain(_)) {
            return Ok(());
        }
        return Err(TenantError::NotFound);
    };
    match found {
        None => *found = Some((tenant, name, named)),
        Some((first, first_name, _)) if first.id != tenant.id => {
            return Err(TenantError::Conflict {
                first: first_name,
                second: name,
            });
        }
        Some(_) => {}
    }
    Ok(())
}

fn fallback(loaded: Option<Arc<Tenant>>) -> Result<Resolved, TenantError> {
    match loaded {
        Some(tenant) => Ok(Resolved {
            tenant,
            strategy: "fallback",
        }),
        None => Err(TenantError::NotFound),
    }
}

/// Reads a header that must appear at most once.
pub(crate) fn single_header<'a>(
    req: &'a dyn RequestView,
    name: &str,
) -> Result<Option<&'a [u8]>, TenantError> {
    match req.header(name) {
        HeaderLookup::Absent => Ok(None),
        HeaderLookup::Many => Err(TenantError::DuplicateHeader {
            header: name.into(),
        }),
        HeaderLookup::One(v) => Ok(Some(v)),
    }
}

/// Whether a strategy names the tenant by id or by slug.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum NameKind {
    /// The value is a [`crate::TenantId`].
    #[default]
    Id,
    /// The value is a [`crate::TenantSlug`].
    Slug,
}

impl NameKind {
    pub(crate) fn parse(self, bytes: &[u8]) -> Result<TenantRef, TenantError> {
        Ok(match self {
            NameKind::Id => TenantRef::Id(crate::TenantId::parse_bytes(bytes)?),
            NameKind::Slug => TenantRef::Slug(crate::TenantSlug::parse_bytes(bytes)?),
        })
    }
}
