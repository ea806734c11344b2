//! Tenant-scoped transactions over diesel-async's deadpool pool.

use diesel_async::pooled_connection::AsyncDieselConnectionManager;
use diesel_async::pooled_connection::deadpool::{Object, Pool};
use diesel_async::{AnsiTransactionManager, AsyncPgConnection, TransactionManager};
use tenancy_core::TenantContext;
use tenancy_core::rls::SealKey;
use tracing::Instrument;

use crate::Error;

/// The deadpool pool type [`AsyncTenantPool`] wraps.
pub type AsyncPgPool = Pool<AsyncPgConnection>;

/// An async closure whose future can be named, so that
/// [`AsyncTenantPool::transaction_for`] can require it to be `Send` (the
/// pattern diesel-async's own `transaction` uses). Implemented for every
/// `async |conn| ...` closure and every closure returning a future.
pub trait TxFn<T, R>: AsyncFnOnce(T) -> R + FnOnce(T) -> <Self as TxFn<T, R>>::Fut {
    /// The closure's future.
    type Fut: Future<Output = R>;
}

impl<F, T, Fut, R> TxFn<T, R> for F
where
    F: AsyncFnOnce(T) -> R + FnOnce(T) -> Fut,
    Fut: Future<Output = R>,
{
    type Fut = Fut;
}

/// The one door to tenant data for async diesel code (diesel-async).
///
/// The same contract as [`TenantPool`](crate::TenantPool): one round trip
/// opens a transaction sealed to the tenant for that transaction only, the
/// closure's `Ok` commits and its `Err` rolls back. A connection left in a
/// transaction — the future was dropped mid-way, a statement was cancelled,
/// the rollback failed — is reported broken by diesel-async and discarded
/// by the pool instead of being reused.
///
/// ```no_run
/// use diesel::prelude::*;
/// use diesel_async::RunQueryDsl;
/// use tenancy_diesel::dsl::TenantScopedTable;
/// use tenancy_diesel::{AsyncTenantPool, Error};
///
/// diesel::table! { customers (tenant_id, id) { tenant_id -> Uuid, id -> Uuid, name -> Text, } }
/// tenancy_diesel::tenant_table!(customers);
///
/// # async fn run(ctx: tenancy_core::TenantContext) -> Result<(), Box<dyn std::error::Error>> {
/// let seal = tenancy_core::rls::SealKey::from_hex(&std::env::var("TENANCY_SEAL_KEY")?)?;
/// let pool = AsyncTenantPool::connect("postgres://app@localhost/app", 16, seal)?;
/// let names: Vec<String> = pool
///     .transaction_for(&ctx, async |conn| {
///         let query = customers::table.for_tenant(&ctx).select(customers::name);
///         Ok::<_, Error>(query.load(conn).await?)
///     })
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct AsyncTenantPool {
    pool: AsyncPgPool,
    seal: SealKey,
}

impl std::fmt::Debug for AsyncTenantPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let status = self.pool.status();
        f.debug_struct("AsyncTenantPool")
            .field("size", &status.size)
            .field("available", &status.available)
            .finish()
    }
}

impl AsyncTenantPool {
    /// Wraps a pool connected as the application role.
    pub fn new(pool: AsyncPgPool, seal: SealKey) -> Self {
        Self { pool, seal }
    }

    /// A pool of at most `max_size` connections to `url`.
    pub fn connect(url: &str, max_size: usize, seal: SealKey) -> Result<Self, Error> {
        let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new(url);
        let pool = Pool::builder(manager)
            .max_size(max_size)
            .build()
            .map_err(|e| Error::Pool(e.to_string()))?;
        Ok(Self::new(pool, seal))
    }

    /// The pool's size and available connections.
    /// Connections open, and idle in the pool.
    pub fn status(&self) -> (usize, usize) {
        let status = self.pool.status();
        (status.size, status.available)
    }

    /// Runs `f` in a transaction of `ctx`'s tenant; commits when it returns
    /// `Ok`, rolls back otherwise.
    pub async fn transaction_for<R, E, F>(&self, ctx: &TenantContext, f: F) -> Result<R, E>
    where
        for<'r> F: AsyncFnOnce(&'r mut AsyncPgConnection) -> Result<R, E>
            + TxFn<&'r mut AsyncPgConnection, Result<R, E>, Fut: Send>
            + Send,
        E: From<Error> + Send,
        R: Send,
    {
        let span = tracing::debug_span!("tenant.transaction", tenant.id = %ctx.tenant_id());
        async move {
            let mut conn = self.begin(ctx).await?;
            match f(&mut conn).await {
                Ok(value) => {
                    AnsiTransactionManager::commit_transaction(&mut *conn)
                        .await
                        .map_err(|e| E::from(Error::Database(e)))?;
                    Ok(value)
                }
                Err(e) => {
                    if let Err(rollback) =
                        AnsiTransactionManager::rollback_transaction(&mut *conn).await
                    {
                        tracing::warn!(error = %rollback, "rollback failed; the connection is discarded");
                    }
                    Err(e)
                }
            }
        }
        .instrument(span)
        .await
    }

    async fn begin(&self, ctx: &TenantContext) -> Result<Object<AsyncPgConnection>, Error> {
        let sql = tenancy_core::rls::begin_sql(ctx.tenant_id(), &self.seal);
        let mut attempt = 0;
        loop {
            let mut conn = self
                .pool
                .get()
                .await
                .map_err(|e| Error::Pool(e.to_string()))?;
            match AnsiTransactionManager::begin_transaction_sql(&mut *conn, &sql).await {
                Ok(()) => return Ok(conn),
                Err(e) => {
                    AnsiTransactionManager::transaction_manager_status_mut(&mut *conn)
                        .set_in_error();
                    attempt += 1;
                    if attempt >= 2 || !crate::is_closed_connection(&e) {
                        return Err(Error::Begin(e));
                    }
                    tracing::debug!(error = %e, "dead pooled connection; retrying BEGIN on another");
                }
            }
        }
    }
}
