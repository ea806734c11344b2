//! Moving a tenant between isolation models ([`TenantMover`]): copy, verify
//! row counts and checksums, switch the placement atomically, behind a short
//! per-tenant write freeze.
//!
//! ## The freeze, and why no write is lost
//!
//! Every [`TenantDb`](crate::TenantDb) that may touch a movable tenant is built
//! with [`TenantDb::with_move_guard`](crate::TenantDb::with_move_guard). Its
//! transactions for shared and schema tenants start with
//! `CALL tenancy.enter(<tenant>, <placement>)` (system migration 0011), in
//! the same message as `BEGIN`, which
//!
//! 1. takes the tenant's *placement lock* in shared mode until the
//!    transaction ends, then
//! 2. checks that `tenancy.tenants` still places the tenant where the
//!    caller's context says, failing with [`DbError::TenantMoved`] (SQLSTATE
//!    `TN001`) otherwise.
//!
//! [`TenantMover::move_tenant`] takes the same lock exclusively (waiting at
//! most [`TenantMover::lock_timeout`] for the tenant's transactions in
//! flight). From then until it commits, the tenant's new transactions wait at
//! their `BEGIN` — **the write freeze**, which lasts as long as the copy
//! (about what it takes to read and write the tenant's rows once; other
//! tenants are not frozen). Under the lock it copies every table, compares
//! row counts and order-independent checksums of both sides, deletes the
//! source rows and updates the placement. The transactions it held then see
//! the new placement and fail with [`DbError::TenantMoved`]; the caller
//! reloads the tenant (the placement change also reaches
//! [`InvalidationListener`](crate::InvalidationListener)s) and retries. No
//! transaction can commit a write to the old place after the copy.
//!
//! To a schema in the same database the whole move is **one transaction**.
//! To a database of its own it takes two: the target's (copy and verify,
//! committed first) and the source's (delete and switch). If the second one
//! fails, the tenant stays where it was and a new attempt clears the
//! target's partial copy before copying again.
//!
//! The mover connects as the tables' owner; the tables force row-level
//! security, so the mover seals its transaction to the tenant (as the owner,
//! it can read the seal key) and sees, copies and deletes that tenant's rows
//! only, on both sides.

use std::time::{Duration, Instant};

use futures_util::TryStreamExt;
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, Executor, PgConnection, PgPool, Postgres, Transaction};
use tenancy_core::rls::quote_ident;
use tenancy_core::{Placement, Tenant, TenantId};

use crate::DbError;

/// Rows copied per statement to a database target.
const BATCH: usize = 1_000;

/// What one table's copy found on both sides.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TableCopy {
    /// The table.
    pub table: String,
    /// Rows copied (equal on both sides).
    pub rows: i64,
    /// The order-independent checksum of the rows (equal on both sides).
    pub checksum: String,
}

/// The outcome of [`TenantMover::move_tenant`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct MoveReport {
    /// The tenant.
    pub tenant: TenantId,
    /// Where it was.
    pub from: Placement,
    /// Where it is now.
    pub to: Placement,
    /// Per table, in copy order.
    pub tables: Vec<TableCopy>,
    /// How long the tenant's transactions were held (lock taken → committed).
    pub frozen: Duration,
}

/// Moves tenants between placements. See the [module docs](self).
///
/// ```no_run
/// use tenancy_core::{Placement, Tenant};
/// use tenancy_sqlx::relocate::TenantMover;
///
/// # async fn f(owner: sqlx::PgPool, tenant: Tenant) -> Result<(), Box<dyn std::error::Error>> {
/// // Tables in dependency order (parents first); the target schema must
/// // already hold them (TenantMigrator::provision).
/// let mover = TenantMover::new(owner, ["customers", "policies", "payments"]);
/// let report = mover
///     .move_tenant(&tenant, Placement::schema("t_acme")?)
///     .await?;
/// tracing::info!(frozen = ?report.frozen, "moved");
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct TenantMover {
    owner: PgPool,
    tables: Vec<String>,
    shared_schema: String,
    lock_timeout: Duration,
    databases: Option<PgConnectOptions>,
}

