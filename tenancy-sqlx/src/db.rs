//! The one door to tenant data: [`TenantDb::begin`] → [`TenantTx`].

use std::ops::{Deref, DerefMut};

use sqlx::postgres::{PgArguments, PgConnection, PgPool, PgPoolOptions, PgQueryResult};
use sqlx::query::Query;
use sqlx::{Postgres, Transaction};
use std::sync::Arc;

use tenancy_core::quota::{QuotaEvents, ThresholdCrossed, TracingEvents};
use tenancy_core::{Placement, TenantContext, TenantId, TenantScoped};
use tracing::Instrument;

use crate::DbError;

pub use tenancy_core::rls::TENANT_SETTING;

/// Whether pooled connections are checked for a leaked tenant setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum PoolHygiene {
    /// Check every new connection (`after_connect`) and every connection
    /// returned to the pool (`after_release`); a connection that carries
    /// `app.tenant_id` outside a transaction, or whose `search_path` was
    /// changed at session level (a plain `SET search_path` — it outlives
    /// the transaction and would point the next tenant's unqualified names
    /// at another schema), is closed, never reused. The release check costs
    /// one round trip, off the releasing task's path.
    #[default]
    Verify,
    /// No checks. Transaction-scoped settings cannot leak by themselves; the
    /// checks only guard against application code that sets the tenant at
    /// session level by hand.
    Off,
}

/// The SQLSTATE `tenancy.enter` raises for a tenant that was moved.
const MOVED_SQLSTATE: &str = "TN001";

const CHECK_SQL: &str =
    "SELECT coalesce(current_setting('app.tenant_id', true), ''), current_setting('search_path')";

/// What the hygiene checks read from a connection outside any transaction.
struct Session {
    /// The tenant setting, if any (there should be none).
    tenant: Option<String>,
    /// The session's `search_path`.
    search_path: String,
}

/// Reads [`Session`]. Simple-query protocol: one round trip, no prepared
/// statement (so it also works through pgbouncer in transaction mode).
async fn session_state(conn: &mut PgConnection) -> Result<Session, sqlx::Error> {
    use sqlx::{Executor, Row};
    // A bare &str has no arguments: sqlx sends it with the simple protocol.
    let row = conn.fetch_one(CHECK_SQL).await?;
    let tenant: String = row.try_get(0)?;
    Ok(Session {
        tenant: Some(tenant).filter(|v| !v.is_empty()),
        search_path: row.try_get(1)?,
    })
}

/// The `search_path` new connections of a pool start with (the role's and
/// database's defaults), as last seen by `after_connect`.
type DefaultSearchPath = Arc<std::sync::RwLock<Option<String>>>;

/// Opens tenant-scoped transactions on a PostgreSQL pool.
///
/// Every transaction it opens runs `BEGIN; SET LOCAL app.tenant_id = '<uuid>'`
/// (the statement form of `set_config('app.tenant_id', '<uuid>', true)`) as
/// **one** simple-query message (one round trip), so the tenant lives exactly as
/// long as the transaction: it is gone after `COMMIT`, `ROLLBACK`, an error,
/// a panic or a dropped future, and it is safe behind pgbouncer in
/// transaction mode. Nothing in this crate sets the tenant at session level.
///
/// Build the pool with [`TenantDb::pool_options`] to get the pool hygiene
/// checks (see [`PoolHygiene`]). The application role must be neither
/// superuser nor `BYPASSRLS` nor the owner of tenant tables; run
/// [`crate::audit`] at start-up to be sure.
///
/// ```no_run
/// use tenancy_core::{Tenant, TenantContext, TenantId};
/// use tenancy_sqlx::TenantDb;
///
/// # async fn example(ctx: TenantContext) -> Result<(), Box<dyn std::error::Error>> {
/// let pool = TenantDb::pool_options()
///     .max_connections(16)
///     .connect("postgres://app:secret@localhost/insurance")
///     .await?;
/// let db = TenantDb::new(pool);
///
/// let mut tx = db.begin(&ctx).await?;
/// let names: Vec<String> = sqlx::query_scalar("SELECT name FROM customers ORDER BY name")
///     .fetch_all(&mut *tx) // RLS shows only ctx's tenant's rows
///     .await?;
/// tx.commit().await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct TenantDb {
    pool: PgPool,
    quota: Arc<QuotaConfig>,
    databases: Option<crate::DatabaseRouter>,
    move_guard: bool,
}

