//! Tenant stores: where tenant records come from.
//!
//! [`TenantStore`] is the lookup trait (by id, slug and custom domain) that
//! data adapters implement (`tenancy-sqlx` ships a PostgreSQL one).
//! [`InMemoryTenantStore`] serves tests, examples and static configurations.
//! [`CachedStore`] wraps any store with a moka cache: TTL, capacity, short
//! negative caching of misses, single-flight loading and explicit invalidation.
//!
//! Stores return records exactly as stored, deleted and suspended tenants
//! included: deciding whether a tenant may serve a request is the job of the
//! status gate ([`crate::gate`]), so that every store behaves the same.

use std::sync::Arc;

use async_trait::async_trait;

use crate::{DomainName, StoreError, Tenant, TenantId, TenantSlug};

mod cached;
mod change;
mod memory;

pub use cached::{CachedStore, CachedStoreBuilder};
pub use change::{StatusChange, TenantChange, TenantUpdate, WriteError};
pub use memory::InMemoryTenantStore;

/// Looks up tenant records.
///
/// Implementations return `Ok(None)` for a tenant that does not exist and
/// `Err` only when the backend failed.
#[async_trait]
pub trait TenantStore: Send + Sync {
    /// The tenant with id `id`.
    async fn by_id(&self, id: TenantId) -> Result<Option<Arc<Tenant>>, StoreError>;

    /// The tenant with slug `slug`.
    async fn by_slug(&self, slug: &TenantSlug) -> Result<Option<Arc<Tenant>>, StoreError>;

    /// The tenant that owns the custom domain `domain`.
    async fn by_domain(&self, domain: &DomainName) -> Result<Option<Arc<Tenant>>, StoreError>;

    /// The tenant `key` names, when the store can tell **without waiting**
    /// (a cache hit, an in-memory map). `None` means "ask
    /// [`TenantRef::load`]" — never "no such tenant". The request pipeline
    /// uses it for its synchronous fast path
    /// ([`RequestPipeline::admit_now`](crate::pipeline::RequestPipeline::admit_now));
    /// the default never answers.
    fn peek(&self, key: &TenantRef) -> Option<Arc<Tenant>> {
        let _ = key;
        None
    }
}

/// Creates and changes tenant records (lifecycle, provisioning, settings).
/// The request path reads through [`TenantStore`].
///
/// There is no whole-record save: a change names the fields it touches
/// ([`TenantUpdate`]) and the store applies it to the record as stored,
/// atomically, bumping [`Tenant::version`]; an update that insists on the
/// version it read is refused with [`WriteError::Conflict`] when anyone wrote
/// since. Status changes only through
/// [`Lifecycle`](crate::lifecycle::Lifecycle).
#[async_trait]
pub trait TenantWriter: TenantStore {
    /// Adds a new tenant, stored at version 1; an existing id, slug or
    /// domain is an error.
    async fn create(&self, tenant: &Tenant) -> Result<(), StoreError>;

    /// Applies `update` to the stored record of tenant `id` atomically and
    /// returns the record as now stored.
    async fn update(&self, id: TenantId, update: &TenantUpdate) -> Result<Arc<Tenant>, WriteError>;
}

#[async_trait]
impl<T: TenantStore + ?Sized> TenantStore for Arc<T> {
    async fn by_id(&self, id: TenantId) -> Result<Option<Arc<Tenant>>, StoreError> {
        (**self).by_id(id).await
    }

    async fn by_slug(&self, slug: &TenantSlug) -> Result<Option<Arc<Tenant>>, StoreError> {
        (**self).by_slug(slug).await
    }

    async fn by_domain(&self, domain: &DomainName) -> Result<Option<Arc<Tenant>>, StoreError> {
        (**self).by_domain(domain).await
    }

    fn peek(&self, key: &TenantRef) -> Option<Arc<Tenant>> {
        (**self).peek(key)
    }
}

/// How a request names a tenant before it is loaded.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TenantRef {
    /// By id (header, token claim, static configuration).
    Id(TenantId),
    /// By slug (subdomain, path prefix).
    Slug(TenantSlug),
    /// By custom domain.
    Domain(DomainName),
}

impl TenantRef {
    /// Loads the referenced tenant from `store`.
    ///
    /// ```
    /// use tenancy_core::store::{InMemoryTenantStore, TenantRef};
    /// use tenancy_core::{Tenant, TenantId};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let store = InMemoryTenantStore::new();
    /// store.insert(Tenant::new(TenantId::new_v4(), "acme".parse()?, "Acme"))?;
    /// let found = TenantRef::Slug("acme".parse()?).load(&store).await?;
    /// assert_eq!(found.map(|t| t.display_name.clone()).as_deref(), Some("Acme"));
    /// # Ok(()) }
    /// ```
    pub async fn load<S: TenantStore + ?Sized>(
        &self,
        store: &S,
    ) -> Result<Option<Arc<Tenant>>, StoreError> {
        match self {
            TenantRef::Id(id) => store.by_id(*id).await,
            TenantRef::Slug(slug) => store.by_slug(slug).await,
            TenantRef::Domain(domain) => store.by_domain(domain).await,
        }
    }
}

/// A write to an in-memory store would break a uniqueness rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UniqueViolation {
    /// Another tenant already has this id.
    #[error("a tenant with id {0} already exists")]
    Id(TenantId),
    /// Another tenant already has this slug.
    #[error("slug {0} is taken by another tenant")]
    Slug(TenantSlug),
    /// Another tenant already owns this custom domain.
    #[error("domain {0} belongs to another tenant")]
    Domain(DomainName),
    /// No tenant with this id exists (on update).
    #[error("no tenant with id {0}")]
    Missing(TenantId),
}
