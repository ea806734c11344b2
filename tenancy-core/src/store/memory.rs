use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use async_trait::async_trait;

use super::{TenantStore, TenantUpdate, UniqueViolation, WriteError};
use crate::{DomainName, StoreError, Tenant, TenantId, TenantSlug};

/// A [`TenantStore`] held in memory, enforcing unique ids, slugs and domains.
///
/// ```
/// use tenancy_core::store::{InMemoryTenantStore, TenantStore};
/// use tenancy_core::{Tenant, TenantId};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let store = InMemoryTenantStore::new();
/// let acme = Tenant::new(TenantId::new_v4(), "acme".parse()?, "Acme")
///     .with_domain("portal.acme.test".parse()?);
/// store.insert(acme.clone())?;
///
/// assert!(store.by_domain(&"portal.acme.test".parse()?).await?.is_some());
/// // A second tenant cannot take the same slug.
/// assert!(store.insert(Tenant::new(TenantId::new_v4(), "acme".parse()?, "Other")).is_err());
/// # Ok(()) }
/// ```
#[derive(Debug, Default)]
pub struct InMemoryTenantStore {
    inner: RwLock<Maps>,
    outbox: Arc<crate::outbox::MemoryOutbox>,
}

#[derive(Debug, Default)]
struct Maps {
    by_id: HashMap<TenantId, Arc<Tenant>>,
    by_slug: HashMap<TenantSlug, TenantId>,
    by_domain: HashMap<DomainName, TenantId>,
}

impl Maps {
    fn check_unique(&self, tenant: &Tenant) -> Result<(), UniqueViolation> {
        if let Some(owner) = self.by_slug.get(&tenant.slug)
            && *owner != tenant.id
        {
            return Err(UniqueViolation::Slug(tenant.slug.clone()));
        }
        for d in &tenant.domains {
            if let Some(owner) = self.by_domain.get(d)
                && *owner != tenant.id
            {
                return Err(UniqueViolation::Domain(d.clone()));
            }
        }
        Ok(())
    }

    fn unindex(&mut self, id: TenantId) -> Option<Arc<Tenant>> {
        let old = self.by_id.remove(&id)?;
        self.by_slug.remove(&old.slug);
        for d in &old.domains {
            self.by_domain.remove(d);
        }
        Some(old)
    }

    fn index(&mut self, tenant: Tenant) {
        self.by_slug.insert(tenant.slug.clone(), tenant.id);
        for d in &tenant.domains {
            self.by_domain.insert(d.clone(), tenant.id);
        }
        self.by_id.insert(tenant.id, Arc::new(tenant));
    }
}