/// Where quota threshold events go, and at which percentages.
pub(crate) struct QuotaConfig {
    pub(crate) thresholds: Vec<u8>,
    pub(crate) events: Arc<dyn QuotaEvents>,
}

impl std::fmt::Debug for QuotaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuotaConfig")
            .field("thresholds", &self.thresholds)
            .finish_non_exhaustive()
    }
}

impl Default for QuotaConfig {
    fn default() -> Self {
        Self {
            thresholds: vec![80, 95],
            events: Arc::new(TracingEvents),
        }
    }
}

impl TenantDb {
    /// Pool options with [`PoolHygiene::Verify`] hooks installed (and
    /// `test_before_acquire` off, see [`TenantDb::pool_options_with`]).
    ///
    /// Do not call `after_connect` or `after_release` on the result: sqlx
    /// keeps one callback each, so yours would replace the checks.
    pub fn pool_options() -> PgPoolOptions {
        Self::pool_options_with(PoolHygiene::Verify)
    }

    /// Pool options with the given hygiene.
    ///
    /// `test_before_acquire` is turned off: sqlx would otherwise ping the
    /// server on every checkout (one extra round trip per transaction), and
    /// a dead connection is already handled by [`TenantDb::begin`], which
    /// discards it and retries once.
    pub fn pool_options_with(hygiene: PoolHygiene) -> PgPoolOptions {
        let options = PgPoolOptions::new().test_before_acquire(false);
        match hygiene {
            PoolHygiene::Off => options,
            PoolHygiene::Verify => {
                let default_path = DefaultSearchPath::default();
                let on_release = default_path.clone();
                options
                    .after_connect(move |conn, _meta| {
                        let default_path = default_path.clone();
                        Box::pin(async move {
                            let session = session_state(conn).await?;
                            if let Some(found) = session.tenant {
                                tracing::error!(
                                    found = %found,
                                    "new connection already carries app.tenant_id (connection options?); refusing it"
                                );
                                return Err(sqlx::Error::Configuration(
                                    format!(
                                        "new connection carries app.tenant_id = {found:?}; \
                                         remove it from the connection options"
                                    )
                                    .into(),
                                ));
                            }
                            // The defaults of the newest connection are the
                            // reference (a changed role default is followed).
                            *default_path
                                .write()
                                .unwrap_or_else(std::sync::PoisonError::into_inner) =
                                Some(session.search_path);
                            Ok(())
                        })
                    })
                    .after_release(move |conn, _meta| {
                        let default_path = on_release.clone();
                        Box::pin(async move {
                            // A broken connection is closed rather than reused.
                            let Ok(session) = session_state(conn).await else {
                                return Ok(false);
                            };
                            if let Some(found) = session.tenant {
                                tracing::error!(
                                    found = %found,
                                    "connection returned to the pool carries app.tenant_id at \
                                     session level; closing it"
                                );
                                return Ok(false);
                            }
                            let expected = default_path
                                .read()
                                .unwrap_or_else(std::sync::PoisonError::into_inner)
                                .clone();
                            if expected.as_deref() != Some(session.search_path.as_str()) {
                                tracing::error!(
                                    found = %session.search_path,
                                    expected = ?expected,
                                    "connection returned to the pool has a session-level search_path; closing it"
                                );
                                return Ok(false);
                            }
                            Ok(true)
                        })
                    })
            }
        }
    }

