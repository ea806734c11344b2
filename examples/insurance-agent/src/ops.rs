//! Operations on whole tenants, shared by the command line and the API:
//! export (JSON Lines per table, sensitive fields decrypted for the tenant's
//! own copy) and purge (crypto-shredding, then the tenant's data removed).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;
use tenancy_core::audit::{Action, AuditEvent};
use tenancy_core::destruction::{
    CertificateSigner, DestructionCertificate, DestructionRecord, ExportEvidence,
};
use tenancy_core::lifecycle::{Transition, next_status};
use tenancy_core::{Tenant, TenantContext, TenantStatus, UserId};
use tenancy_sqlx::AuditQuery;

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
    let next = data
        .transition(tenant, Transition::Offboard { grace }, "operator")
        .await?;
    // Recorded in the tenant's own log: the purge looks for an export made
    // after it.
    let ctx = TenantContext::new(next.clone());
    let mut tx = data.begin_write(&ctx).await?;
    data.audit()
        .append(
            &mut tx,
            AuditEvent::system(tenant.id, "operator", OFFBOARD, "tenant")
                .with_resource_id(tenant.id)
                .with_details(serde_json::json!({ "grace_days": grace_days })),
        )
        .await?;
    tx.commit().await?;
    Ok(next)
}

/// The audit action recorded when offboarding starts.
pub const OFFBOARD: &str = "offboard";

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

/// How a purge is done.
#[derive(Debug, Clone, Copy)]
pub struct PurgeOptions<'a> {
    /// Refuse unless the tenant was exported (`tenant export`) after its
    /// offboarding started. On by default; an operator may waive it, and the
    /// certificate says so.
    pub require_export: bool,
    /// Who purges (recorded in the certificate).
    pub operator: &'a str,
}

impl Default for PurgeOptions<'_> {
    fn default() -> Self {
        Self {
            require_export: true,
            operator: "operator",
        }
    }
}

/// The latest whole-tenant export recorded after the latest offboarding.
async fn export_after_offboarding(
    data: &Data,
    tx: &mut Tx,
) -> Result<Option<ExportEvidence>, ApiError> {
    let newest = |action: &'static str| AuditQuery::new().action(action).limit(1);
    let offboarded = data.audit().query(tx, &newest(OFFBOARD)).await?;
    let since = offboarded.events.first().map_or(u64::MAX, |(seq, _)| *seq);
    let exports = data
        .audit()
        .query(tx, &newest(Action::EXPORT).resource_type("tenant"))
        .await?;
    Ok(exports
        .events
        .into_iter()
        .find(|(seq, _)| *seq > since)
        .map(|(seq, e)| ExportEvidence {
            at: e.at,
            by: e.actor.id().to_owned(),
            records: e.record_count,
            audit_seq: seq,
        }))
}

/// The signer of destruction certificates: `destruction.key` in the data
/// directory (created on first use). Publish its public key.
pub fn certificate_signer(data: &Data) -> Result<CertificateSigner, ApiError> {
    let seed = crate::data::secret_file(data.dir(), "destruction.key")?;
    Ok(CertificateSigner::from_seed(seed))
}

