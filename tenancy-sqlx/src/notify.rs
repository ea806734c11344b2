//! Cross-process cache invalidation over PostgreSQL `LISTEN`/`NOTIFY`.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tenancy_core::store::{CachedStore, TenantStore};
use tenancy_core::{DomainName, TenantId, TenantSlug};
use tokio::task::JoinHandle;

use crate::DbError;

/// The channel the system schema's triggers notify on every tenant change.
pub const TENANT_CHANGED_CHANNEL: &str = "tenancy_tenant_changed";

/// Keeps a [`CachedStore`] in step with changes made by any process.
///
/// The system schema's triggers announce every insert, update and delete of a
/// tenant or domain; the listener drops the tenant's entries (by id, and every
/// old and new slug and domain, so cached misses go too). If the listening
/// connection drops, notifications may have been missed, so the whole cache
/// is cleared before listening resumes.
///
/// ```no_run
/// # async fn example(pool: sqlx::PgPool) -> Result<(), tenancy_sqlx::DbError> {
/// use std::sync::Arc;
/// use tenancy_core::store::CachedStore;
/// use tenancy_sqlx::{InvalidationListener, PgTenantStore};
///
/// let store = Arc::new(CachedStore::new(PgTenantStore::new(pool.clone())));
/// let _listener = InvalidationListener::start(&pool, store.clone()).await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct InvalidationListener {
    task: JoinHandle<()>,
}

struct Change {
    id: Option<TenantId>,
    slugs: Vec<TenantSlug>,
    domains: Vec<DomainName>,
}

fn parse(payload: &str) -> Option<Change> {
    let v: serde_json::Value = serde_json::from_str(payload).ok()?;
    let id = v.get("id")?.as_str()?.parse().ok();
    let strings = |key: &str| -> Vec<String> {
        v.get(key)
            .and_then(|a| a.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    Some(Change {
        id,
        slugs: strings("slugs")
            .iter()
            .filter_map(|s| s.parse().ok())
            .collect(),
        domains: strings("domains")
            .iter()
            .filter_map(|s| s.parse().ok())
            .collect(),
    })
}

impl InvalidationListener {
    /// Starts listening (on a dedicated connection made with `pool`'s
    /// options) and invalidating `cache`. The listener stops when dropped.
    pub async fn start<S>(pool: &PgPool, cache: Arc<CachedStore<S>>) -> Result<Self, DbError>
    where
        S: TenantStore + 'static,
    {
        let mut listener = PgListener::connect_with(pool).await?;
        listener.listen(TENANT_CHANGED_CHANNEL).await?;
        let task = tokio::spawn(async move {
            loop {
                match listener.try_recv().await {
                    Ok(Some(n)) => match parse(n.payload()) {
                        Some(change) => {
                            if let Some(id) = change.id {
                                cache.invalidate(id).await;
                                tracing::debug!(tenant.id = %id, "tenant changed; cache entries dropped");
                            }
                            for s in &change.slugs {
                                cache.invalidate_slug(s).await;
                            }
                            for d in &change.domains {
                                cache.invalidate_domain(d).await;
                            }
                        }
                        None => {
                            tracing::warn!(
                                payload = n.payload(),
                                "unreadable tenant change; clearing the cache"
                            );
                            cache.invalidate_all();
                        }
                    },
                    Ok(None) => {
                        tracing::warn!(
                            "tenant change listener lost its connection; clearing the cache"
                        );
                        cache.invalidate_all();
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "tenant change listener failed; clearing the cache and retrying");
                        cache.invalidate_all();
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        });
        Ok(Self { task })
    }

    /// Stops listening.
    pub fn stop(self) {
        self.task.abort();
    }
}

impl Drop for InvalidationListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}
