//! Tenant migrations: the schema of every tenant placed in a schema (or a
//! database, [`TenantMigrator::run_databases`]; or a SQLite file,
//! `SqliteTenantDb::migrate` with feature `sqlite`) of its own, brought to
//! the same version — in parallel, resumably, canary first, with failing
//! tenants quarantined while the rest continue.
//!
//! These are distinct from the system schema (`tenancy.*`, see
//! [`crate::migrate`]): a [`TenantMigration`] is SQL that runs with
//! `search_path` set (with transaction scope) to one tenant's schema, so it
//! names tables unqualified.
//!
//! - **State** lives in `tenancy.tenant_migrations` (tenant, version, name,
//!   checksum). Each tenant is migrated in **one transaction** (PostgreSQL
//!   DDL is transactional): a crash leaves a tenant either before or after,
//!   never half-way, and the next run resumes where the last stopped.
//! - **No-op check**: one query reads every tenant's applied versions and
//!   checksums; tenants already at the latest version are skipped without
//!   opening a transaction in their schema. This is what makes "nothing to
//!   do" across thousands of tenants take milliseconds.
//! - **Canary**: the first `canary` tenants are migrated one by one before
//!   anyone else; if one fails, the rollout stops there.
//! - **Quarantine**: after the canary, a failing tenant is recorded in
//!   `tenancy.tenant_migration_quarantine` (and reported) while the others
//!   continue; a later successful run clears its record.
//! - **Edited migrations**: an applied version whose SQL changed
//!   (checksum) quarantines the tenant instead of silently diverging.
//!
//! ```no_run
//! use tenancy_sqlx::tenant_migrate::{TenantMigration, TenantMigrator, MigrationTarget};
//!
//! # async fn f(owner: sqlx::PgPool, targets: Vec<MigrationTarget>) -> Result<(), tenancy_sqlx::DbError> {
//! let migrator = TenantMigrator::new(vec![
//!     TenantMigration::new(1, "customers", "CREATE TABLE customers (tenant_id uuid NOT NULL, id uuid PRIMARY KEY)"),
//!     TenantMigration::new(2, "customer names", "ALTER TABLE customers ADD COLUMN name text"),
//! ])?
//! .concurrency(8)
//! .canary(2);
//! let report = migrator.run(&owner, &targets, |p| tracing::info!(?p, "tenant migration")).await?;
//! assert!(report.canary_failure.is_none());
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use futures_util::{FutureExt, StreamExt};
use sha2::{Digest, Sha256};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, Executor, PgConnection, PgPool};
use tenancy_core::rls::quote_ident;
use tenancy_core::{Placement, TenantId};

use crate::DbError;

/// One step of the tenant schema.
#[derive(Debug, Clone)]
pub struct TenantMigration {
    pub(crate) version: i64,
    pub(crate) name: String,
    pub(crate) sql: String,
    pub(crate) checksum: String,
}

impl TenantMigration {
    /// Version `version` (> 0, increasing), a short `name`, and the SQL to
    /// run in the tenant's schema (several statements allowed).
    pub fn new(version: i64, name: &str, sql: &str) -> Self {
        let checksum = Sha256::digest(sql.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Self {
            version,
            name: name.to_owned(),
            sql: sql.to_owned(),
            checksum,
        }
    }

    /// The version.
    pub fn version(&self) -> i64 {
        self.version
    }
}

/// A tenant to migrate and its schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationTarget {
    /// The tenant.
    pub tenant: TenantId,
    /// Its schema (checked like [`Placement::schema`]).
    pub schema: String,
}

impl MigrationTarget {
    /// The target for a tenant placed in a schema; `None` for other placements.
    pub fn from_tenant(tenant: &tenancy_core::Tenant) -> Option<Self> {
        match &tenant.placement {
            Placement::Schema { schema } => Some(Self {
                tenant: tenant.id,
                schema: schema.clone(),
            }),
            _ => None,
        }
    }
}

/// A tenant placed in a PostgreSQL database of its own, to migrate there
/// (state inside that database, see [`TenantMigrator::run_databases`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatabaseTarget {
    /// The tenant.
    pub tenant: TenantId,
    /// Its database (checked like [`Placement::database`]).
    pub database: String,
}

