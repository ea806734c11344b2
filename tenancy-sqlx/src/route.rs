//! Database-per-tenant pools ([`DatabaseRouter`]).

use std::sync::Arc;
use std::time::Duration;

use moka::future::Cache;
use sqlx::PgPool;
use sqlx::postgres::PgConnectOptions;

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
/// # async fn f() -> Result<(), tenancy_sqlx::DbError> {
/// let shared = TenantDb::connect("postgres://app@localhost/app").await?;
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
    max_pools: u64,
    budget: u32,
    idle: Duration,
    hygiene: PoolHygiene,
    /// Rebuilt by every builder method; clones share it.
    pools: Cache<String, PgPool>,
}

impl std::fmt::Debug for DatabaseRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseRouter")
            .field("max_pools", &self.max_pools)
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
        let (max_pools, idle) = (100, Duration::from_secs(600));
        Self {
            base,
            max_pools,
            budget: 200,
            idle,
            hygiene: PoolHygiene::Verify,
            pools: cache(max_pools, idle),
        }
    }

    /// The most pools kept open at once.
    pub fn max_pools(mut self, n: u64) -> Self {
        self.max_pools = n.max(1);
        self.pools = cache(self.max_pools, self.idle);
        self
    }

    /// The most connections all open pools may hold together.
    pub fn connection_budget(mut self, n: u32) -> Self {
        self.budget = n.max(1);
        self.pools = cache(self.max_pools, self.idle);
        self
    }

    /// How long an unused pool stays open.
    pub fn idle_timeout(mut self, d: Duration) -> Self {
        self.idle = d;
        self.pools = cache(self.max_pools, self.idle);
        self
    }

    /// Pool hygiene for the tenant pools (default [`PoolHygiene::Verify`]).
    pub fn hygiene(mut self, hygiene: PoolHygiene) -> Self {
        self.hygiene = hygiene;
        self.pools = cache(self.max_pools, self.idle);
        self
    }

    /// Connections each tenant pool may open: `budget / max_pools`, at least 1.
    pub fn per_pool(&self) -> u32 {
        let per = u64::from(self.budget) / self.max_pools;
        u32::try_from(per).unwrap_or(u32::MAX).max(1)
    }

    /// Pools currently open (approximate until maintenance runs, see
    /// [`DatabaseRouter::run_pending_tasks`]).
    pub fn open_pools(&self) -> u64 {
        self.pools.entry_count()
    }

    /// Runs the cache's pending evictions now (closing evicted pools).
    pub async fn run_pending_tasks(&self) {
        self.pools.run_pending_tasks().await;
    }

    /// The pool for `database` (a name checked by `Placement`), opened lazily.
    pub(crate) async fn pool(&self, database: &str) -> PgPool {
        let options = self.base.clone().database(database);
        let per_pool = self.per_pool();
        let hygiene = self.hygiene;
        self.pools
            .get_with(database.to_owned(), async move {
                TenantDb::pool_options_with(hygiene)
                    .max_connections(per_pool)
                    .connect_lazy_with(options)
            })
            .await
    }
}

/// The pool cache: bounded, idle-evicting, closing what it evicts.
fn cache(max_pools: u64, idle: Duration) -> Cache<String, PgPool> {
    Cache::builder()
        .max_capacity(max_pools)
        .time_to_idle(idle)
        .async_eviction_listener(|name: Arc<String>, pool: PgPool, cause| {
            Box::pin(async move {
                tracing::debug!(database = %name, ?cause, "closing an evicted tenant pool");
                pool.close().await;
            })
        })
        .build()
}