/// Purges an offboarded tenant whose grace period is over — after checking
/// that it was exported since offboarding began (unless waived): counts what
/// it holds, crypto-shreds its keys and its customers' subject keys (nothing
/// it encrypted can be read again, backups included), destroys its audit
/// log (live and archived), deletes its data (its file on SQLite, its rows
/// on PostgreSQL), removes its memberships and marks it deleted. Returns the
/// tenant and a signed destruction certificate, also written to
/// `certificates/<tenant id>.json` in the data directory.
pub async fn purge(
    data: &Data,
    tenant: &Tenant,
    options: PurgeOptions<'_>,
) -> Result<(Tenant, DestructionCertificate), ApiError> {
    let next = next_status(&tenant.status, &Transition::Purge, chrono::Utc::now())
        .map_err(|e| ApiError::conflict(e.to_string()))?;
    debug_assert!(matches!(next, TenantStatus::Deleted));
    let purge_after = match tenant.status {
        TenantStatus::Offboarding { purge_after } => Some(purge_after),
        _ => None,
    };
    // What there is, before anything is destroyed.
    let ctx = TenantContext::new(tenant.clone());
    let mut tx = data.begin(&ctx).await?;
    let export = export_after_offboarding(data, &mut tx).await?;
    if options.require_export && export.is_none() {
        return Err(ApiError::conflict(
            "export the tenant first (`tenant export SLUG --out DIR`) after offboarding began, \
             or purge with --without-export",
        ));
    }
    let mut rows = std::collections::BTreeMap::new();
    for table in TENANT_TABLES {
        let n: i64 = crate::on!(
            tx,
            sqlx::query_scalar(&format!("SELECT count(*) FROM \"{table}\"")),
            fetch_one
        )?;
        rows.insert(table.to_owned(), u64::try_from(n).unwrap_or(0));
    }
    let audit = data
        .audit()
        .verify_archive(&mut tx, &data.audit_archive(), &[])
        .await?;
    tx.commit().await?;
    let versions = data
        .keyring()
        .versions(tenant.id)
        .await
        .map_err(|e| ApiError::internal(format!("reading key versions: {e}")))?;
    let segments = data
        .audit_archive()
        .paths(tenant.id)
        .map_err(|e| ApiError::internal(e.to_string()))?;

    data.keyring()
        .shred(tenant.id)
        .await
        .map_err(|e| ApiError::internal(format!("shredding keys: {e}")))?;
    // The subject keys were wrapped by the keys just destroyed; their
    // entries go too.
    let subject_keys = data
        .subjects()
        .purge(tenant.id)
        .await
        .map_err(|e| ApiError::internal(format!("removing subject keys: {e}")))?;
    // The audit log goes whatever the state of its chain (whether it
    // verified is in the certificate): on PostgreSQL its rows, as the
    // owner; on SQLite with the tenant's file. Then its archive.
    let purged_events = data.purge_audit(tenant).await?;
    data.audit_archive()
        .purge(tenant.id)
        .map_err(|e| ApiError::internal(format!("removing the audit archive: {e}")))?;
    data.remove_tenant_data(tenant).await?;
    for m in data.memberships().members_of(tenant.id).await? {
        data.memberships()
            .remove(&UserId::new(m.user_id.as_str().to_owned()), tenant.id)
            .await?;
    }
    let gone = data
        .transition(tenant, Transition::Purge, options.operator)
        .await?;

    let mut record = DestructionRecord::new(tenant.id, tenant.slug.as_str(), chrono::Utc::now());
    record.purge_after = purge_after;
    record.data_key_versions = versions.iter().map(|(v, _)| *v).collect();
    record.keks_destroyed = true;
    record.subject_keys = subject_keys;
    record.rows = rows;
    // The live log as destroyed (on PostgreSQL: counted as it went, with
    // the events the purge itself appended), and the archive.
    record.audit_events = audit.archived_rows + audit.live_rows.max(purged_events);
    record.audit_segments = segments.len() as u64;
    record.audit_chain_intact = audit.is_intact();
    record.export = export;
    record.purged_by = options.operator.to_owned();
    let cert = certificate_signer(data)?
        .sign(record)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let dir = data.dir().join("certificates");
    std::fs::create_dir_all(&dir).map_err(|e| ApiError::internal(e.to_string()))?;
    let path = dir.join(format!("{}.json", tenant.id));
    let mut f =
        private_file(&path).map_err(|e| ApiError::internal(format!("{}: {e}", path.display())))?;
    serde_json::to_writer_pretty(&mut f, &cert).map_err(|e| ApiError::internal(e.to_string()))?;
    f.sync_all()
        .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok((gone, cert))
}