impl DatabaseTarget {
    /// The target for a tenant placed in a database; `None` for other placements.
    pub fn from_tenant(tenant: &tenancy_core::Tenant) -> Option<Self> {
        match &tenant.placement {
            Placement::Database { database } => Some(Self {
                tenant: tenant.id,
                database: database.clone(),
            }),
            _ => None,
        }
    }
}

/// What the rollout is doing, for the progress callback.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Progress {
    /// The tenant was already at the latest version (no transaction opened).
    UpToDate(TenantId),
    /// The tenant was brought from `from` to `to`.
    Migrated {
        /// The tenant.
        tenant: TenantId,
        /// Its version before (0 = none).
        from: i64,
        /// Its version now.
        to: i64,
    },
    /// The tenant failed and was quarantined.
    Quarantined {
        /// The tenant.
        tenant: TenantId,
        /// Why.
        error: String,
    },
}

/// The outcome of [`TenantMigrator::run`].
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct RolloutReport {
    /// Tenants migrated in this run.
    pub migrated: Vec<TenantId>,
    /// Tenants already at the latest version.
    pub up_to_date: usize,
    /// Tenants that failed (recorded in the quarantine table), with the error.
    pub quarantined: Vec<(TenantId, String)>,
    /// Set when a canary tenant failed: the rollout stopped before the rest.
    pub canary_failure: Option<(TenantId, String)>,
}

/// Runs [`TenantMigration`]s across tenants. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct TenantMigrator {
    migrations: Arc<Vec<TenantMigration>>,
    concurrency: usize,
    canary: usize,
}

impl TenantMigrator {
    /// A migrator for `migrations` (versions strictly increasing, > 0).
    pub fn new(migrations: Vec<TenantMigration>) -> Result<Self, DbError> {
        let mut last = 0;
        for m in &migrations {
            if m.version <= last {
                return Err(DbError::TenantMigration {
                    version: m.version,
                    reason: format!(
                        "comes after {last}: versions must be > 0 and strictly increasing"
                    ),
                });
            }
            last = m.version;
        }
        Ok(Self {
            migrations: Arc::new(migrations),
            concurrency: 4,
            canary: 1,
        })
    }

    /// How many tenants migrate at once after the canary (default 4; keep it
    /// below the pool size).
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// How many tenants migrate first, one by one (default 1; 0 = no canary).
    pub fn canary(mut self, n: usize) -> Self {
        self.canary = n;
        self
    }

    /// The latest version.
    pub fn latest(&self) -> i64 {
        self.migrations.last().map_or(0, |m| m.version)
    }

    /// Creates `target`'s schema if needed, grants `USAGE` on it to `roles`,
    /// and migrates it to the latest version: a tenant's provisioning step.
    pub async fn provision(
        &self,
        pool: &PgPool,
        target: &MigrationTarget,
        roles: &[&str],
    ) -> Result<i64, DbError> {
        let schema = checked(target)?;
        let mut ddl = format!("CREATE SCHEMA IF NOT EXISTS {}", quote_ident(schema));
        for role in roles {
            ddl.push_str(&format!(
                "; GRANT USAGE ON SCHEMA {} TO {}",
                quote_ident(schema),
                quote_ident(role)
            ));
        }
        sqlx::raw_sql(&ddl).execute(pool).await?;
        PgSchemas { pool: pool.clone() }
            .migrate_one(self, target)
            .await
            .map(|(_, to)| to)
    }

    /// Brings every target to the latest version. `progress` hears about
    /// each tenant as it finishes.
    pub async fn run(
        &self,
        pool: &PgPool,
        targets: &[MigrationTarget],
        progress: impl Fn(&Progress) + Send + Sync,
    ) -> Result<RolloutReport, DbError> {
        self.rollout(&PgSchemas { pool: pool.clone() }, targets, progress)
            .await
    }