impl InMemoryTenantStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// A store holding `tenants`.
    pub fn with_tenants(
        tenants: impl IntoIterator<Item = Tenant>,
    ) -> Result<Self, UniqueViolation> {
        let store = Self::new();
        for t in tenants {
            store.insert(t)?;
        }
        Ok(store)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Maps> {
        self.inner.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Maps> {
        self.inner.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds a new tenant, stored at version 1.
    pub fn insert(&self, mut tenant: Tenant) -> Result<(), UniqueViolation> {
        let mut maps = self.write();
        if maps.by_id.contains_key(&tenant.id) {
            return Err(UniqueViolation::Id(tenant.id));
        }
        maps.check_unique(&tenant)?;
        tenant.version = 1;
        maps.index(tenant);
        Ok(())
    }

    /// Applies `update` to tenant `id` under the store's lock (see
    /// [`TenantWriter::update`](super::TenantWriter::update)).
    ///
    /// Remember to invalidate any [`super::CachedStore`] in front of this store.
    pub fn apply(&self, id: TenantId, update: &TenantUpdate) -> Result<Arc<Tenant>, WriteError> {
        let mut maps = self.write();
        let current = maps
            .by_id
            .get(&id)
            .cloned()
            .ok_or(WriteError::NotFound(id))?;
        let next = update.apply_to(&current, chrono::Utc::now())?;
        maps.check_unique(&next)?;
        for m in update.emitted() {
            m.validate().map_err(WriteError::Store)?;
        }
        maps.unindex(id);
        maps.index(next);
        // Under the store's lock: the messages exist exactly when the change does.
        for m in update.emitted() {
            self.outbox.enqueue(m.clone());
        }
        maps.by_id.get(&id).cloned().ok_or(WriteError::NotFound(id))
    }

    /// The outbox that [`TenantUpdate::emit`] writes to.
    pub fn outbox(&self) -> Arc<crate::outbox::MemoryOutbox> {
        self.outbox.clone()
    }

    /// Removes a tenant record entirely; returns it if it existed.
    pub fn remove(&self, id: TenantId) -> Option<Arc<Tenant>> {
        self.write().unindex(id)
    }

    /// How many tenants the store holds.
    pub fn len(&self) -> usize {
        self.read().by_id.len()
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[async_trait]
impl TenantStore for InMemoryTenantStore {
    async fn by_id(&self, id: TenantId) -> Result<Option<Arc<Tenant>>, StoreError> {
        Ok(self.read().by_id.get(&id).cloned())
    }

    async fn by_slug(&self, slug: &TenantSlug) -> Result<Option<Arc<Tenant>>, StoreError> {
        let maps = self.read();
        Ok(maps
            .by_slug
            .get(slug)
            .and_then(|id| maps.by_id.get(id))
            .cloned())
    }

    async fn by_domain(&self, domain: &DomainName) -> Result<Option<Arc<Tenant>>, StoreError> {
        let maps = self.read();
        Ok(maps
            .by_domain
            .get(domain)
            .and_then(|id| maps.by_id.get(id))
            .cloned())
    }

    fn peek(&self, key: &super::TenantRef) -> Option<Arc<Tenant>> {
        let maps = self.read();
        let id = match key {
            super::TenantRef::Id(id) => *id,
            super::TenantRef::Slug(slug) => *maps.by_slug.get(slug)?,
            super::TenantRef::Domain(domain) => *maps.by_domain.get(domain)?,
        };
        maps.by_id.get(&id).cloned()
    }
}

#[async_trait::async_trait]
impl super::TenantWriter for InMemoryTenantStore {
    async fn create(&self, tenant: &Tenant) -> Result<(), StoreError> {
        self.insert(tenant.clone()).map_err(StoreError::new)
    }

    async fn update(&self, id: TenantId, update: &TenantUpdate) -> Result<Arc<Tenant>, WriteError> {
        self.apply(id, update)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(slug: &str) -> Tenant {
        Tenant::new(TenantId::new_v4(), slug.parse().unwrap(), slug)
    }

    #[tokio::test]
    async fn update_reindexes_domains_and_bumps_the_version() {
        let store = InMemoryTenantStore::new();
        let t = tenant("old").with_domain("old.test".parse().unwrap());
        store.insert(t.clone()).unwrap();
        let next = store
            .apply(
                t.id,
                &TenantUpdate::new()
                    .remove_domain("old.test".parse().unwrap())
                    .add_domain("new.test".parse().unwrap()),
            )
            .unwrap();
        assert_eq!(next.version, 2);
        assert!(
            store
                .by_domain(&"old.test".parse().unwrap())
                .await
                .unwrap()
                .is_none()
        );
        assert_eq!(
            store
                .by_domain(&"new.test".parse().unwrap())
                .await
                .unwrap()
                .unwrap()
                .id,
            t.id
        );
    }

    #[test]
    fn uniqueness_enforced() {
        let store = InMemoryTenantStore::new();
        let a = tenant("a").with_domain("a.test".parse().unwrap());
        store.insert(a.clone()).unwrap();
        assert_eq!(store.insert(a.clone()), Err(UniqueViolation::Id(a.id)));
        assert!(matches!(
            store.insert(tenant("a")),
            Err(UniqueViolation::Slug(_))
        ));
        assert!(matches!(
            store.insert(tenant("b").with_domain("a.test".parse().unwrap())),
            Err(UniqueViolation::Domain(_))
        ));
        assert!(matches!(
            store.apply(tenant("c").id, &TenantUpdate::new().display_name("c")),
            Err(WriteError::NotFound(_))
        ));
        // A domain another tenant owns cannot be added.
        let b = tenant("b");
        store.insert(b.clone()).unwrap();
        assert!(matches!(
            store.apply(
                b.id,
                &TenantUpdate::new().add_domain("a.test".parse().unwrap())
            ),
            Err(WriteError::Unique(UniqueViolation::Domain(_)))
        ));
        assert_eq!(store.len(), 2);
    }
}
