//! Database-per-tenant pools ([`DatabaseRouter`]).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use moka::future::Cache;
use sqlx::postgres::PgConnectOptions;
use sqlx::{Database, Pool, Postgres};
use tenancy_core::TenantId;

use crate::{PoolHygiene, TenantDb};

/// Database-per-tenant: a pool per tenant database, opened on demand and
/// kept in a bounded cache.
///
/// [`DatabaseRouter`] maps a [`Placement::Database`](tenancy_core::Placement)
/// name to a pool. Pools are created lazily (no connection until the first
/// transaction), cached in moka with
///
/// - a **maximum number of open pools** (least recently used evicted first),
/// - **idle eviction** (a pool not used for `idle_timeout` is dropped),
/// - a **connection budget**: every pool gets `budget / max_pools`
///   connections, so open pools never hold more than the budget.
///
/// An evicted pool is **closed**: it stops handing out connections, lets the
/// transactions in flight finish, then closes its connections. The next
/// transaction for that tenant opens a fresh pool.
///
/// ```no_run
/// use std::time::Duration;
/// use tenancy_sqlx::{DatabaseRouter, TenantDb};
///
/// # async fn f(seal: tenancy_sqlx::SealKey) -> Result<(), tenancy_sqlx::DbError> {
/// // Every tenant database holds the same seal key (migrate::install_seal).
/// let shared = TenantDb::connect("postgres://app@localhost/app", seal).await?;
/// let router = DatabaseRouter::new("postgres://app@localhost/postgres".parse()?)
///     .max_pools(200)
///     .connection_budget(400)
///     .idle_timeout(Duration::from_secs(300));
/// let db = shared.with_databases(router);
/// // db.begin(&ctx) now serves shared, schema and database tenants alike.
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct DatabaseRouter {
    base: PgConnectOptions,
    hygiene: PoolHygiene,
    pools: PoolCache<Postgres>,
}

impl std::fmt::Debug for DatabaseRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseRouter")
            .field("max_pools", &self.pools.max_pools)
            .field("connections_per_pool", &self.per_pool())
            .field("open_pools", &self.open_pools())
            .finish_non_exhaustive()
    }
}

impl DatabaseRouter {
    /// Routes to databases on the server of `base` (its database name is
    /// replaced by each tenant's). Defaults: 100 pools, a budget of 200
    /// connections (2 per pool), idle eviction after 10 minutes.
    pub fn new(base: PgConnectOptions) -> Self {
        Self {
            base,
            hygiene: PoolHygiene::Verify,
            pools: PoolCache::new(),
        }
    }

    /// The most pools kept open at once.
    pub fn max_pools(mut self, n: u64) -> Self {
        self.pools = self.pools.with_max_pools(n);
        self
    }

    /// The most connections all open pools may hold together.
    pub fn connection_budget(mut self, n: u32) -> Self {
        self.pools = self.pools.with_budget(n);
        self
    }

    /// How long an unused pool stays open.
    pub fn idle_timeout(mut self, d: Duration) -> Self {
        self.pools = self.pools.with_idle(d);
        self
    }

    /// Pool hygiene for the tenant pools (default [`PoolHygiene::Verify`]).
    pub fn hygiene(mut self, hygiene: PoolHygiene) -> Self {
        self.hygiene = hygiene;
        self.pools = self.pools.rebuilt();
        self
    }

    /// Connections each tenant pool may open: `budget / max_pools`, at least 1.
    pub fn per_pool(&self) -> u32 {
        self.pools.per_pool()
    }

    /// Pools currently open (approximate until maintenance runs, see
    /// [`DatabaseRouter::run_pending_tasks`]).
    pub fn open_pools(&self) -> u64 {
        self.pools.open()
    }

    /// Runs the cache's pending evictions now (closing evicted pools).
    pub async fn run_pending_tasks(&self) {
        self.pools.run_pending_tasks().await;
    }

    /// The pool for `database` (a name checked by `Placement`), opened lazily.
    pub(crate) async fn pool(&self, database: &str) -> Pool<Postgres> {
        let options = self.base.clone().database(database);
        let hygiene = self.hygiene;
        let opened = self
            .pools
            .get_or_open(database, None, move |per_pool| async move {
                Ok::<_, std::convert::Infallible>(
                    TenantDb::pool_options_with(hygiene)
                        .max_connections(per_pool)
                        .connect_lazy_with(options),
                )
            })
            .await;
        match opened {
            Ok(open) => open.pool,
            Err(never) => match *never {},
        }
    }
}