    /// Brings every database tenant to the latest version: the same rollout
    /// as [`TenantMigrator::run`], connecting to each tenant database with
    /// `owner` (its database name replaced), one transaction per tenant.
    /// The state lives **inside each database**
    /// (`tenancy.tenant_migrations` there, created on first use), so a
    /// database copied or restored carries its own version; quarantine
    /// records go to `control` (`tenancy.tenant_migration_quarantine`).
    /// The no-op check opens one short connection per tenant database.
    pub async fn run_databases(
        &self,
        control: &PgPool,
        owner: &PgConnectOptions,
        targets: &[DatabaseTarget],
        progress: impl Fn(&Progress) + Send + Sync,
    ) -> Result<RolloutReport, DbError> {
        let store = PgDatabases {
            control: control.clone(),
            owner: owner.clone(),
        };
        self.rollout(&store, targets, progress).await
    }

    /// The rollout, whatever keeps the tenants' schemas: no-op check, canary,
    /// then the rest in parallel with failures quarantined.
    pub(crate) async fn rollout<S: TenantSchemas>(
        &self,
        store: &S,
        targets: &[S::Target],
        progress: impl Fn(&Progress) + Send + Sync,
    ) -> Result<RolloutReport, DbError> {
        let applied = store.applied(targets).await?;
        let mut report = RolloutReport::default();
        let mut pending = Vec::new();
        for t in targets {
            let tenant = S::tenant(t);
            if applied.get(&tenant).is_some_and(|d| self.is_current(d)) {
                report.up_to_date += 1;
                progress(&Progress::UpToDate(tenant));
            } else {
                pending.push(t);
            }
        }
        let canaries = pending.len().min(self.canary);
        for t in &pending[..canaries] {
            let outcome = store.migrate_one(self, t).await;
            if let Some(error) = self
                .settle(store, t, outcome, &mut report, &progress)
                .await?
            {
                report.canary_failure = Some((S::tenant(t), error));
                return Ok(report);
            }
        }
        // Boxed per tenant: keeps the rollout future `Send` (spawnable).
        let rest: Vec<_> = pending[canaries..]
            .iter()
            .map(|t| {
                let (this, store, target) = (self.clone(), store.clone(), (*t).clone());
                async move {
                    let outcome = store.migrate_one(&this, &target).await;
                    (target, outcome)
                }
                .boxed()
            })
            .collect();
        let mut outcomes = futures_util::stream::iter(rest).buffer_unordered(self.concurrency);
        while let Some((target, outcome)) = outcomes.next().await {
            if let Some(error) = self
                .settle(store, &target, outcome, &mut report, &progress)
                .await?
            {
                report.quarantined.push((S::tenant(&target), error));
            }
        }
        Ok(report)
    }

    /// Records one tenant's outcome: success clears its quarantine record;
    /// failure quarantines it. Returns the error text on failure.
    async fn settle<S: TenantSchemas>(
        &self,
        store: &S,
        t: &S::Target,
        outcome: Result<(i64, i64), DbError>,
        report: &mut RolloutReport,
        progress: &(impl Fn(&Progress) + Send + Sync),
    ) -> Result<Option<String>, DbError> {
        let tenant = S::tenant(t);
        match outcome {
            Ok((from, to)) => {
                store.clear_quarantine(t).await?;
                report.migrated.push(tenant);
                progress(&Progress::Migrated { tenant, from, to });
                Ok(None)
            }
            Err(e) => {
                let error = e.to_string();
                tracing::error!(tenant.id = %tenant, error, "tenant migration failed; tenant quarantined");
                store.quarantine(t, self.latest(), &error).await?;
                progress(&Progress::Quarantined {
                    tenant,
                    error: error.clone(),
                });
                Ok(Some(error))
            }
        }
    }

    /// Whether `applied` (version → checksum) holds every migration, unchanged.
    fn is_current(&self, applied: &HashMap<i64, String>) -> bool {
        self.migrations
            .iter()
            .all(|m| applied.get(&m.version) == Some(&m.checksum))
    }