    /// Wraps a pool. Prefer one built from [`TenantDb::pool_options`].
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            quota: Arc::new(QuotaConfig::default()),
            databases: None,
            move_guard: false,
        }
    }

    /// Makes tenants movable between placements while this handle serves
    /// them ([`crate::relocate`]): each shared or schema tenant transaction
    /// also runs `CALL tenancy.enter(<tenant>, <placement>)` in its
    /// `BEGIN` message, which waits while the tenant is being moved and
    /// refuses, with [`DbError::TenantMoved`], a context whose placement is
    /// no longer current. Needs system migration 0011 and tenants recorded
    /// in `tenancy.tenants`. **Every** handle that may write a tenant must
    /// have it before that tenant is moved.
    pub fn with_move_guard(mut self) -> Self {
        self.move_guard = true;
        self
    }

    /// Serves tenants placed in a database of their own through `router`
    /// (one pool per tenant database, bounded and idle-evicted). Shared and
    /// schema tenants keep using this handle's pool.
    pub fn with_databases(mut self, router: crate::DatabaseRouter) -> Self {
        self.databases = Some(router);
        self
    }

    /// Sends quota threshold events (default: tracing, at 80 % and 95 %) to
    /// `events`. Each threshold fires once per resource and day across all
    /// instances, and only after the transaction that crossed it commits.
    pub fn with_quota_events(mut self, events: Arc<dyn QuotaEvents>, thresholds: &[u8]) -> Self {
        let mut t: Vec<u8> = thresholds.iter().map(|p| (*p).clamp(1, 100)).collect();
        t.sort_unstable();
        t.dedup();
        self.quota = Arc::new(QuotaConfig {
            thresholds: t,
            events,
        });
        self
    }

    /// Connects with [`TenantDb::pool_options`] defaults.
    pub async fn connect(url: &str) -> Result<Self, DbError> {
        Ok(Self::new(Self::pool_options().connect(url).await?))
    }

    /// Opens a transaction in which PostgreSQL sees `ctx`'s tenant.
    ///
    /// A connection that turns out to be dead (for example its backend was
    /// terminated) is discarded and the transaction is retried once on
    /// another connection.
    ///
    /// The tenant's [`Placement`] chooses the isolation model behind the
    /// same call: shared tables (`app.tenant_id` for the policies), or a
    /// schema of its own (`search_path` set to it **with transaction scope**,
    /// plus `app.tenant_id` for the policies its tables carry too), or a
    /// database of its own (a pool from the [`DatabaseRouter`](crate::DatabaseRouter)
    /// given to [`TenantDb::with_databases`]; without one, the tenant is
    /// refused with [`DbError::Placement`]).
    pub async fn begin(&self, ctx: &TenantContext) -> Result<TenantTx, DbError> {
        let tenant = ctx.tenant_id();
        let span = tracing::debug_span!("tenant_tx", tenant.id = %tenant);
        async {
            let (pool, sql) = self.route(ctx).await?;
            let moved = |e: sqlx::Error| match &e {
                sqlx::Error::Database(d) if d.code().as_deref() == Some(MOVED_SQLSTATE) => {
                    DbError::TenantMoved { tenant }
                }
                _ => DbError::Sqlx(e),
            };
            let tx = match pool.begin_with(sql.clone()).await {
                Ok(tx) => tx,
                Err(e) if is_connection_loss(&e) => {
                    tracing::warn!(error = %e, "connection lost at BEGIN; retrying once");
                    pool.begin_with(sql).await.map_err(moved)?
                }
                Err(e) => return Err(moved(e)),
            };
            Ok(TenantTx {
                tx,
                ctx: ctx.clone(),
                quota: self.quota.clone(),
                pending: Vec::new(),
            })
        }
        .instrument(span)
        .await
    }

    /// The pool and opening message for `ctx`'s tenant, by placement.
    async fn route(&self, ctx: &TenantContext) -> Result<(PgPool, String), DbError> {
        let tenant = ctx.tenant();
        let placement = &tenant.placement;
        let refuse = |reason: String| DbError::Placement {
            tenant: tenant.id,
            reason,
        };
        let name = placement
            .checked_name()
            .map_err(|e| refuse(e.to_string()))?;
        let guarded = |mut sql: String| -> Result<String, DbError> {
            if self.move_guard {
                let json = serde_json::to_string(placement).map_err(|e| refuse(e.to_string()))?;
                // Placement names are checked identifiers; escape anyway.
                sql.push_str(&format!(
                    "; CALL tenancy.enter('{}', '{}')",
                    tenant.id.as_uuid().hyphenated(),
                    json.replace('\'', "''")
                ));
            }
            Ok(sql)
        };
        match (placement, name) {
            (Placement::Shared, _) => Ok((self.pool.clone(), guarded(begin_sql(tenant.id))?)),
            (Placement::Schema { .. }, Some(schema)) => Ok((
                self.pool.clone(),
                guarded(tenancy_core::rls::begin_sql_in_schema(tenant.id, schema))?,
            )),
            (Placement::Database { .. }, Some(database)) => match &self.databases {
                // The tenant's own database: its tables still carry the
                // policy, so the tenant setting is set there too.
                Some(router) => Ok((router.pool(database).await, begin_sql(tenant.id))),
                None => Err(refuse(
                    "placed in a database of its own, but this TenantDb has no DatabaseRouter \
                     (TenantDb::with_databases)"
                        .into(),
                )),
            },
            _ => Err(refuse(format!(
                "placement model {:?} is not supported here",
                placement.model()
            ))),
        }
    }

    /// A transaction scoped to `tenant` for the crate's own system tables
    /// (key store) where no request context exists. Not public: application
    /// code always goes through [`TenantDb::begin`].
    pub(crate) async fn begin_for_id(
        &self,
        tenant: TenantId,
    ) -> Result<Transaction<'static, Postgres>, DbError> {
        Ok(self.pool.begin_with(begin_sql(tenant)).await?)
    }

    /// Closes the pool.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

