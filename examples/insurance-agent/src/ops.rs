//! Operations on whole tenants, shared by the command line and the API:
//! export (JSON Lines per table, sensitive fields decrypted for the tenant's
//! own copy) and purge (crypto-shredding, then the tenant's data removed).

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::Value;
use tenancy_core::audit::{Action, AuditEvent};
use tenancy_core::lifecycle::{Transition, next_status};
use tenancy_core::{Tenant, TenantContext, TenantStatus, UserId};

use crate::api::ApiError;
use crate::api::customers::Customer;
use crate::data::{Data, TENANT_TABLES, Tx};
use crate::sensitive;

/// Rows written per table.
pub type ExportCounts = Vec<(String, u64)>;

/// Every row of every tenant table as JSON objects (customers with their
/// sensitive fields decrypted instead of their ciphertext columns), and the
/// export recorded in the tenant's audit log (`export`, with the row count).
pub async fn export_rows(
    data: &Data,
    tenant: &Tenant,
    actor: &str,
) -> Result<Vec<(String, Vec<Value>)>, ApiError> {
    let ctx = TenantContext::new(tenant.clone());
    let mut tx = data.begin_write(&ctx).await?;
    let mut out = Vec::new();
    let mut total = 0u64;
    for table in TENANT_TABLES {
        let rows: Vec<Value> = if table == "customers" {
            let customers: Vec<Customer> = crate::on!(
                tx,
                sqlx::query_as(&format!(
                    "SELECT {} FROM customers ORDER BY id",
                    crate::api::customers::COLUMNS
                )),
                fetch_all
            )?;
            let mut rows = Vec::with_capacity(customers.len());
            for mut c in customers {
                c.sensitive = sensitive::open(data, tenant.id, c.id, &c.sealed).await?;
                rows.push(serde_json::to_value(&c).map_err(|e| ApiError::internal(e.to_string()))?);
            }
            rows
        } else {
            // Each row as a JSON object, in each backend's own way.
            let texts: Vec<String> = match tx.tx() {
                Tx::Sqlite(t) => {
                    // json_object over every column, from the table's own schema.
                    let cols: Vec<String> = sqlx::query_scalar(&format!(
                        "SELECT name FROM pragma_table_info('{table}')"
                    ))
                    .fetch_all(&mut **t)
                    .await?;
                    let pairs = cols
                        .iter()
                        .map(|c| format!("'{c}', \"{c}\""))
                        .collect::<Vec<_>>()
                        .join(", ");
                    sqlx::query_scalar(&format!(
                        "SELECT json_object({pairs}) FROM \"{table}\" ORDER BY id"
                    ))
                    .fetch_all(&mut **t)
                    .await?
                }
                Tx::Postgres(t) => {
                    sqlx::query_scalar(&format!(
                        "SELECT row_to_json(r)::text FROM \"{table}\" r ORDER BY id"
                    ))
                    .fetch_all(&mut **t)
                    .await?
                }
            };
            texts
                .iter()
                .map(|t| serde_json::from_str(t).map_err(|e| ApiError::internal(e.to_string())))
                .collect::<Result<_, _>>()?
        };
        total += rows.len() as u64;
        out.push((table.to_owned(), rows));
    }
    data.audit()
        .append(
            &mut tx,
            AuditEvent::user(tenant.id, actor, Action::EXPORT, "tenant")
                .with_resource_id(tenant.id)
                .with_record_count(total),
        )
        .await?;
    tx.commit().await?;
    Ok(out)
}

/// Writes [`export_rows`] as `<dir>/<table>.jsonl`, owner-readable only.
pub async fn export_to(
    data: &Data,
    tenant: &Tenant,
    dir: &Path,
    actor: &str,
) -> Result<ExportCounts, ApiError> {
    let io = |e: std::io::Error| ApiError::internal(format!("export to {}: {e}", dir.display()));
    std::fs::create_dir_all(dir).map_err(io)?;
    let mut counts = Vec::new();
    for (table, rows) in export_rows(data, tenant, actor).await? {
        let path: PathBuf = dir.join(format!("{table}.jsonl"));
        let mut f = private_file(&path).map_err(io)?;
        for r in &rows {
            serde_json::to_writer(&mut f, r).map_err(|e| ApiError::internal(e.to_string()))?;
            f.write_all(b"\n").map_err(io)?;
        }
        f.sync_all().map_err(io)?;
        counts.push((table, rows.len() as u64));
    }
    Ok(counts)
}

#[cfg(unix)]
fn private_file(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
}

#[cfg(not(unix))]
fn private_file(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::File::create(path)
}

/// Starts offboarding: the tenant is refused from now on (403
/// `tenant-offboarding`), its data kept for `grace_days`.
pub async fn offboard(data: &Data, tenant: &Tenant, grace_days: i64) -> Result<Tenant, ApiError> {
    let next = next_status(
        &tenant.status,
        &Transition::Offboard {
            grace: if grace_days >= 0 {
                chrono::Duration::days(grace_days)
            } else {
                return Err(ApiError::invalid("grace days must not be negative"));
            },
        },
        chrono::Utc::now(),
    )
    .map_err(|e| ApiError::conflict(e.to_string()))?;
    let t = tenant.clone().with_status(next);
    data.save_tenant(&t).await?;
    Ok(t)
}

/// Purges an offboarded tenant whose grace period is over: crypto-shreds
/// its keys (nothing it encrypted can be read again, backups included),
/// deletes its data (its file on SQLite, its rows on PostgreSQL), removes its
/// memberships, and marks it deleted.
pub async fn purge(data: &Data, tenant: &Tenant) -> Result<Tenant, ApiError> {
    let next = next_status(&tenant.status, &Transition::Purge, chrono::Utc::now())
        .map_err(|e| ApiError::conflict(e.to_string()))?;
    debug_assert!(matches!(next, TenantStatus::Deleted));
    data.keyring()
        .shred(tenant.id)
        .await
        .map_err(|e| ApiError::internal(format!("shredding keys: {e}")))?;
    data.remove_tenant_data(tenant).await?;
    for m in data.memberships().members_of(tenant.id).await? {
        data.memberships()
            .remove(&UserId::new(m.user_id.as_str().to_owned()), tenant.id)
            .await?;
    }
    let t = tenant.clone().with_status(next);
    data.save_tenant(&t).await?;
    Ok(t)
}