/// One open tenant pool and the tenant it was opened for (when the backend
/// pins a file or database to one tenant, as SQLite does).
pub(crate) struct OpenPool<DB: Database> {
    pub(crate) owner: Option<TenantId>,
    pub(crate) pool: Pool<DB>,
}

// Manual impls: derives would ask `DB: Clone`.
impl<DB: Database> Clone for OpenPool<DB> {
    fn clone(&self) -> Self {
        Self {
            owner: self.owner,
            pool: self.pool.clone(),
        }
    }
}

/// A bounded, idle-evicting cache of per-tenant pools that closes what it
/// evicts and splits a connection budget between them. Shared by the
/// PostgreSQL [`DatabaseRouter`] and the SQLite file-per-tenant backend.
pub(crate) struct PoolCache<DB: Database> {
    pub(crate) max_pools: u64,
    budget: u32,
    idle: Duration,
    /// Rebuilt by every builder method; clones share it.
    pools: Cache<String, OpenPool<DB>>,
}

impl<DB: Database> Clone for PoolCache<DB> {
    fn clone(&self) -> Self {
        Self {
            max_pools: self.max_pools,
            budget: self.budget,
            idle: self.idle,
            pools: self.pools.clone(),
        }
    }
}

impl<DB: Database> PoolCache<DB> {
    pub(crate) fn new() -> Self {
        let (max_pools, idle) = (100, Duration::from_secs(600));
        Self {
            max_pools,
            budget: 200,
            idle,
            pools: cache(max_pools, idle),
        }
    }

    pub(crate) fn with_max_pools(mut self, n: u64) -> Self {
        self.max_pools = n.max(1);
        self.rebuilt()
    }

    pub(crate) fn with_budget(mut self, n: u32) -> Self {
        self.budget = n.max(1);
        self.rebuilt()
    }

    pub(crate) fn with_idle(mut self, d: Duration) -> Self {
        self.idle = d;
        self.rebuilt()
    }

    pub(crate) fn rebuilt(mut self) -> Self {
        self.pools = cache(self.max_pools, self.idle);
        self
    }

    pub(crate) fn per_pool(&self) -> u32 {
        let per = u64::from(self.budget) / self.max_pools;
        u32::try_from(per).unwrap_or(u32::MAX).max(1)
    }

    pub(crate) fn open(&self) -> u64 {
        self.pools.entry_count()
    }

    pub(crate) async fn run_pending_tasks(&self) {
        self.pools.run_pending_tasks().await;
    }

    /// Removes the pool for `name` from the cache and closes it (waiting for
    /// its connections), if it was open.
    pub(crate) async fn close(&self, name: &str) {
        if let Some(open) = self.pools.remove(name).await {
            open.pool.close().await;
        }
    }

    /// The open pool for `name`, if any.
    pub(crate) async fn get(&self, name: &str) -> Option<OpenPool<DB>> {
        self.pools.get(name).await
    }

    /// The open pool for `name`, or one made by `open(per_pool)` (failures
    /// are not cached).
    pub(crate) async fn get_or_open<F, Fut, E>(
        &self,
        name: &str,
        owner: Option<TenantId>,
        open: F,
    ) -> Result<OpenPool<DB>, Arc<E>>
    where
        F: FnOnce(u32) -> Fut,
        Fut: Future<Output = Result<Pool<DB>, E>>,
        E: Send + Sync + 'static,
    {
        let per_pool = self.per_pool();
        self.pools
            .try_get_with(name.to_owned(), async move {
                Ok(OpenPool {
                    owner,
                    pool: open(per_pool).await?,
                })
            })
            .await
    }
}

/// The pool cache: bounded, idle-evicting, closing what it evicts.
fn cache<DB: Database>(max_pools: u64, idle: Duration) -> Cache<String, OpenPool<DB>> {
    Cache::builder()
        // Plain LRU: moka's default (TinyLFU) may refuse to admit a new
        // tenant's pool and close it right after its first use.
        .eviction_policy(moka::policy::EvictionPolicy::lru())
        .max_capacity(max_pools)
        .time_to_idle(idle)
        .async_eviction_listener(|name: Arc<String>, open: OpenPool<DB>, cause| {
            Box::pin(async move {
                tracing::debug!(database = %name, ?cause, "closing an evicted tenant pool");
                open.pool.close().await;
            })
        })
        .build()
}
