//! Tenant-scoped transactions over diesel's r2d2 pool.

use diesel::connection::{AnsiTransactionManager, TransactionManager};
use diesel::pg::PgConnection;
use diesel::r2d2::{ConnectionManager, Pool, PooledConnection};
use tenancy_core::TenantContext;
use tenancy_core::rls::SealKey;

use crate::Error;

/// The r2d2 pool type [`TenantPool`] wraps.
pub type PgPool = Pool<ConnectionManager<PgConnection>>;

/// The one door to tenant data for synchronous diesel code.
///
/// [`TenantPool::transaction_for`] checks a connection out, opens a
/// transaction sealed to the tenant for that transaction only (`BEGIN; CALL
/// tenancy.seal(...)`, one round trip; SQL inside cannot re-scope it — see
/// [`tenancy_core::rls`]), runs your closure and
/// commits, or rolls back when it returns an error. There is no way to get
/// a connection without a tenant from it.
///
/// Pool hygiene does not depend on a hook: the setting dies with the
/// transaction, and a connection returned in the middle of one (a panic in
/// the closure, a failed rollback, a failed `BEGIN`) is discarded by r2d2
/// instead of being reused — diesel reports it broken.
///
/// ```no_run
/// use diesel::prelude::*;
/// use tenancy_diesel::dsl::TenantScopedTable;
/// use tenancy_diesel::{Error, TenantPool};
///
/// diesel::table! { customers (tenant_id, id) { tenant_id -> Uuid, id -> Uuid, name -> Text, } }
/// tenancy_diesel::tenant_table!(customers);
///
/// # fn run(ctx: tenancy_core::TenantContext) -> Result<(), Box<dyn std::error::Error>> {
/// let seal = tenancy_core::rls::SealKey::from_hex(&std::env::var("TENANCY_SEAL_KEY")?)?;
/// let pool = TenantPool::connect("postgres://app@localhost/app", seal)?;
/// let names: Vec<String> = pool.transaction_for(&ctx, |conn| {
///     Ok::<_, Error>(customers::table.for_tenant(&ctx).select(customers::name).load(conn)?)
/// })?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct TenantPool {
    pool: PgPool,
    seal: SealKey,
}

impl std::fmt::Debug for TenantPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.pool.state();
        f.debug_struct("TenantPool")
            .field("connections", &state.connections)
            .field("idle", &state.idle_connections)
            .finish()
    }
}

impl TenantPool {
    /// Wraps a pool connected as the application role (not a superuser, not
    /// `BYPASSRLS`, not the tables' owner), sealing its transactions with
    /// `seal` (the key in `tenancy.seal_key` of that database; see
    /// [`tenancy_core::rls::SealKey`]).
    pub fn new(pool: PgPool, seal: SealKey) -> Self {
        Self { pool, seal }
    }

    /// A pool with r2d2's defaults for `url`.
    pub fn connect(url: &str, seal: SealKey) -> Result<Self, Error> {
        let pool = Pool::builder()
            .build(ConnectionManager::new(url))
            .map_err(|e| Error::Pool(e.to_string()))?;
        Ok(Self::new(pool, seal))
    }

    /// Connections open and idle.
    pub fn state(&self) -> diesel::r2d2::State {
        self.pool.state()
    }

    /// Runs `f` in a transaction of `ctx`'s tenant; commits when it returns
    /// `Ok`, rolls back otherwise.
    pub fn transaction_for<R, E, F>(&self, ctx: &TenantContext, f: F) -> Result<R, E>
    where
        F: FnOnce(&mut PgConnection) -> Result<R, E>,
        E: From<Error>,
    {
        let span = tracing::debug_span!("tenant.transaction", tenant.id = %ctx.tenant_id());
        let _entered = span.enter();
        let mut conn = self.begin(ctx)?;
        match f(&mut conn) {
            Ok(value) => {
                AnsiTransactionManager::commit_transaction(&mut *conn)
                    .map_err(|e| E::from(Error::Database(e)))?;
                Ok(value)
            }
            Err(e) => {
                if let Err(rollback) = AnsiTransactionManager::rollback_transaction(&mut *conn) {
                    // diesel now reports the connection broken: r2d2 drops it.
                    tracing::warn!(error = %rollback, "rollback failed; the connection is discarded");
                }
                Err(e)
            }
        }
    }

    /// A connection inside a fresh tenant transaction. A connection whose
    /// `BEGIN` failed is marked broken (never reused); a closed connection
    /// is replaced once.
    fn begin(
        &self,
        ctx: &TenantContext,
    ) -> Result<PooledConnection<ConnectionManager<PgConnection>>, Error> {
        let sql = tenancy_core::rls::begin_sql(ctx.tenant_id(), &self.seal);
        let mut attempt = 0;
        loop {
            let mut conn = self.pool.get().map_err(|e| Error::Pool(e.to_string()))?;
            match AnsiTransactionManager::begin_transaction_sql(&mut *conn, &sql) {
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