fn is_connection_loss(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) => true,
        // 57P01 admin_shutdown: the backend was terminated (pg_terminate_backend).
        sqlx::Error::Database(db) => db.code().as_deref() == Some("57P01"),
        _ => false,
    }
}

/// The statement that opens a tenant transaction.
///
/// `SET LOCAL` is `set_config(name, value, true)`: the value lasts until the
/// transaction ends. It is used rather than `SELECT set_config(...)` because
/// it returns no result set and needs no planning, which measured ~20 µs
/// cheaper per transaction on loopback. It cannot take a bind parameter, but
/// the id is a parsed UUID formatted by `uuid` (hex digits and hyphens only),
/// so the literal is injection-safe.
fn begin_sql(tenant: TenantId) -> String {
    tenancy_core::rls::begin_sql(tenant)
}

/// A transaction bound to one tenant.
///
/// Use it as a connection (`&mut *tx`) with ordinary sqlx queries. Commit
/// with [`TenantTx::commit`]; dropping it rolls back.
pub struct TenantTx {
    tx: Transaction<'static, Postgres>,
    ctx: TenantContext,
    pub(crate) quota: Arc<QuotaConfig>,
    /// Threshold events to announce once the transaction commits.
    pub(crate) pending: Vec<ThresholdCrossed>,
}

impl std::fmt::Debug for TenantTx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantTx")
            .field("tenant", &self.ctx.tenant_id())
            .finish_non_exhaustive()
    }
}

impl TenantTx {
    /// The context the transaction was opened for.
    pub fn context(&self) -> &TenantContext {
        &self.ctx
    }

    /// The tenant the transaction is bound to.
    pub fn tenant_id(&self) -> TenantId {
        self.ctx.tenant_id()
    }

    /// Commits.
    pub async fn commit(self) -> Result<(), DbError> {
        self.tx.commit().await?;
        for event in &self.pending {
            self.quota.events.threshold_crossed(event);
        }
        Ok(())
    }

    /// Rolls back.
    pub async fn rollback(self) -> Result<(), DbError> {
        Ok(self.tx.rollback().await?)
    }

    /// Write guard: `Ok` when `entity` belongs to this transaction's tenant.
    ///
    /// Row-level security's `WITH CHECK` is the second wall; this one fails
    /// before any SQL is sent and names the problem.
    pub fn guard<E: TenantScoped + ?Sized>(&self, entity: &E) -> Result<(), DbError> {
        Ok(entity.ensure_tenant(&self.ctx)?)
    }

    /// Runs a write for `entity` after checking it belongs to this tenant.
    ///
    /// ```no_run
    /// # use tenancy_core::{TenantId, TenantScoped};
    /// # struct Customer { tenant_id: TenantId, id: uuid::Uuid, name: String }
    /// # impl TenantScoped for Customer { fn tenant_id(&self) -> TenantId { self.tenant_id } }
    /// # async fn example(mut tx: tenancy_sqlx::TenantTx, c: Customer) -> Result<(), tenancy_sqlx::DbError> {
    /// tx.write(
    ///     &c,
    ///     sqlx::query("INSERT INTO customers (tenant_id, id, name) VALUES ($1, $2, $3)")
    ///         .bind(c.tenant_id.as_uuid())
    ///         .bind(c.id)
    ///         .bind(&c.name),
    /// )
    /// .await?;
    /// tx.commit().await
    /// # }
    /// ```
    pub async fn write<E: TenantScoped + ?Sized>(
        &mut self,
        entity: &E,
        query: Query<'_, Postgres, PgArguments>,
    ) -> Result<PgQueryResult, DbError> {
        self.guard(entity)?;
        Ok(query.execute(&mut *self.tx).await?)
    }
}

impl Deref for TenantTx {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        &self.tx
    }
}

impl DerefMut for TenantTx {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.tx
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn begin_statement_is_transaction_scoped() {
        let id: TenantId = "67e55044-10b1-426f-9247-bb680e5fe0c8".parse().unwrap();
        assert_eq!(
            begin_sql(id),
            "BEGIN; SET LOCAL app.tenant_id = '67e55044-10b1-426f-9247-bb680e5fe0c8'"
        );
    }
}
