//! The one door to tenant data: [`TenantDb::begin`] → [`TenantTx`].

use std::ops::{Deref, DerefMut};

use sqlx::postgres::{PgArguments, PgConnection, PgPool, PgPoolOptions, PgQueryResult};
use sqlx::query::Query;
use sqlx::{Postgres, Transaction};
use std::sync::Arc;

use tenancy_core::quota::{QuotaEvents, ThresholdCrossed, TracingEvents};
use tenancy_core::rls::SealKey;
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
    /// `app.tenant_id` outside a transaction, whose `search_path` was
    /// changed at session level (a plain `SET search_path` — it outlives
    /// the transaction and would point the next tenant's unqualified names
    /// at another schema), that holds temporary relations (they shadow
    /// tenant tables and have no row-level security) or listens on a
    /// channel is closed, never reused. The same message cleans what it
    /// does not check: session advisory locks are released and every
    /// session-level setting is reset (`RESET ALL`), and `LISTEN`s and
    /// temporary tables are dropped (behind pgbouncer in transaction mode,
    /// closing the client connection does not reset the server connection).
    /// The release check costs one round trip, off the releasing task's
    /// path.
    #[default]
    Verify,
    /// No checks. Transaction-scoped settings cannot leak by themselves; the
    /// checks only guard against application code that sets the tenant at
    /// session level by hand.
    Off,
}

/// The SQLSTATE `tenancy.enter` raises for a tenant that was moved.
const MOVED_SQLSTATE: &str = "TN001";

/// Reads what a connection carries outside any transaction, then cleans
/// what is cheap to clean: session advisory locks (`pg_advisory_unlock_all`),
/// every session-level setting (`RESET ALL`: custom ones included), `LISTEN`
/// registrations and temporary tables. Reading `pg_locks` or `pg_settings`
/// instead would cost 0.2–1 ms per release; the temp-relation check scans
/// `pg_class` only when the session has a temporary schema at all.
const CHECK_SQL: &str = "SELECT coalesce(current_setting('app.tenant_id', true), ''), \
     current_setting('search_path'), \
     CASE WHEN pg_my_temp_schema() = 0 THEN false \
          ELSE EXISTS (SELECT 1 FROM pg_class WHERE relnamespace = pg_my_temp_schema()) END, \
     EXISTS (SELECT 1 FROM pg_listening_channels()), \
     pg_advisory_unlock_all() IS NULL; \
     RESET ALL; UNLISTEN *; DISCARD TEMP";

/// What the hygiene checks read from a connection outside any transaction.
struct Session {
    /// The tenant setting, if any (there should be none).
    tenant: Option<String>,
    /// The session's `search_path`.
    search_path: String,
    /// Temporary relations exist (they shadow tenant tables, without RLS).
    temp: bool,
    /// The session listens on a channel (another tenant's notifications).
    listening: bool,
}

impl Session {
    /// Why the connection must not be reused, if it must not.
    fn polluted(&self, expected_path: Option<&str>) -> Option<String> {
        if let Some(found) = &self.tenant {
            return Some(format!(
                "carries app.tenant_id = {found:?} at session level"
            ));
        }
        if expected_path != Some(self.search_path.as_str()) {
            return Some(format!(
                "has a session-level search_path {:?} (expected {expected_path:?})",
                self.search_path
            ));
        }
        if self.temp {
            return Some("holds temporary relations (pg_temp shadows tenant tables)".into());
        }
        if self.listening {
            return Some("listens on a channel".into());
        }
        None
    }
}

/// Reads [`Session`] (and cleans, see [`CHECK_SQL`]). Simple-query
/// protocol: one round trip, no prepared statement (so it also works
/// through pgbouncer in transaction mode).
async fn session_state(conn: &mut PgConnection) -> Result<Session, sqlx::Error> {
    use futures_util::TryStreamExt;
    use sqlx::{Executor, Row};
    // A bare &str has no arguments: sqlx sends it with the simple protocol.
    // Drain every statement's result so the clean-up has run on return.
    let mut rows = Vec::new();
    let mut stream = conn.fetch_many(CHECK_SQL);
    while let Some(item) = stream.try_next().await? {
        if let sqlx::Either::Right(row) = item {
            rows.push(row);
        }
    }
    drop(stream);
    let row = rows
        .into_iter()
        .next()
        .ok_or_else(|| sqlx::Error::Protocol("the hygiene check returned no row".into()))?;
    let tenant: String = row.try_get(0)?;
    Ok(Session {
        tenant: Some(tenant).filter(|v| !v.is_empty()),
        search_path: row.try_get(1)?,
        temp: row.try_get(2)?,
        listening: row.try_get(3)?,
    })
}

/// The `search_path` new connections of a pool start with (the role's and
/// database's defaults), as last seen by `after_connect`.
type DefaultSearchPath = Arc<std::sync::RwLock<Option<String>>>;