    /// The migrations still to apply given `applied` (version → checksum),
    /// or an error when an applied one was edited since.
    pub(crate) fn todo(
        &self,
        applied: &HashMap<i64, String>,
    ) -> Result<Vec<&TenantMigration>, DbError> {
        for m in self.migrations.iter() {
            if let Some(sum) = applied.get(&m.version).filter(|s| **s != m.checksum) {
                return Err(DbError::TenantMigration {
                    version: m.version,
                    reason: format!(
                        "({}) changed since it was applied (checksum {sum}); \
                         add a new migration instead of editing an applied one",
                        m.name
                    ),
                });
            }
        }
        Ok(self
            .migrations
            .iter()
            .filter(|m| !applied.contains_key(&m.version))
            .collect())
    }

    /// Tenants whose last rollout failed, with the error.
    pub async fn quarantined(pool: &PgPool) -> Result<Vec<(TenantId, String)>, DbError> {
        let rows: Vec<(uuid::Uuid, String)> = sqlx::query_as(
            "SELECT tenant_id, error FROM tenancy.tenant_migration_quarantine ORDER BY at",
        )
        .fetch_all(pool)
        .await?;
        rows.into_iter()
            .map(|(t, e)| {
                TenantId::from_uuid(t)
                    .map(|t| (t, e))
                    .map_err(|e| DbError::InvalidData {
                        what: "tenancy.tenant_migration_quarantine.tenant_id",
                        reason: e.to_string(),
                    })
            })
            .collect()
    }
}

/// Where a rollout keeps and changes tenant schemas: PostgreSQL schemas
/// (state in `tenancy.tenant_migrations`) or one SQLite file per tenant
/// (state inside each file).
pub(crate) trait TenantSchemas: Clone + Send + Sync + 'static {
    /// What names one tenant's schema.
    type Target: Clone + Send + Sync + 'static;
    /// The tenant of `t`.
    fn tenant(t: &Self::Target) -> TenantId;
    /// Applied versions and checksums per tenant.
    fn applied(
        &self,
        targets: &[Self::Target],
    ) -> impl Future<Output = Result<HashMap<TenantId, HashMap<i64, String>>, DbError>> + Send;
    /// Migrates one tenant in one transaction; returns (from, to).
    fn migrate_one(
        &self,
        migrator: &TenantMigrator,
        t: &Self::Target,
    ) -> impl Future<Output = Result<(i64, i64), DbError>> + Send;
    /// Records a failed tenant.
    fn quarantine(
        &self,
        t: &Self::Target,
        version: i64,
        error: &str,
    ) -> impl Future<Output = Result<(), DbError>> + Send;
    /// Clears a tenant's quarantine record after a success.
    fn clear_quarantine(
        &self,
        t: &Self::Target,
    ) -> impl Future<Output = Result<(), DbError>> + Send;
}

/// Schema-per-tenant on PostgreSQL.
#[derive(Clone)]
struct PgSchemas {
    pool: PgPool,
}

impl TenantSchemas for PgSchemas {
    type Target = MigrationTarget;

    fn tenant(t: &MigrationTarget) -> TenantId {
        t.tenant
    }

    async fn applied(
        &self,
        targets: &[MigrationTarget],
    ) -> Result<HashMap<TenantId, HashMap<i64, String>>, DbError> {
        // One query for everyone (a single tenant: just that one).
        let only = match targets {
            [one] => Some(one.tenant),
            _ => None,
        };
        applied_in(&self.pool, only).await
    }

    async fn migrate_one(
        &self,
        migrator: &TenantMigrator,
        target: &MigrationTarget,
    ) -> Result<(i64, i64), DbError> {
        let schema = checked(target)?;
        let mut conn = self.pool.acquire().await?;
        let mut tx = conn.begin().await?;
        (&mut *tx)
            .execute(format!("SET LOCAL search_path TO {}", quote_ident(schema)).as_str())
            .await?;
        // One migrator per tenant at a time, across processes.
        sqlx::query(
            "SELECT pg_advisory_xact_lock(hashtext('tenancy.tenant_migrate'), hashtext($1))",
        )
        .bind(target.tenant.to_string())
        .execute(&mut *tx)
        .await?;
        // Read under the lock: another process may have migrated it.
        let done: Vec<(i64, String)> = sqlx::query_as(
            "SELECT version, checksum FROM tenancy.tenant_migrations WHERE tenant_id = $1",
        )
        .bind(target.tenant.as_uuid())
        .fetch_all(&mut *tx)
        .await?;
        let applied: HashMap<i64, String> = done.into_iter().collect();
        let place = format!("schema {schema}");
        let (from, to) =
            apply_pending(&mut tx, migrator, &applied, &place, Some(target.tenant)).await?;
        // Pin every table of the schema to its tenant (new tables included).
        sqlx::query("SELECT tenancy.pin_schema($1, $2)")
            .bind(schema)
            .bind(target.tenant.as_uuid())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok((from, to))
    }

