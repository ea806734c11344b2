//! Cross-process cache invalidation over PostgreSQL `LISTEN`/`NOTIFY`:
//! tenant records ([`InvalidationListener`]) and tenant keys
//! ([`KeyInvalidationListener`]).

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tenancy_core::crypto::keys::Keyring;
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
        let reset = cache.clone();
        let task = listen(
            pool,
            TENANT_CHANGED_CHANNEL,
            move |payload: String| {
                let cache = cache.clone();
                async move {
                    match parse(&payload) {
                        Some(change) => {
                            // Names first, the id last: once a reader sees
                            // the new record by id, no stale entry (a cached
                            // miss for a name just acquired) is left behind.
                            for s in &change.slugs {
                                cache.invalidate_slug(s).await;
                            }
                            for d in &change.domains {
                                cache.invalidate_domain(d).await;
                            }
                            if let Some(id) = change.id {
                                cache.invalidate(id).await;
                                tracing::debug!(tenant.id = %id, "tenant changed; cache entries dropped");
                            }
                        }
                        None => {
                            tracing::warn!(payload, "unreadable tenant change; clearing the cache");
                            cache.invalidate_all();
                        }
                    }
                }
            },
            move || {
                let cache = reset.clone();
                async move { cache.invalidate_all() }
            },
        )
        .await?;
        Ok(Self { task })
    }

    /// Stops listening.
    pub fn stop(self) {
        self.task.abort();
    }
}

/// Listens on `channel` with a dedicated connection and runs `on_payload`
/// for each notification. When the connection fails or drops,
/// notifications may have been missed: `on_reset` runs at once, and again
/// once a new connection is listening — anything cached between the two is
/// dropped too, so nothing loaded before the new LISTEN can stay stale.
async fn listen<P, PF, R, RF>(
    pool: &PgPool,
    channel: &'static str,
    on_payload: P,
    on_reset: R,
) -> Result<JoinHandle<()>, DbError>
where
    P: Fn(String) -> PF + Send + 'static,
    PF: std::future::Future<Output = ()> + Send,
    R: Fn() -> RF + Send + 'static,
    RF: std::future::Future<Output = ()> + Send,
{
    async fn connect(pool: &PgPool, channel: &str) -> Result<PgListener, sqlx::Error> {
        let mut listener = PgListener::connect_with(pool).await?;
        listener.listen(channel).await?;
        Ok(listener)
    }
    let mut listener = connect(pool, channel).await?;
    let pool = pool.clone();
    Ok(tokio::spawn(async move {
        loop {
            match listener.try_recv().await {
                Ok(Some(n)) => {
                    on_payload(n.payload().to_owned()).await;
                    continue;
                }
                Ok(None) => {
                    tracing::warn!(
                        channel,
                        "change listener lost its connection; clearing the cache"
                    );
                }
                Err(e) => {
                    tracing::warn!(channel, error = %e, "change listener failed; clearing the cache and reconnecting");
                }
            }
            on_reset().await;
            // A new connection, listening, before the second reset.
            listener = loop {
                match connect(&pool, channel).await {
                    Ok(l) => break l,
                    Err(e) => {
                        tracing::warn!(channel, error = %e, "change listener cannot reconnect; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            };
            on_reset().await;
        }
    }))
}

/// The channel the system schema's trigger notifies (payload: the tenant
/// id) whenever a tenant's wrapped data keys change: rotation, KEK
/// rotation, crypto-shredding.
pub const KEY_CHANGED_CHANNEL: &str = "tenancy_key_changed";

/// Keeps a [`Keyring`]'s key cache in step with key changes made by any
/// process — above all crypto-shredding: without it, another process keeps
/// decrypting with its cached data key until the cache's TTL (10 minutes by
/// default) runs out. On every change of a tenant's keys the tenant's
/// cached keys are evicted; if the listening connection drops, every cached
/// key is.
///
/// ```no_run
/// # async fn example(pool: sqlx::PgPool, keyring: std::sync::Arc<tenancy_core::crypto::keys::Keyring>)
/// #     -> Result<(), tenancy_sqlx::DbError> {
/// use tenancy_sqlx::KeyInvalidationListener;
///
/// let _listener = KeyInvalidationListener::start(&pool, keyring.clone()).await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct KeyInvalidationListener {
    task: JoinHandle<()>,
}

impl KeyInvalidationListener {
    /// Starts listening (on a dedicated connection made with `pool`'s
    /// options) and evicting from `keyring`. Stops when dropped.
    pub async fn start(pool: &PgPool, keyring: Arc<Keyring>) -> Result<Self, DbError> {
        let reset = keyring.clone();
        let task = listen(
            pool,
            KEY_CHANGED_CHANNEL,
            move |payload: String| {
                let keyring = keyring.clone();
                async move {
                    match payload.parse::<TenantId>() {
                        Ok(tenant) => {
                            keyring.evict(tenant).await;
                            tracing::debug!(tenant.id = %tenant, "tenant keys changed; cached keys dropped");
                        }
                        Err(_) => {
                            tracing::warn!(payload, "unreadable key change; dropping every cached key");
                            keyring.evict_all().await;
                        }
                    }
                }
            },
            move || {
                let keyring = reset.clone();
                async move { keyring.evict_all().await }
            },
        )
        .await?;
        Ok(Self { task })
    }

    /// Stops listening.
    pub fn stop(self) {
        self.task.abort();
    }
}

impl Drop for KeyInvalidationListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Drop for InvalidationListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}