impl TenantMover {
    /// A mover over `owner` (the tables' owner, on the database holding
    /// `tenancy.tenants` and the shared tables) for `tables`, listed
    /// parents first (copied in this order, deleted in reverse).
    pub fn new<I, S>(owner: PgPool, tables: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            owner,
            tables: tables.into_iter().map(Into::into).collect(),
            shared_schema: "public".to_owned(),
            lock_timeout: Duration::from_secs(5),
            databases: None,
        }
    }

    /// The schema of the shared tables (default `public`).
    pub fn shared_schema(mut self, schema: &str) -> Self {
        self.shared_schema = schema.to_owned();
        self
    }

    /// How long to wait for the tenant's transactions in flight before
    /// giving up (default 5 s; nothing is changed on timeout).
    pub fn lock_timeout(mut self, d: Duration) -> Self {
        self.lock_timeout = d;
        self
    }

    /// Allows moves to a database of the tenant's own, connecting with
    /// `owner` options (the database name is replaced by the tenant's; the
    /// database must exist with the tables, e.g. from a template).
    pub fn with_databases(mut self, owner: PgConnectOptions) -> Self {
        self.databases = Some(owner);
        self
    }

    /// Moves `tenant` (as loaded now: its placement must still be current)
    /// to `to`. Shared and schema placements can be moved to shared, schema
    /// or database placements.
    pub async fn move_tenant(&self, tenant: &Tenant, to: Placement) -> Result<MoveReport, DbError> {
        let id = tenant.id;
        let refuse = |reason: String| DbError::Placement { tenant: id, reason };
        let from = tenant.placement.clone();
        let source = self
            .schema_of(&from)
            .map_err(|e| refuse(format!("cannot move from {:?}: {e}", from.model())))?;
        let target = match (&to, to.checked_name().map_err(|e| refuse(e.to_string()))?) {
            (Placement::Database { .. }, Some(db)) => Target::Database(db.to_owned()),
            _ => Target::Schema(
                self.schema_of(&to)
                    .map_err(|e| refuse(format!("cannot move to {:?}: {e}", to.model())))?,
            ),
        };
        if from == to {
            return Err(refuse("the tenant is already there".into()));
        }
        let span = tracing::info_span!("tenant_move", tenant.id = %id, from = ?from.model(), to = ?to.model());
        let _entered = span.enter();

        // The tables force the sealed policies on their owner too: the
        // mover seals its transaction like any tenant transaction.
        let seal = crate::migrate::seal_key(&mut *self.owner.acquire().await?).await?;
        let mut tx = self
            .owner
            .begin_with(tenancy_core::rls::begin_sql(id, &seal))
            .await?;
        (&mut *tx)
            .execute(
                format!(
                    "SET LOCAL lock_timeout = {}",
                    self.lock_timeout.as_millis().max(1)
                )
                .as_str(),
            )
            .await?;
        sqlx::query("SELECT pg_advisory_xact_lock(tenancy.placement_lock_key($1))")
            .bind(id.as_uuid())
            .execute(&mut *tx)
            .await
            .map_err(|e| match &e {
                sqlx::Error::Database(d) if d.code().as_deref() == Some("55P03") => {
                    refuse(format!(
                        "the tenant's transactions did not finish within {:?}; nothing was moved",
                        self.lock_timeout
                    ))
                }
                _ => DbError::Sqlx(e),
            })?;
        let frozen_at = Instant::now();
        let current: Option<serde_json::Value> =
            sqlx::query_scalar("SELECT placement FROM tenancy.tenants WHERE id = $1 FOR UPDATE")
                .bind(id.as_uuid())
                .fetch_optional(&mut *tx)
                .await?;
        let expected = serde_json::to_value(&from).map_err(|e| refuse(e.to_string()))?;
        if current.as_ref() != Some(&expected) {
            return Err(DbError::TenantMoved { tenant: id });
        }

        let tables = match &target {
            Target::Schema(schema) => self.copy_within(&mut tx, &source, schema).await?,
            Target::Database(db) => self.copy_to_database(&mut tx, id, &source, db).await?,
        };
        // Delete the source rows, checking that exactly what was copied is
        // deleted: a write that slipped past the freeze (a handle without
        // the move guard) fails the move here instead of being lost.
        for copy in tables.iter().rev() {
            let list = columns(&mut tx, &source, &copy.table).await?.join(", ");
            let sql = format!(
                "WITH gone AS (DELETE FROM {}.{} RETURNING {list}) \
                 SELECT count(*), coalesce(sum(hashtextextended(ROW({list})::text, 0)::numeric), 0)::text \
                 FROM gone",
                quote_ident(&source),
                quote_ident(&copy.table)
            );
            let deleted: (i64, String) = sqlx::query_as(&sql).fetch_one(&mut *tx).await?;
            verified(&copy.table, (copy.rows, copy.checksum.clone()), &deleted)?;
        }
        let placement = serde_json::to_value(&to).map_err(|e| refuse(e.to_string()))?;
        sqlx::query("UPDATE tenancy.tenants SET placement = $2, updated_at = now() WHERE id = $1")
            .bind(id.as_uuid())
            .bind(placement)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        let frozen = frozen_at.elapsed();
        tracing::info!(?frozen, tables = tables.len(), "tenant moved");
        Ok(MoveReport {
            tenant: id,
            from,
            to,
            tables,
            frozen,
        })
    }

    /// The schema holding a shared or schema tenant's tables.
    fn schema_of(&self, placement: &Placement) -> Result<String, String> {
        match placement {
            Placement::Shared => Ok(self.shared_schema.clone()),
            Placement::Schema { .. } => placement
                .checked_name()
                .map_err(|e| e.to_string())?
                .map(str::to_owned)
                .ok_or_else(|| "schema placement without a name".to_owned()),
            _ => Err("only shared and schema tenants live in the mover's database".into()),
        }
    }

    /// Same database: copy each table with one `INSERT .. SELECT`.
    async fn copy_within(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        source: &str,
        target: &str,
    ) -> Result<Vec<TableCopy>, DbError> {
        for t in self.tables.iter().rev() {
            // A partial copy cannot exist (one transaction), but rows of the
            // tenant already in the target would be duplicated: refuse them.
            let sql = format!("DELETE FROM {}.{}", quote_ident(target), quote_ident(t));
            let stale = (&mut **tx).execute(sql.as_str()).await?.rows_affected();
            if stale > 0 {
                tracing::warn!(table = %t, rows = stale, "cleared the tenant's rows already in the target");
            }
        }
        let mut out = Vec::new();
        for t in &self.tables {
            let cols = columns(tx, source, t).await?;
            let list = cols.join(", ");
            let sql = format!(
                "INSERT INTO {}.{} ({list}) SELECT {list} FROM {}.{}",
                quote_ident(target),
                quote_ident(t),
                quote_ident(source),
                quote_ident(t)
            );
            (&mut **tx).execute(sql.as_str()).await?;
            let a = fingerprint(tx, source, t, &list).await?;
            let b = fingerprint(tx, target, t, &list).await?;
            out.push(verified(t, a, &b)?);
        }
        Ok(out)
    }

    /// Another database: stream rows as JSON in batches into the target's
    /// own transaction, verify, commit it.
    async fn copy_to_database(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        tenant: TenantId,
        source: &str,
        database: &str,
    ) -> Result<Vec<TableCopy>, DbError> {
        let Some(options) = &self.databases else {
            return Err(DbError::Placement {
                tenant,
                reason: "moving to a database needs TenantMover::with_databases".into(),
            });
        };
        let mut conn: PgConnection = options.clone().database(database).connect().await?;
        let seal = crate::migrate::seal_key(&mut conn).await?;
        let mut ttx = conn
            .begin_with(tenancy_core::rls::begin_sql(tenant, &seal))
            .await?;
        for t in self.tables.iter().rev() {
            let sql = format!("DELETE FROM public.{}", quote_ident(t));
            (&mut *ttx).execute(sql.as_str()).await?;
        }
        let mut out = Vec::new();
        for t in &self.tables {
            let cols = columns(tx, source, t).await?;
            let list = cols.join(", ");
            let read = format!(
                "SELECT to_jsonb(r) FROM (SELECT {list} FROM {}.{}) r",
                quote_ident(source),
                quote_ident(t)
            );
            let write = format!(
                "INSERT INTO public.{table} ({list}) SELECT {list} \
                 FROM jsonb_populate_recordset(NULL::public.{table}, $1)",
                table = quote_ident(t)
            );
            let mut rows = (&mut **tx).fetch(read.as_str());
            let mut batch: Vec<serde_json::Value> = Vec::with_capacity(BATCH);
            while let Some(row) = rows.try_next().await? {
                batch.push(sqlx::Row::try_get(&row, 0)?);
                if batch.len() == BATCH {
                    insert_batch(&mut ttx, &write, std::mem::take(&mut batch)).await?;
                }
            }
            drop(rows);
            if !batch.is_empty() {
                insert_batch(&mut ttx, &write, batch).await?;
            }
            let a = fingerprint(tx, source, t, &list).await?;
            let b = fingerprint(&mut ttx, "public", t, &list).await?;
            out.push(verified(t, a, &b)?);
        }
        ttx.commit().await?;
        conn.close().await?;
        Ok(out)
    }
}