    async fn quarantine(
        &self,
        t: &MigrationTarget,
        version: i64,
        error: &str,
    ) -> Result<(), DbError> {
        quarantine_in(&self.pool, t.tenant, version, error).await
    }

    async fn clear_quarantine(&self, t: &MigrationTarget) -> Result<(), DbError> {
        clear_quarantine_in(&self.pool, t.tenant).await
    }
}

/// Database-per-tenant on PostgreSQL: state inside each tenant database.
#[derive(Clone)]
struct PgDatabases {
    control: PgPool,
    owner: PgConnectOptions,
}

/// The migration ledger inside a tenant database.
const DATABASE_LEDGER: &str = "CREATE SCHEMA IF NOT EXISTS tenancy; \
    CREATE TABLE IF NOT EXISTS tenancy.tenant_migrations (\
    version bigint PRIMARY KEY CHECK (version > 0), name text NOT NULL, checksum text NOT NULL, \
    applied_at timestamptz NOT NULL DEFAULT now())";

impl PgDatabases {
    async fn connect(&self, t: &DatabaseTarget) -> Result<PgConnection, DbError> {
        Placement::database(&t.database).map_err(|e| DbError::Placement {
            tenant: t.tenant,
            reason: e.to_string(),
        })?;
        Ok(self.owner.clone().database(&t.database).connect().await?)
    }
}

impl TenantSchemas for PgDatabases {
    type Target = DatabaseTarget;

    fn tenant(t: &DatabaseTarget) -> TenantId {
        t.tenant
    }

    async fn applied(
        &self,
        targets: &[DatabaseTarget],
    ) -> Result<HashMap<TenantId, HashMap<i64, String>>, DbError> {
        let mut out = HashMap::new();
        for t in targets {
            // A database that cannot be read is left out: the tenant is
            // then pending, and its migration reports why.
            let Ok(mut conn) = self.connect(t).await else {
                continue;
            };
            let rows: Result<Vec<(i64, String)>, _> =
                sqlx::query_as("SELECT version, checksum FROM tenancy.tenant_migrations")
                    .fetch_all(&mut conn)
                    .await;
            conn.close().await?;
            if let Ok(rows) = rows {
                out.insert(t.tenant, rows.into_iter().collect());
            }
        }
        Ok(out)
    }

    async fn migrate_one(
        &self,
        migrator: &TenantMigrator,
        t: &DatabaseTarget,
    ) -> Result<(i64, i64), DbError> {
        let mut conn = self.connect(t).await?;
        let mut tx = conn.begin().await?;
        // One migrator per tenant at a time (also serialises the ledger's creation).
        (&mut *tx)
            .execute("SELECT pg_advisory_xact_lock(hashtext('tenancy.tenant_migrate'), 0)")
            .await?;
        (&mut *tx).execute(DATABASE_LEDGER).await?;
        let done: Vec<(i64, String)> =
            sqlx::query_as("SELECT version, checksum FROM tenancy.tenant_migrations")
                .fetch_all(&mut *tx)
                .await?;
        let applied: HashMap<i64, String> = done.into_iter().collect();
        let place = format!("database {}", t.database);
        let (from, to) = apply_pending(&mut tx, migrator, &applied, &place, None).await?;
        tx.commit().await?;
        conn.close().await?;
        Ok((from, to))
    }

