//! Provisioning and deprovisioning in PostgreSQL: the pipeline log, and the
//! offboarding job that exports, purges and crypto-shreds a tenant.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures_util::TryStreamExt as _;
use sqlx::PgPool;
use tenancy_core::audit::{AuditEvent, AuditSink};
use tenancy_core::crypto::keys::Keyring;
use tenancy_core::lifecycle::{Lifecycle, Transition};
use tenancy_core::provision::{ProvisioningLog, StepRecord, StepStatus};
use tenancy_core::{StoreError, Tenant, TenantId};

use crate::rls::{TenantTable, quote_ident};
use crate::{DbError, TenantDb};

/// Pipeline progress in `tenancy.provisioning_log` (a system table: use a
/// pool of the provisioning role, see [`crate::migrate::grant_system_write`]).
#[derive(Debug, Clone)]
pub struct PgProvisioningLog {
    pool: PgPool,
}

impl PgProvisioningLog {
    /// A log written through `pool`.
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

#[async_trait]
impl ProvisioningLog for PgProvisioningLog {
    async fn steps(&self, tenant: TenantId) -> Result<Vec<StepRecord>, StoreError> {
        let rows: Vec<(String, i32, String, i32, Option<String>, DateTime<Utc>)> = sqlx::query_as(
            "SELECT step, position, status, attempts, error, updated_at \
             FROM tenancy.provisioning_log WHERE tenant_id = $1 ORDER BY position",
        )
        .bind(tenant.as_uuid())
        .fetch_all(&self.pool)
        .await
        .map_err(StoreError::new)?;
        rows.into_iter()
            .map(|(step, position, status, attempts, error, at)| {
                Ok(StepRecord::new(
                    step,
                    u32::try_from(position).map_err(StoreError::new)?,
                    StepStatus::parse(&status).ok_or_else(|| {
                        StoreError::msg(format!("unknown step status {status:?}"))
                    })?,
                    u32::try_from(attempts).map_err(StoreError::new)?,
                    error,
                    at,
                ))
            })
            .collect()
    }

    async fn save(&self, tenant: TenantId, r: &StepRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO tenancy.provisioning_log (tenant_id, step, position, status, attempts, error, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (tenant_id, step) DO UPDATE SET \
             position = EXCLUDED.position, status = EXCLUDED.status, attempts = EXCLUDED.attempts, \
             error = EXCLUDED.error, updated_at = EXCLUDED.updated_at",
        )
        .bind(tenant.as_uuid())
        .bind(&r.step)
        .bind(i32::try_from(r.position).map_err(StoreError::new)?)
        .bind(r.status.as_str())
        .bind(i32::try_from(r.attempts).map_err(StoreError::new)?)
        .bind(&r.error)
        .bind(r.updated_at)
        .execute(&self.pool)
        .await
        .map_err(StoreError::new)?;
        Ok(())
    }
}

/// What [`Deprovisioner::export`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ExportReport {
    /// One file per table (`<schema>.<table>.jsonl`) with its row count.
    pub files: Vec<(PathBuf, u64)>,
}

/// What [`Deprovisioner::purge`] removed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PurgeReport {
    /// Rows deleted per table.
    pub deleted: Vec<(String, u64)>,
}

/// Offboarding: export a tenant's data, then purge it — delete its rows,
/// crypto-shred its keys, mark it deleted and record a final audit event.
///
/// The role behind `db` needs DELETE on the tenant tables: for the
/// library's own, see [`crate::migrate::grant_purge`]. It stays subject to
/// row-level security (use a non-BYPASSRLS role).
///
/// Purging goes through the lifecycle, so it is refused unless the tenant
/// is offboarding and its grace period (the configurable retention) is
/// over. Rows are deleted in one tenant-scoped transaction (row-level
/// security confines it to the tenant, and every statement also filters by
/// the tenant column); the audit log itself is kept, append-only.
///
/// ```no_run
/// # async fn example(db: tenancy_sqlx::TenantDb, lifecycle: tenancy_core::lifecycle::Lifecycle,
/// #   keys: std::sync::Arc<tenancy_core::crypto::keys::Keyring>, tenant: tenancy_core::Tenant) -> Result<(), tenancy_sqlx::DbError> {
/// use tenancy_sqlx::Deprovisioner;
/// use tenancy_sqlx::rls::TenantTable;
///
/// let job = Deprovisioner::new(db, lifecycle, vec![TenantTable::new("customers"), TenantTable::new("policies")])
///     .with_keys(keys);
/// job.export(tenant.id, std::path::Path::new("/var/exports/acme")).await?;
/// job.purge(&tenant).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Deprovisioner {
    db: TenantDb,
    lifecycle: Lifecycle,
    tables: Vec<TenantTable>,
    keys: Option<Arc<Keyring>>,
    audit: Option<Arc<dyn AuditSink>>,
    system: Option<PgPool>,
}

impl std::fmt::Debug for Deprovisioner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deprovisioner")
            .field("tables", &self.tables.len())
            .finish_non_exhaustive()
    }
}

impl Deprovisioner {
    /// A job over the application's tenant `tables` (plus the library's own
    /// tenant tables: settings, keys metadata, quota state).
    pub fn new(db: TenantDb, lifecycle: Lifecycle, tables: Vec<TenantTable>) -> Self {
        Self {
            db,
            lifecycle,
            tables,
            keys: None,
            audit: None,
            system: None,
        }
    }