enum Target {
    Schema(String),
    Database(String),
}

async fn insert_batch(
    tx: &mut Transaction<'_, Postgres>,
    sql: &str,
    rows: Vec<serde_json::Value>,
) -> Result<(), DbError> {
    sqlx::query(sql)
        .bind(serde_json::Value::Array(rows))
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// The table's columns, quoted, in order.
async fn columns(
    conn: &mut PgConnection,
    schema: &str,
    table: &str,
) -> Result<Vec<String>, DbError> {
    let cols: Vec<String> = sqlx::query_scalar(
        "SELECT attname::text FROM pg_attribute \
         WHERE attrelid = (quote_ident($1) || '.' || quote_ident($2))::regclass \
           AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
    )
    .bind(schema)
    .bind(table)
    .fetch_all(&mut *conn)
    .await?;
    Ok(cols.iter().map(|c| quote_ident(c)).collect())
}

/// Row count and an order-independent checksum (the sum of a 64-bit hash
/// of each row's text form) of the rows visible to the tenant.
async fn fingerprint(
    conn: &mut PgConnection,
    schema: &str,
    table: &str,
    list: &str,
) -> Result<(i64, String), DbError> {
    let sql = format!(
        "SELECT count(*), coalesce(sum(hashtextextended(ROW({list})::text, 0)::numeric), 0)::text \
         FROM {}.{}",
        quote_ident(schema),
        quote_ident(table)
    );
    Ok(sqlx::query_as(&sql).fetch_one(&mut *conn).await?)
}

fn verified(
    table: &str,
    source: (i64, String),
    target: &(i64, String),
) -> Result<TableCopy, DbError> {
    if &source != target {
        return Err(DbError::Relocation(format!(
            "table {table}: copied {} rows (checksum {}), found {} rows (checksum {}); \
             nothing was switched (a write during the move from a TenantDb without \
             with_move_guard?)",
            source.0, source.1, target.0, target.1
        )));
    }
    Ok(TableCopy {
        table: table.to_owned(),
        rows: source.0,
        checksum: source.1,
    })
}