    async fn quarantine(
        &self,
        t: &DatabaseTarget,
        version: i64,
        error: &str,
    ) -> Result<(), DbError> {
        quarantine_in(&self.control, t.tenant, version, error).await
    }

    async fn clear_quarantine(&self, t: &DatabaseTarget) -> Result<(), DbError> {
        clear_quarantine_in(&self.control, t.tenant).await
    }
}

/// Runs the migrations not yet in `applied` on `conn` (inside the caller's
/// transaction) and records each in `tenancy.tenant_migrations` — keyed by
/// `tenant` in the shared ledger, or unkeyed in a tenant database's own.
/// Returns `(from, to)` versions.
async fn apply_pending(
    conn: &mut PgConnection,
    migrator: &TenantMigrator,
    applied: &HashMap<i64, String>,
    place: &str,
    tenant: Option<TenantId>,
) -> Result<(i64, i64), DbError> {
    let from = applied.keys().copied().max().unwrap_or(0);
    let mut to = from;
    for m in migrator.todo(applied)? {
        (&mut *conn)
            .execute(m.sql.as_str())
            .await
            .map_err(|e| DbError::TenantMigration {
                version: m.version,
                reason: format!("({}) failed in {place}: {e}", m.name),
            })?;
        let record = match tenant {
            Some(t) => sqlx::query(
                "INSERT INTO tenancy.tenant_migrations (tenant_id, version, name, checksum) \
                 VALUES ($1, $2, $3, $4)",
            )
            .bind(t.as_uuid()),
            None => sqlx::query(
                "INSERT INTO tenancy.tenant_migrations (version, name, checksum) VALUES ($1, $2, $3)",
            ),
        };
        record
            .bind(m.version)
            .bind(&m.name)
            .bind(&m.checksum)
            .execute(&mut *conn)
            .await?;
        to = to.max(m.version);
    }
    Ok((from, to))
}

/// Records a failed tenant in the control database.
async fn quarantine_in(
    pool: &PgPool,
    tenant: TenantId,
    version: i64,
    error: &str,
) -> Result<(), DbError> {
    sqlx::query(
        "INSERT INTO tenancy.tenant_migration_quarantine (tenant_id, version, error) \
         VALUES ($1, $2, $3) ON CONFLICT (tenant_id) DO UPDATE \
         SET version = EXCLUDED.version, error = EXCLUDED.error, at = now()",
    )
    .bind(tenant.as_uuid())
    .bind(version)
    .bind(error)
    .execute(pool)
    .await?;
    Ok(())
}

async fn clear_quarantine_in(pool: &PgPool, tenant: TenantId) -> Result<(), DbError> {
    sqlx::query("DELETE FROM tenancy.tenant_migration_quarantine WHERE tenant_id = $1")
        .bind(tenant.as_uuid())
        .execute(pool)
        .await?;
    Ok(())
}

/// Applied versions and checksums per tenant, in one query.
async fn applied_in(
    pool: &PgPool,
    only: Option<TenantId>,
) -> Result<HashMap<TenantId, HashMap<i64, String>>, DbError> {
    let rows: Vec<(uuid::Uuid, i64, String)> = sqlx::query_as(
        "SELECT tenant_id, version, checksum FROM tenancy.tenant_migrations \
         WHERE $1::uuid IS NULL OR tenant_id = $1",
    )
    .bind(only.map(|t| t.as_uuid()))
    .fetch_all(pool)
    .await?;
    let mut out: HashMap<TenantId, HashMap<i64, String>> = HashMap::new();
    for (tenant, version, checksum) in rows {
        let tenant = TenantId::from_uuid(tenant).map_err(|e| DbError::InvalidData {
            what: "tenancy.tenant_migrations.tenant_id",
            reason: e.to_string(),
        })?;
        out.entry(tenant).or_default().insert(version, checksum);
    }
    Ok(out)
}