    /// Crypto-shreds the tenant's keys on purge.
    pub fn with_keys(mut self, keys: Arc<Keyring>) -> Self {
        self.keys = Some(keys);
        self
    }

    /// Records the final `tenant.deprovisioned` event.
    pub fn with_audit(mut self, sink: Arc<dyn AuditSink>) -> Self {
        self.audit = Some(sink);
        self
    }

    /// Also removes the tenant's memberships and custom domains (system
    /// tables) through `pool`, a provisioning-role pool.
    pub fn with_system_pool(mut self, pool: PgPool) -> Self {
        self.system = Some(pool);
        self
    }

    fn library_tables() -> [&'static str; 4] {
        [
            "tenancy.tenant_settings",
            "tenancy.quota_usage",
            "tenancy.quota_records",
            "tenancy.monthly_usage",
        ]
    }

    /// Writes every row of the tenant, one JSON object per line, into one
    /// file per table under `dir` (created if missing).
    pub async fn export(&self, tenant: TenantId, dir: &Path) -> Result<ExportReport, DbError> {
        std::fs::create_dir_all(dir).map_err(|e| io_error(dir, &e))?;
        let mut files = Vec::new();
        let mut tx = self.db.begin_for_id(tenant).await?;
        let mut targets: Vec<(String, String, String)> = self
            .tables
            .iter()
            .map(|t| {
                (
                    t.display_name(),
                    t.qualified_name(),
                    quote_ident(t.tenant_column_name()),
                )
            })
            .collect();
        targets.push((
            "tenancy.tenant_settings".into(),
            "tenancy.tenant_settings".into(),
            "tenant_id".into(),
        ));
        for (name, table, column) in targets {
            let path = dir.join(format!("{name}.jsonl"));
            let file = std::fs::File::create(&path).map_err(|e| io_error(&path, &e))?;
            let mut out = std::io::BufWriter::new(file);
            let sql = format!("SELECT row_to_json(t)::text FROM {table} t WHERE {column} = $1");
            let mut rows = sqlx::query_scalar::<_, String>(&sql)
                .bind(tenant.as_uuid())
                .fetch(&mut *tx);
            let mut n = 0u64;
            while let Some(line) = rows.try_next().await? {
                writeln!(out, "{line}").map_err(|e| io_error(&path, &e))?;
                n += 1;
            }
            drop(rows);
            out.flush().map_err(|e| io_error(&path, &e))?;
            files.push((path, n));
        }
        tx.commit().await?;
        tracing::info!(tenant.id = %tenant, files = files.len(), "tenant data exported");
        Ok(ExportReport { files })
    }

    /// Purges an offboarding tenant whose grace period is over.
    pub async fn purge(&self, tenant: &Tenant) -> Result<PurgeReport, DbError> {
        // Check the transition first: nothing is deleted for a tenant that
        // may not be purged yet.
        tenancy_core::lifecycle::next_status(&tenant.status, &Transition::Purge, Utc::now())
            .map_err(|e| DbError::Lifecycle(e.to_string()))?;
        let mut deleted = Vec::new();
        let mut tx = self.db.begin_for_id(tenant.id).await?;
        let mut targets: Vec<(String, String, String)> = self
            .tables
            .iter()
            .map(|t| {
                (
                    t.display_name(),
                    t.qualified_name(),
                    quote_ident(t.tenant_column_name()),
                )
            })
            .collect();
        targets.extend(
            Self::library_tables()
                .iter()
                .map(|t| ((*t).to_owned(), (*t).to_owned(), "tenant_id".to_owned())),
        );
        for (name, table, column) in targets {
            let done = sqlx::query(&format!("DELETE FROM {table} WHERE {column} = $1"))
                .bind(tenant.id.as_uuid())
                .execute(&mut *tx)
                .await?;
            deleted.push((name, done.rows_affected()));
        }
        tx.commit().await?;
        if let Some(pool) = &self.system {
            let mut tx = pool.begin().await?;
            for table in ["tenancy.memberships", "tenancy.tenant_domains"] {
                let done = sqlx::query(&format!("DELETE FROM {table} WHERE tenant_id = $1"))
                    .bind(tenant.id.as_uuid())
                    .execute(&mut *tx)
                    .await?;
                deleted.push((table.to_owned(), done.rows_affected()));
            }
            tx.commit().await?;
        }
        if let Some(keys) = &self.keys {
            keys.shred(tenant.id)
                .await
                .map_err(|e| DbError::Lifecycle(format!("crypto-shredding failed: {e}")))?;
        }
        self.lifecycle
            .apply(tenant, Transition::Purge, "deprovisioning")
            .await
            .map_err(|e| DbError::Lifecycle(e.to_string()))?;
        if let Some(sink) = &self.audit {
            let details = serde_json::json!({
                "deleted": deleted.iter().map(|(t, n)| (t.clone(), *n)).collect::<std::collections::BTreeMap<_, _>>(),
                "keys_shredded": self.keys.is_some(),
            });
            let event = AuditEvent::system(
                tenant.id,
                "deprovisioning",
                "tenant.deprovisioned",
                "tenant",
            )
            .with_resource_id(tenant.id)
            .with_details(details);
            sink.record(event)
                .await
                .map_err(|e| DbError::AuditLog(e.to_string()))?;
        }
        tracing::warn!(tenant.id = %tenant.id, "tenant purged");
        Ok(PurgeReport { deleted })
    }
}

fn io_error(path: &Path, e: &std::io::Error) -> DbError {
    DbError::Export(format!("{}: {e}", path.display()))
}
