//! Operations on whole tenants, shared by the command line and the API:
//! export (JSON Lines per table, sensitive fields decrypted for the tenant's
//! own copy) and purge (crypto-shredding, then the tenant's data removed).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;
use tenancy_core::audit::{Action, AuditEvent};
use tenancy_core::lifecycle::{Transition, next_status};
use tenancy_core::{Tenant, TenantContext, TenantStatus, UserId};

use crate::api::ApiError;
use crate::api::customers::Customer;
use crate::data::{Data, TENANT_TABLES, Tx};
use crate::sensitive;

/// An operator acts as a tenant's user: an explicit, time-limited grant
/// (1–60 minutes), recorded in the tenant's audit log before the token is
/// handed out (`impersonate`, by `operator:<name>`, with the user, the
/// reason and the expiry). The token has no refresh token; everything done
/// with it is audited with both identities (`impersonated_by`), and it
/// cannot change credentials or security settings. Returns the token and
/// its lifetime in seconds.
pub async fn impersonate(
    data: &Data,
    sessions: &crate::auth::Sessions,
    tenant: &Tenant,
    email: &str,
    operator: &str,
    reason: &str,
    minutes: u64,
) -> Result<(String, u64), ApiError> {
    if operator.trim().is_empty() || reason.trim().is_empty() {
        return Err(ApiError::invalid(
            "an impersonation needs the operator's name and a reason",
        ));
    }
    if !(1..=60).contains(&minutes) {
        return Err(ApiError::invalid("an impersonation lasts 1 to 60 minutes"));
    }
    let (user, _) = data
        .user_by_email(&email.trim().to_lowercase())
        .await?
        .ok_or_else(|| ApiError::not_found("user"))?;
    let actor = tenancy_core::Authorizer::new(Arc::new(data.memberships()), data.store())
        .sign_in(&UserId::new(user.clone()), tenant)
        .await
        .map_err(|_| ApiError::forbidden("that user cannot act in this tenant"))?;
    let operator = format!("operator:{}", operator.trim());
    let ttl = minutes * 60;
    let ctx = TenantContext::new(tenant.clone());
    let mut tx = data.begin_write(&ctx).await?;
    data.audit()
        .append(
            &mut tx,
            AuditEvent::system(tenant.id, &operator, "impersonate", "session").with_details(
                serde_json::json!({
                    "user": user,
                    "reason": reason.trim(),
                    "expires_at": chrono::Utc::now() + chrono::Duration::seconds(i64::try_from(ttl).unwrap_or(3600)),
                }),
            ),
        )
        .await?;
    tx.commit().await?;
    let token = sessions
        .issue_impersonation(&user, tenant.id, actor.role, &operator, ttl)
        .await?;
    Ok((token, ttl))
}

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

/// Writes [`export_rows`] as `<dir>/<table>.jsonl`, owner-readable only
/// (mode 0600). The files must not exist yet: an existing file — or a
/// symbolic link planted where one will be written — is refused, never
/// followed or overwritten.
pub async fn export_to(
    data: &Data,
    tenant: &Tenant,
    dir: &Path,
    actor: &str,
) -> Result<ExportCounts, ApiError> {
    let io = |e: std::io::Error| ApiError::internal(format!("export to {}: {e}", dir.display()));
    std::fs::create_dir_all(dir).map_err(io)?;
    // Every file is created before any row is read: a refused export reads
    // (and audits) nothing, and leaves nothing behind.
    let mut files = Vec::new();
    for table in TENANT_TABLES {
        let path: PathBuf = dir.join(format!("{table}.jsonl"));
        match private_file(&path) {
            Ok(f) => files.push((table, path, f)),
            Err(e) => {
                for (_, created, _) in &files {
                    let _ = std::fs::remove_file(created);
                }
                return Err(if e.kind() == std::io::ErrorKind::AlreadyExists {
                    ApiError::conflict(format!(
                        "{} already exists: export into a new directory",
                        path.display()
                    ))
                } else {
                    io(e)
                });
            }
        }
    }
    let mut rows = export_rows(data, tenant, actor).await?;
    let mut counts = Vec::new();
    for (table, _, mut f) in files {
        let table_rows = rows
            .iter_mut()
            .find(|(t, _)| *t == table)
            .map(|(_, r)| std::mem::take(r))
            .unwrap_or_default();
        for r in &table_rows {
            serde_json::to_writer(&mut f, r).map_err(|e| ApiError::internal(e.to_string()))?;
            f.write_all(b"\n").map_err(io)?;
        }
        f.sync_all().map_err(io)?;
        counts.push((table.to_owned(), table_rows.len() as u64));
    }
    Ok(counts)
}