/// The provisioning step that allocates a new tenant's storage for its
/// placement (`allocate_storage`, for [`tenancy_core::provision::Pipeline`]):
///
/// - shared: nothing to allocate (rows go into the shared tables);
/// - schema: creates the schema, grants `USAGE` to the given roles and
///   applies the tenant migrations ([`TenantMigrator::provision`]);
///   idempotent, so a resumed pipeline can run it again;
/// - database: with [`AllocateStorageStep::with_database_template`], creates
///   the tenant's database as a copy of a template database that holds the
///   tenant schema (`CREATE DATABASE .. TEMPLATE ..`; the pool's role needs
///   `CREATEDB`, and nobody may be connected to the template); an existing
///   database is left as is. Serve it with
///   [`DatabaseRouter`](crate::DatabaseRouter). Without a template the step
///   refuses database tenants with a message.
///
/// ```no_run
/// use tenancy_core::provision::Pipeline;
/// use tenancy_sqlx::tenant_migrate::{AllocateStorageStep, TenantMigration, TenantMigrator};
///
/// # fn f(owner: sqlx::PgPool, pipeline: Pipeline) -> Result<(), tenancy_sqlx::DbError> {
/// let migrator = TenantMigrator::new(vec![TenantMigration::new(1, "customers", "CREATE TABLE customers (id uuid)")])?;
/// let pipeline = pipeline.step(AllocateStorageStep::new(owner, migrator, ["app"]));
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct AllocateStorageStep {
    pool: PgPool,
    migrator: TenantMigrator,
    roles: Vec<String>,
    template: Option<String>,
}

impl AllocateStorageStep {
    /// The step over `pool` (a role that may create schemas), applying
    /// `migrator`'s migrations and granting schema usage to `roles`.
    pub fn new<I, S>(pool: PgPool, migrator: TenantMigrator, roles: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            pool,
            migrator,
            roles: roles.into_iter().map(Into::into).collect(),
            template: None,
        }
    }

    /// Creates database tenants as copies of `template` (a database name,
    /// checked like a placement name when the step runs).
    pub fn with_database_template(mut self, template: &str) -> Self {
        self.template = Some(template.to_owned());
        self
    }

    async fn create_database(&self, database: &str) -> Result<(), String> {
        let Some(template) = &self.template else {
            return Err("placement model \"database\" needs a template: \
                        AllocateStorageStep::with_database_template, then serve it with DatabaseRouter"
                .to_owned());
        };
        Placement::database(template).map_err(|e| format!("database template: {e}"))?;
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
                .bind(database)
                .fetch_one(&self.pool)
                .await
                .map_err(|e| e.to_string())?;
        if exists {
            return Ok(());
        }
        let create = format!(
            "CREATE DATABASE {} TEMPLATE {}",
            quote_ident(database),
            quote_ident(template)
        );
        match sqlx::raw_sql(&create).execute(&self.pool).await {
            Ok(_) => Ok(()),
            // 42P04 duplicate_database: a concurrent run created it.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P04") => Ok(()),
            Err(e) => Err(format!("creating database {database} from {template}: {e}")),
        }
    }
}

#[async_trait::async_trait]
impl tenancy_core::provision::ProvisionStep for AllocateStorageStep {
    fn name(&self) -> &str {
        "allocate_storage"
    }

    async fn run(&self, tenant: &tenancy_core::Tenant) -> Result<(), String> {
        match &tenant.placement {
            Placement::Shared => Ok(()),
            Placement::Schema { .. } => {
                let target = MigrationTarget::from_tenant(tenant)
                    .ok_or_else(|| "schema placement without a schema".to_owned())?;
                let roles: Vec<&str> = self.roles.iter().map(String::as_str).collect();
                self.migrator
                    .provision(&self.pool, &target, &roles)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
            Placement::Database { .. } => {
                let name = tenant
                    .placement
                    .checked_name()
                    .map_err(|e| e.to_string())?
                    .ok_or_else(|| "database placement without a name".to_owned())?;
                self.create_database(name).await
            }
            other => Err(format!(
                "placement model {:?} is not allocated by AllocateStorageStep",
                other.model()
            )),
        }
    }
}

fn checked(target: &MigrationTarget) -> Result<&str, DbError> {
    Placement::schema(&target.schema).map_err(|e| DbError::Placement {
        tenant: target.tenant,
        reason: e.to_string(),
    })?;
    Ok(&target.schema)
}