/// Opens tenant-scoped transactions on a PostgreSQL pool.
///
/// Every transaction it opens runs `BEGIN; CALL tenancy.seal(<tenant>, <issued>, <proof>)`
/// as **one** simple-query message (one round trip): the tenant is sealed
/// into that transaction with a proof made from the [`SealKey`], and lives
/// exactly as long as the transaction — it is gone after `COMMIT`,
/// `ROLLBACK`, an error, a panic or a dropped future, and it is safe behind
/// pgbouncer in transaction mode. SQL that runs inside the transaction
/// cannot re-scope it to another tenant (see [`tenancy_core::rls`] and the
/// threat model). Nothing in this crate sets the tenant at session level.
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
/// let seal = tenancy_core::rls::SealKey::from_hex(&std::env::var("TENANCY_SEAL_KEY")?)?;
/// let db = TenantDb::new(pool, seal);
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
    seal: SealKey,
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
                            if let Some(why) = session.polluted(expected.as_deref()) {
                                tracing::error!(
                                    "connection returned to the pool {why}; closing it"
                                );
                                return Ok(false);
                            }
                            Ok(true)
                        })
                    })
            }
        }
    }

    /// Wraps a pool connected as the application role, sealing its
    /// transactions with `seal` (the key in `tenancy.seal_key` of this
    /// database: [`crate::migrate::seal_key`] reads it as the owner). Prefer
    /// a pool built from [`TenantDb::pool_options`].
    pub fn new(pool: PgPool, seal: SealKey) -> Self {
        Self {
            pool,
            seal,
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
    pub async fn connect(url: &str, seal: SealKey) -> Result<Self, DbError> {
        Ok(Self::new(Self::pool_options().connect(url).await?, seal))
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
                _ => seal_error(e),
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

    /// [`TenantDb::begin`] at `REPEATABLE READ`: every statement of the
    /// transaction sees the same snapshot, taken at its first query — for
    /// reading several tables as of one instant (a backup, an export), while
    /// other transactions keep writing. Write in it only what a concurrent
    /// change to the same rows may refuse (serialization failure, retry).
    ///
    /// ```no_run
    /// # async fn f(db: &tenancy_sqlx::TenantDb, ctx: &tenancy_core::TenantContext) -> Result<(), tenancy_sqlx::DbError> {
    /// let mut tx = db.begin_snapshot(ctx).await?;
    /// let policies: i64 = sqlx::query_scalar("SELECT count(*) FROM policies").fetch_one(&mut *tx).await?;
    /// let payments: i64 = sqlx::query_scalar("SELECT count(*) FROM payments").fetch_one(&mut *tx).await?;
    /// tx.commit().await?;
    /// # Ok(()) }
    /// ```
    pub async fn begin_snapshot(&self, ctx: &TenantContext) -> Result<TenantTx, DbError> {
        let tenant = ctx.tenant_id();
        let (pool, sql) = self.route(ctx).await?;
        let sql = match sql.strip_prefix("BEGIN;") {
            // The seal accepts only a message that starts with `BEGIN;`.
            Some(rest) => format!("BEGIN; SET TRANSACTION ISOLATION LEVEL REPEATABLE READ;{rest}"),
            None => {
                return Err(DbError::Placement {
                    tenant,
                    reason: "unexpected opening statement".into(),
                });
            }
        };
        let span = tracing::debug_span!("tenant_tx", tenant.id = %tenant, snapshot = true);
        let moved = |e: sqlx::Error| match &e {
            sqlx::Error::Database(d) if d.code().as_deref() == Some(MOVED_SQLSTATE) => {
                DbError::TenantMoved { tenant }
            }
            _ => seal_error(e),
        };
        let tx = async {
            match pool.begin_with(sql.clone()).await {
                Ok(tx) => Ok(tx),
                Err(e) if is_connection_loss(&e) => {
                    tracing::warn!(error = %e, "connection lost at BEGIN; retrying once");
                    pool.begin_with(sql).await.map_err(moved)
                }
                Err(e) => Err(moved(e)),
            }
        }
        .instrument(span)
        .await?;
        Ok(TenantTx {
            tx,
            ctx: ctx.clone(),
            quota: self.quota.clone(),
            pending: Vec::new(),
        })
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
            (Placement::Shared, _) => Ok((
                self.pool.clone(),
                guarded(tenancy_core::rls::begin_sql(tenant.id, &self.seal))?,
            )),
            (Placement::Schema { .. }, Some(schema)) => Ok((
                self.pool.clone(),
                guarded(tenancy_core::rls::begin_sql_in_schema(
                    tenant.id, schema, &self.seal,
                ))?,
            )),
            (Placement::Database { .. }, Some(database)) => match &self.databases {
                // The tenant's own database: its tables still carry the
                // policy, so the tenant setting is set there too.
                Some(router) => Ok((
                    router.pool(database).await,
                    tenancy_core::rls::begin_sql(tenant.id, &self.seal),
                )),
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
        self.pool
            .begin_with(tenancy_core::rls::begin_sql(tenant, &self.seal))
            .await
            .map_err(seal_error)
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

/// A refusal from `tenancy.seal` (or its absence) as [`DbError::Seal`].
fn seal_error(e: sqlx::Error) -> DbError {
    match &e {
        sqlx::Error::Database(d)
            if d.code().as_deref() == Some("42501") && d.message().starts_with("tenancy.seal") =>
        {
            DbError::Seal(d.message().to_owned())
        }
        // 42883 undefined_function / 3F000 invalid_schema_name: not installed.
        sqlx::Error::Database(d)
            if matches!(d.code().as_deref(), Some("42883" | "3F000"))
                && d.message().contains("tenancy.seal") =>
        {
            DbError::Seal(format!(
                "{} — install the sealed binding with tenancy_sqlx::migrate::run (as the owner)",
                d.message()
            ))
        }
        _ => DbError::Sqlx(e),
    }
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