/// A new file only the owner can read: `O_CREAT | O_EXCL` (fails on an
/// existing file or any symbolic link, dangling or not), mode 0600.
#[cfg(unix)]
pub fn private_file(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

#[cfg(not(unix))]
pub fn private_file(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
}

/// Starts offboarding: the tenant is refused from now on (403
/// `tenant-offboarding`), its data kept for `grace_days`.
pub async fn offboard(data: &Data, tenant: &Tenant, grace_days: i64) -> Result<Tenant, ApiError> {
    if grace_days < 0 {
        return Err(ApiError::invalid("grace days must not be negative"));
    }
    let grace = chrono::Duration::days(grace_days);
    Ok(data
        .transition(tenant, Transition::Offboard { grace }, "operator")
        .await?)
}

/// An operator changes a tenant's plan directly — no billing confirmation,
/// any pending request dropped — checked against `catalog`; billing is told
/// (`plan.changed` in the outbox, in the same store transaction) and the
/// change is audited in the tenant's log.
pub async fn set_plan(
    data: &Data,
    catalog: &tenancy_core::plan::PlanCatalog,
    tenant: &Tenant,
    plan: &str,
    actor: &str,
) -> Result<Arc<Tenant>, ApiError> {
    let plan = tenancy_core::PlanId::new(plan.to_owned());
    catalog
        .entitlements(&plan, &tenant.plan_overrides)
        .map_err(|e| ApiError::invalid(e.to_string()))?;
    let from = tenant.plan.as_ref().map(ToString::to_string);
    let next = data
        .update_tenant(
            tenant.id,
            &tenancy_core::store::TenantUpdate::new()
                .plan(Some(plan.clone()))
                .settings_patch(serde_json::json!({ "plan_request": null }))
                .emit(tenancy_core::outbox::OutboxMessage::new(
                    tenant.id,
                    crate::billing::BILLING,
                    "plan.changed",
                    serde_json::json!({ "from": from, "to": plan.as_str(), "by": actor }),
                )),
        )
        .await?;
    let ctx = TenantContext::new(next.clone());
    let mut tx = data.begin_write(&ctx).await?;
    data.audit()
        .append(
            &mut tx,
            AuditEvent::system(tenant.id, actor, "plan.changed", "tenant")
                .with_details(serde_json::json!({ "from": from, "to": plan.as_str() })),
        )
        .await?;
    tx.commit().await?;
    Ok(next)
}

/// Purges an offboarded tenant whose grace period is over: crypto-shreds
/// its keys and its customers' subject keys (nothing it encrypted can be
/// read again, backups included),
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
    // The subject keys were wrapped by the KEKs just destroyed; their
    // entries go too.
    data.subjects()
        .purge(tenant.id)
        .await
        .map_err(|e| ApiError::internal(format!("removing subject keys: {e}")))?;
    data.audit_archive()
        .purge(tenant.id)
        .map_err(|e| ApiError::internal(format!("removing the audit archive: {e}")))?;
    data.remove_tenant_data(tenant).await?;
    for m in data.memberships().members_of(tenant.id).await? {
        data.memberships()
            .remove(&UserId::new(m.user_id.as_str().to_owned()), tenant.id)
            .await?;
    }
    Ok(data
        .transition(tenant, Transition::Purge, "operator")
        .await?)
}
