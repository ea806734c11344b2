//! Tenant backup and restore: one tenant's record, members, wrapped keys,
//! customers' subject keys and every application table, in the portable
//! sealed stream of `tenancy_core::backup`, restorable into either backend
//! (a SQLite file of its own, or the shared PostgreSQL tables).
//!
//! A backup is written as a stream from one tenant transaction (a
//! consistent snapshot, memory flat however large the tenant). Its audit
//! log — the retained archive and the live log — comes last; a restore
//! re-appends it only into an empty log (a live tenant's log is
//! append-only and stays as it is). A restore
//! first copies the file into the data directory (so no one can change it
//! in between), then reads the copy twice: once to verify the seal and
//! every table's columns (nothing is written from an altered backup), then
//! to load it, each table in its own transaction and
//! checked against the verified manifest; the tables done are recorded in
//! the data directory (`restores/<tenant>.progress`, bound to the backup's
//! manifest), so an interrupted restore resumes where it stopped when asked
//! to (`resume`). A customer forgotten since the backup stays forgotten; on
//! replace, members are those of the backup; a purged tenant is not
//! restored under its id. The restore is recorded in the tenant's log.
//!
//! The keys in a backup are wrapped by the source deployment's KEKs: a
//! restore needs the same key provider (`master.key` and `keks.json`, or the
//! same KMS). [`restore_from`] restores the tenant under the same id;
//! [`clone_from`] as a new tenant, re-encrypted under its own keys.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use chrono::Utc;
use serde_json::{Value, json};
use tenancy_core::audit::AuditEvent;
use tenancy_core::audit::chain::{ChainBreak, ChainVerifier, ChainedEvent, GENESIS};
use tenancy_core::backup::{
    BackupEvent, BackupHeader, BackupKey, BackupReader, BackupWriter, ColumnType, Manifest,
    TableSum,
};
use tenancy_core::crypto::keys::{KeyState, StoredKey};
use tenancy_core::crypto::subject::{StoredSubjectKey, SubjectId};
use tenancy_core::lifecycle::Transition;
use tenancy_core::store::TenantStore as _;
use tenancy_core::{Membership, Tenant, TenantContext};
use tenancy_sqlx::backup::TableSpec;

use crate::api::ApiError;
use crate::data::{Data, Tx};

use ColumnType::{Bool, Bytes, Date, Int, Json, Text, Timestamp, Uuid};

/// The application's tables, parents first, with portable column types.
pub fn app_tables() -> Vec<TableSpec> {
    vec![
        TableSpec::new(
            "agents",
            "created_at, id",
            &[
                ("tenant_id", Uuid),
                ("id", Uuid),
                ("user_id", Text),
                ("agent_code", Text),
                ("name", Text),
                ("licence_number", Text),
                ("licence_expiry", Date),
                ("experience_years", Int),
                ("business_name", Text),
                ("regions", Json),
                ("manager_id", Uuid),
                ("compliance_status", Text),
                ("active", Bool),
                ("created_at", Timestamp),
            ],
        ),
        TableSpec::new(
            "customers",
            "id",
            &[
                ("tenant_id", Uuid),
                ("id", Uuid),
                ("agent_id", Uuid),
                ("first_name", Text),
                ("last_name", Text),
                ("date_of_birth", Date),
                ("email", Text),
                ("customer_type", Text),
                ("risk_profile", Text),
                ("lifecycle_stage", Text),
                ("engagement_score", Int),
                ("kyc_status", Text),
                ("shared", Bool),
                ("active", Bool),
                ("created_at", Timestamp),
                ("phone_enc", Text),
                ("phone_index", Bytes),
                ("pan_enc", Text),
                ("pan_index", Bytes),
                ("aadhaar_enc", Text),
                ("bank_account_enc", Text),
                ("medical_history_enc", Text),
                ("erased_at", Timestamp),
            ],
        ),
        TableSpec::new(
            "policies",
            "id",
            &[
                ("tenant_id", Uuid),
                ("id", Uuid),
                ("policy_number", Text),
                ("product", Text),
                ("customer_id", Uuid),
                ("agent_id", Uuid),
                ("sum_assured_minor", Int),
                ("premium_minor", Int),
                ("currency", Text),
                ("premium_frequency", Text),
                ("issue_date", Date),
                ("commencement_date", Date),
                ("maturity_date", Date),
                ("next_due_date", Date),
                ("status", Text),
                ("riders", Json),
                ("shared", Bool),
                ("active", Bool),
                ("created_at", Timestamp),
            ],
        ),
        TableSpec::new(
            "payments",
            "id",
            &[
                ("tenant_id", Uuid),
                ("id", Uuid),
                ("policy_id", Uuid),
                ("amount_minor", Int),
                ("currency", Text),
                ("due_date", Date),
                ("paid_date", Date),
                ("method", Text),
                ("status", Text),
                ("transaction_ref", Text),
                ("created_at", Timestamp),
                ("confirmed_by", Text),
                ("confirmed_at", Timestamp),
                ("refunded_by", Text),
                ("refunded_at", Timestamp),
            ],
        ),
        TableSpec::new(
            "commissions",
            "id",
            &[
                ("tenant_id", Uuid),
                ("id", Uuid),
                ("payment_id", Uuid),
                ("policy_id", Uuid),
                ("agent_id", Uuid),
                ("kind", Text),
                ("rate_bp", Int),
                ("amount_minor", Int),
                ("currency", Text),
                ("status", Text),
                ("created_at", Timestamp),
            ],
        ),
    ]
}

/// The library's parts of a tenant, as tables of the backup.
const TENANT: &str = "tenancy.tenant";
const MEMBERS: &str = "tenancy.memberships";
const USERS: &str = "app.users";
const KEYS: &str = "tenancy.tenant_keys";
const SUBJECT_KEYS: &str = "tenancy.subject_keys";
const AUDIT: &str = "tenancy.audit_log";
/// The audit chain's verification when the backup was taken (one row).
const AUDIT_CHAIN: &str = "tenancy.audit_chain";

fn audit_chain_columns() -> Vec<tenancy_core::backup::Column> {
    columns(&[
        ("intact", Bool),
        ("floor", Int),
        ("head_seq", Int),
        ("breaks", Json),
    ])
}

fn audit_columns() -> Vec<tenancy_core::backup::Column> {
    columns(&[
        ("seq", Int),
        ("event", Json),
        ("prev_hash", Bytes),
        ("hash", Bytes),
    ])
}

fn audit_row(r: &ChainedEvent) -> Result<Vec<Value>, ApiError> {
    Ok(vec![
        Value::from(r.seq),
        serde_json::to_value(&r.event).map_err(failed)?,
        b64(&r.prev_hash),
        b64(&r.hash),
    ])
}

fn columns(cols: &[(&str, ColumnType)]) -> Vec<tenancy_core::backup::Column> {
    cols.iter()
        .map(|(n, t)| tenancy_core::backup::Column::new(*n, *t))
        .collect()
}

fn failed(e: impl std::fmt::Display) -> ApiError {
    ApiError::internal(format!("backup: {e}"))
}

fn hash32(v: &Value) -> Result<[u8; 32], ApiError> {
    unb64(v)?
        .try_into()
        .map_err(|_| failed("a hash of the wrong length"))
}

fn b64(bytes: &[u8]) -> Value {
    use base64::Engine as _;
    Value::from(base64::engine::general_purpose::STANDARD_NO_PAD.encode(bytes))
}

fn unb64(v: &Value) -> Result<Vec<u8>, ApiError> {
    use base64::Engine as _;
    let s = v.as_str().ok_or_else(|| failed("expected base64"))?;
    base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(s)
        .map_err(failed)
}

fn instant(t: chrono::DateTime<Utc>) -> Value {
    use chrono::SubsecRound as _;
    Value::from(
        t.trunc_subsecs(6)
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
    )
}

fn parse_instant(v: &Value) -> Result<Option<chrono::DateTime<Utc>>, ApiError> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => chrono::DateTime::parse_from_rfc3339(s)
            .map(|t| Some(t.with_timezone(&Utc)))
            .map_err(failed),
        _ => Err(failed("expected an instant")),
    }
}

/// What a backup or a restore did.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Every table with its count and checksum.
    pub manifest: Manifest,
}

/// Writes a backup of `tenant` to `out` (a new file, owner-readable only),
/// sealed with `key`; `progress` is told every row written.
pub async fn backup_to(
    data: &Data,
    tenant: &Tenant,
    out: &Path,
    key: &BackupKey,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Report, ApiError> {
    let file = crate::ops::private_file(out).map_err(|e| {
        ApiError::conflict(format!(
            "{}: {e} (a backup is written to a new file)",
            out.display()
        ))
    })?;
    let result = backup(data, tenant, std::io::BufWriter::new(file), key, progress).await;
    if result.is_err() {
        let _ = std::fs::remove_file(out);
    }
    result
}

async fn backup<W: Write>(
    data: &Data,
    tenant: &Tenant,
    out: W,
    key: &BackupKey,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Report, ApiError> {
    let header = BackupHeader::new(
        tenant.id,
        tenant.slug.as_str(),
        Utc::now(),
        json!({
            "backend": data.backend_name(),
            "app_schema_version": crate::postgres::SCHEMA_VERSION,
            "tenant_file_version": crate::data::migrator().latest(),
        }),
    );
    let mut w = BackupWriter::new(out, key, header).map_err(failed)?;
    // The tenant's record and members.
    w.begin_table(TENANT, columns(&[("record", Json)]))
        .map_err(failed)?;
    w.row(vec![serde_json::to_value(tenant).map_err(failed)?])
        .map_err(failed)?;
    w.end_table().map_err(failed)?;
    let members = data.memberships().members_of(tenant.id).await?;
    w.begin_table(
        USERS,
        columns(&[
            ("id", Text),
            ("email", Text),
            ("name", Text),
            ("password_hash", Text),
        ]),
    )
    .map_err(failed)?;
    let ids: BTreeSet<String> = members
        .iter()
        .map(|m| m.user_id.as_str().to_owned())
        .collect();
    for id in ids {
        if let Some((email, name, hash)) = data.user_record(&id).await? {
            w.row(vec![
                Value::from(id),
                Value::from(email),
                Value::from(name),
                Value::from(hash),
            ])
            .map_err(failed)?;
        }
    }
    w.end_table().map_err(failed)?;
    // Members after their accounts (a restore creates the accounts first).
    w.begin_table(MEMBERS, columns(&[("membership", Json)]))
        .map_err(failed)?;
    for m in &members {
        w.row(vec![serde_json::to_value(m).map_err(failed)?])
            .map_err(failed)?;
    }
    w.end_table().map_err(failed)?;
    // Wrapped keys: they open only through the same key provider.
    w.begin_table(
        KEYS,
        columns(&[
            ("version", Int),
            ("wrapped", Bytes),
            ("state", Text),
            ("created_at", Timestamp),
        ]),
    )
    .map_err(failed)?;
    for k in data
        .keyring()
        .export_keys(tenant.id)
        .await
        .map_err(failed)?
    {
        let state = match k.state {
            KeyState::Primary => "primary",
            KeyState::Retired => "retired",
            _ => "destroyed",
        };
        w.row(vec![
            Value::from(i64::from(k.version)),
            b64(&k.wrapped),
            Value::from(state),
            instant(k.created_at),
        ])
        .map_err(failed)?;
    }
    w.end_table().map_err(failed)?;
    // The application's tables and the audit log, from one snapshot.
    let ctx = TenantContext::new(tenant.clone());
    let mut tx = data.begin_snapshot(&ctx).await?;
    let mut rows = 0u64;
    for spec in app_tables() {
        let sum = match tx.tx() {
            Tx::Sqlite(t) => tenancy_sqlx::backup::write_sqlite_table(t, &spec, &mut w).await?,
            Tx::Postgres(t) => tenancy_sqlx::backup::write_pg_table(t, &spec, &mut w).await?,
        };
        rows += sum.rows;
        progress(rows);
    }
    // Subject keys after the snapshot began: every customer in it has its
    // key by now (a key is stored before its customer is).
    w.begin_table(
        SUBJECT_KEYS,
        columns(&[
            ("subject", Text),
            ("wrapped", Bytes),
            ("created_at", Timestamp),
            ("erased_at", Timestamp),
        ]),
    )
    .map_err(failed)?;
    let mut after: Option<SubjectId> = None;
    loop {
        let page = data
            .subjects()
            .store()
            .list(tenant.id, after.as_ref(), 1000)
            .await
            .map_err(failed)?;
        let Some(last) = page.last() else { break };
        after = Some(last.subject.clone());
        for k in page {
            w.row(vec![
                Value::from(k.subject.as_str()),
                k.wrapped.as_deref().map_or(Value::Null, b64),
                instant(k.created_at),
                k.erased_at.map_or(Value::Null, instant),
            ])
            .map_err(failed)?;
        }
    }
    w.end_table().map_err(failed)?;
    // The audit log, from the same snapshot: the retained archive (segment
    // by segment), then the live log (page by page) — verified as it is
    // written, and the verdict sealed in the backup after it.
    w.begin_table(AUDIT, audit_columns()).map_err(failed)?;
    let key = data.audit().chain_key(tenant.id);
    let first_live = data
        .audit()
        .live_events(&mut tx, 0, 1)
        .await?
        .first()
        .map_or(u64::MAX, |r| r.seq);
    let archive = data.audit_archive();
    let floor = archive.floor(tenant.id).map_err(failed)?;
    let (floor_seq, floor_hash) = floor.map_or((0, GENESIS), |f| (f.seq, f.hash));
    let mut chain = ChainVerifier::new(&key, tenant.id, floor_seq, floor_hash, &[]);
    if let Some(f) = floor
        && !f.is_authentic(&key)
    {
        chain.note(ChainBreak::Checkpoint { seq: f.seq });
    }
    for (_, last, path) in archive.paths(tenant.id).map_err(failed)? {
        if last <= floor_seq {
            continue;
        }
        let segment = archive.read(&path).map_err(failed)?;
        if !segment.is_sealed_by(&key) || segment.header.tenant != tenant.id {
            chain.note(ChainBreak::SegmentSeal {
                first: segment.header.first_seq,
            });
        }
        for r in segment.rows {
            if r.seq < first_live {
                chain.push(&r);
                w.row(audit_row(&r)?).map_err(failed)?;
            }
        }
    }
    let mut after = 0;
    loop {
        let page = data.audit().live_events(&mut tx, after, 1000).await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        for r in &page {
            chain.push(r);
            w.row(audit_row(r)?).map_err(failed)?;
        }
    }
    w.end_table().map_err(failed)?;
    let verdict = chain.finish();
    w.begin_table(AUDIT_CHAIN, audit_chain_columns())
        .map_err(failed)?;
    w.row(vec![
        Value::Bool(verdict.is_intact()),
        Value::from(floor_seq),
        verdict
            .head
            .map_or(Value::Null, |(seq, _)| Value::from(seq)),
        // The first breaks (a line stays small however broken the log is).
        Value::from(
            verdict
                .breaks
                .iter()
                .take(100)
                .map(|b| Value::from(format!("{b:?}")))
                .collect::<Vec<_>>(),
        ),
    ])
    .map_err(failed)?;
    w.end_table().map_err(failed)?;
    tx.commit().await?;
    let manifest = w.finish().map_err(failed)?;
    Ok(Report { manifest })
}

/// How to restore.
#[derive(Debug, Clone, Copy, Default)]
pub struct RestoreOptions {
    /// Replace the tenant's current data when it exists (otherwise a live
    /// tenant with the same id is refused, 409).
    pub replace: bool,
    /// Continue an interrupted restore of the same backup (its progress is
    /// kept in the data directory, bound to the backup's manifest).
    pub resume: bool,
}

/// A restore as a new tenant: a clone or sandbox copy of the backed-up one.
#[derive(Debug, Clone)]
pub struct CloneAs {
    /// The new tenant's slug (must be free).
    pub slug: tenancy_core::TenantSlug,
    /// Its display name (default: the source's, with " (copy)").
    pub name: Option<String>,
}

/// Where the progress of restoring `tenant` is kept: in the data
/// directory (not beside the backup, where others may write).
pub fn progress_path(data: &Data, tenant: tenancy_core::TenantId) -> PathBuf {
    data.dir()
        .join("restores")
        .join(format!("{tenant}.progress"))
}

/// The first line of a progress file: the tenant and the digest of the
/// backup's verified manifest it belongs to.
pub fn progress_binding(header: &BackupHeader, manifest: &Manifest) -> Result<String, ApiError> {
    // The manifest's tables, counts and checksums, summed into one digest.
    let mut digest = TableSum::default();
    for (name, sum) in &manifest.tables {
        digest.add(&[
            Value::from(name.as_str()),
            serde_json::to_value(sum).map_err(failed)?,
        ]);
    }
    let hex: String = digest.checksum.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("{} {hex}", header.tenant_id))
}

fn open(file: &Path) -> Result<BufReader<std::fs::File>, ApiError> {
    std::fs::File::open(file)
        .map(BufReader::new)
        .map_err(|e| ApiError::invalid(format!("{}: {e}", file.display())))
}

/// The backup, copied into the data directory (owner-only) before it is
/// read: both passes read bytes no one else can change in between. Removed
/// when dropped.
struct PrivateCopy(PathBuf);

impl PrivateCopy {
    fn of(data: &Data, file: &Path) -> Result<Self, ApiError> {
        let dir = data.dir().join("restores");
        std::fs::create_dir_all(&dir).map_err(failed)?;
        // Copies left by a restore that was killed (they hold personal
        // data): gone after a day.
        let day = std::time::Duration::from_secs(24 * 3600);
        for entry in std::fs::read_dir(&dir).map_err(failed)?.flatten() {
            let stale = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > day);
            if stale && entry.file_name().to_string_lossy().ends_with(".backup") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        let path = dir.join(format!("{}.backup", uuid::Uuid::new_v4()));
        let mut from = open(file)?;
        let mut to = crate::ops::private_file(&path).map_err(failed)?;
        let copy = Self(path);
        std::io::copy(&mut from, &mut to).map_err(failed)?;
        Ok(copy)
    }
}

impl Drop for PrivateCopy {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Rows a restore loads one by one (the application's tables and the
/// audit log): the length of its progress bar.
fn restored_rows(manifest: &Manifest) -> u64 {
    let names: Vec<String> = app_tables().into_iter().map(|t| t.name).collect();
    manifest
        .tables
        .iter()
        .filter(|(n, _)| names.contains(n) || n.as_str() == AUDIT)
        .map(|(_, s)| s.rows)
        .sum()
}

/// Pass one: the whole file against its seal, and every table's columns
/// against this version's — before anything is written or removed.
fn verify(file: &Path, key: &BackupKey) -> Result<(BackupHeader, Manifest), ApiError> {
    let mut r = BackupReader::new(open(file)?, key).map_err(refused)?;
    let header = r.header().clone();
    let specs = app_tables();
    loop {
        match r.next().map_err(refused)? {
            BackupEvent::Table { name, columns } => {
                let expected = match name.as_str() {
                    AUDIT => Some(audit_columns()),
                    AUDIT_CHAIN => Some(audit_chain_columns()),
                    TENANT | USERS | MEMBERS | KEYS | SUBJECT_KEYS => None,
                    other => Some(
                        specs
                            .iter()
                            .find(|s| s.name == other)
                            .ok_or_else(|| {
                                ApiError::invalid(format!("backup refused: unknown table {other}"))
                            })?
                            .columns
                            .clone(),
                    ),
                };
                if expected.is_some_and(|e| e != columns) {
                    return Err(ApiError::invalid(format!(
                        "backup refused: table {name} has other columns than this version's"
                    )));
                }
            }
            BackupEvent::Sealed(m) => return Ok((header, m)),
            _ => {}
        }
    }
}

#[allow(clippy::needless_pass_by_value)] // the shape `map_err` wants
fn refused(e: tenancy_core::backup::BackupError) -> ApiError {
    ApiError::invalid(format!("backup refused: {e}"))
}

/// A row id of the source, as the clone's: derived from the clone's tenant
/// id and the source id (the same source id always maps to the same clone
/// id, so references between tables follow without a table of ids held in
/// memory).
fn clone_id(target: tenancy_core::TenantId, old: &str) -> Result<String, ApiError> {
    use sha2::Digest as _;
    let old: uuid::Uuid = old.parse().map_err(failed)?;
    let mut h = sha2::Sha256::new();
    h.update(b"insurance-agent/clone-id/v1");
    h.update(target.as_uuid().as_bytes());
    h.update(old.as_bytes());
    let digest = h.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    Ok(uuid::Builder::from_custom_bytes(bytes)
        .into_uuid()
        .to_string())
}

fn column_of(spec: &TableSpec, name: &str) -> Result<usize, ApiError> {
    spec.columns
        .iter()
        .position(|c| c.name == name)
        .ok_or_else(|| failed(format!("{} has no column {name}", spec.name)))
}

/// One application row of the source as the clone's: the tenant id and
/// every row id mapped ([`clone_id`]); a customer's sensitive fields
/// decrypted with the source's keys and encrypted again with a new subject
/// key of the clone (blind indexes under the clone's index key).
async fn clone_row(
    data: &Data,
    source: tenancy_core::TenantId,
    target: tenancy_core::TenantId,
    spec: &TableSpec,
    mut row: Vec<Value>,
) -> Result<Vec<Value>, ApiError> {
    let old_id = row
        .get(column_of(spec, "id")?)
        .and_then(Value::as_str)
        .and_then(|s| s.parse::<uuid::Uuid>().ok())
        .ok_or_else(|| failed("a row without an id"))?;
    for (c, v) in spec.columns.iter().zip(row.iter_mut()) {
        if c.ty != Uuid {
            continue;
        }
        if c.name == "tenant_id" {
            *v = Value::from(target.to_string());
        } else if let Some(old) = v.as_str() {
            *v = Value::from(clone_id(target, old)?);
        }
    }
    if spec.name != "customers" {
        return Ok(row);
    }
    let text = |row: &[Value], name: &str| -> Result<Option<String>, ApiError> {
        Ok(row
            .get(column_of(spec, name)?)
            .and_then(Value::as_str)
            .map(str::to_owned))
    };
    let sealed = crate::sensitive::SealedFields {
        phone_enc: text(&row, "phone_enc")?,
        pan_enc: text(&row, "pan_enc")?,
        aadhaar_enc: text(&row, "aadhaar_enc")?,
        bank_account_enc: text(&row, "bank_account_enc")?,
        medical_history_enc: text(&row, "medical_history_enc")?,
        ..Default::default()
    };
    let fields = crate::sensitive::open(data, source, crate::id::Id(old_id), &sealed).await?;
    let new_id: uuid::Uuid = clone_id(target, &old_id.to_string())?
        .parse()
        .map_err(failed)?;
    let s = crate::sensitive::seal(data, target, crate::id::Id(new_id), &fields).await?;
    let bytes = |b: Option<Vec<u8>>| b.as_deref().map_or(Value::Null, b64);
    let text = |t: Option<String>| t.map_or(Value::Null, Value::from);
    for (name, value) in [
        ("phone_enc", text(s.phone_enc)),
        ("phone_index", bytes(s.phone_index)),
        ("pan_enc", text(s.pan_enc)),
        ("pan_index", bytes(s.pan_index)),
        ("aadhaar_enc", text(s.aadhaar_enc)),
        ("bank_account_enc", text(s.bank_account_enc)),
        ("medical_history_enc", text(s.medical_history_enc)),
    ] {
        let i = column_of(spec, name)?;
        if let Some(slot) = row.get_mut(i) {
            *slot = value;
        }
    }
    Ok(row)
}

/// Restores the backup in `file` as a **new tenant** (`clone`): a sandbox
/// copy with its own id, slug and keys. Every row id is mapped, members
/// keep their roles, sensitive fields are re-encrypted under the clone's
/// keys (customers forgotten since the backup stay forgotten), and the
/// clone takes no custom domain, no key or subject key and no audit history
/// of the source; its log starts with the clone. The source tenant's keys
/// must be in this deployment (to open the values): to clone elsewhere,
/// restore the backup as the same tenant there first. A clone is not
/// resumable: on failure, purge the partial clone and run it again.
pub async fn clone_from(
    data: &Data,
    file: &Path,
    key: &BackupKey,
    clone: CloneAs,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<(Tenant, Manifest), ApiError> {
    let copy = PrivateCopy::of(data, file)?;
    let mut made: Option<Tenant> = None;
    match clone_copy(data, &copy.0, key, clone, &mut made, progress).await {
        Ok(done) => Ok(done),
        // Say where the partial clone is (it stays suspended).
        Err(mut e) => {
            if let Some(t) = made {
                e.0.detail = format!(
                    "{} — the partial clone {} ({}) is suspended: purge it and clone again",
                    e.0.detail, t.slug, t.id
                );
            }
            Err(e)
        }
    }
}

/// The settings a clone takes from its source: those that describe how the
/// tenant works, not who it is (no identity provider, pending domain
/// challenge or plan request — those name one tenant).
const CLONED_SETTINGS: [&str; 6] = [
    "time_zone",
    "branding",
    "password_policy",
    "commission_rates",
    "audit_retention",
    "security",
];

async fn clone_copy(
    data: &Data,
    file: &Path,
    key: &BackupKey,
    clone: CloneAs,
    made: &mut Option<Tenant>,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<(Tenant, Manifest), ApiError> {
    let (header, manifest) = verify(file, key)?;
    let names: Vec<String> = app_tables().into_iter().map(|t| t.name).collect();
    let total: u64 = manifest
        .tables
        .iter()
        .filter(|(n, _)| names.contains(n))
        .map(|(_, s)| s.rows)
        .sum();
    let source = header.tenant_id;
    // The source as it is now: its members are the clone's (access revoked
    // since the backup is not brought back), and a tenant on its way out is
    // not copied out of its purge.
    let Some(now_source) = data
        .tenant_store()
        .by_id(source)
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
    else {
        return Err(ApiError::conflict(format!(
            "tenant {} is not in this deployment: restore the backup as that tenant here \
             first, then clone it",
            header.tenant_slug
        )));
    };
    if !matches!(
        now_source.status,
        tenancy_core::TenantStatus::Active | tenancy_core::TenantStatus::Trial { .. }
    ) {
        return Err(ApiError::conflict(format!(
            "tenant {} is not active here: it is not cloned",
            header.tenant_slug
        )));
    }
    let members = data.memberships().members_of(source).await?;
    let usable = data
        .keyring()
        .versions(source)
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .iter()
        .any(|(_, state)| *state != KeyState::Destroyed);
    if !usable {
        return Err(ApiError::conflict(format!(
            "the keys of tenant {} are not in this deployment: restore the backup as that \
             tenant here first, then clone it",
            header.tenant_slug
        )));
    }
    if data
        .tenant_store()
        .by_slug(&clone.slug)
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .is_some()
    {
        return Err(ApiError::conflict(format!(
            "the slug {} is taken",
            clone.slug
        )));
    }
    let target = tenancy_core::TenantId::new_v4();
    let source_id = source.to_string();
    let specs = app_tables();
    let mut r = BackupReader::new(open(file)?, key).map_err(refused)?;
    let mut tenant: Option<Tenant> = None;
    let mut rows = 0u64;
    loop {
        let name = match r.next().map_err(refused)? {
            BackupEvent::Table { name, .. } => name,
            BackupEvent::Sealed(_) => break,
            other => return Err(refused_shape(&other)),
        };
        let spec = specs.iter().find(|s| s.name == name);
        let mut tx = match (spec, &tenant) {
            (Some(_), Some(t)) => Some(data.begin_write(&TenantContext::new(t.clone())).await?),
            (Some(_), None) => return Err(failed("the tenant record comes first")),
            _ => None,
        };
        let mut values = Vec::new();
        loop {
            match r.next().map_err(refused)? {
                BackupEvent::Row(v) => match (&mut tx, spec) {
                    (Some(tx), Some(spec)) => {
                        if v.first().and_then(Value::as_str) != Some(source_id.as_str()) {
                            return Err(ApiError::invalid(format!(
                                "backup refused: a row of {name} belongs to another tenant"
                            )));
                        }
                        let v = if spec.name == "customers" {
                            redact_if_erased(data, source, v).await?
                        } else {
                            v
                        };
                        let v = clone_row(data, source, target, spec, v).await?;
                        match tx.tx() {
                            Tx::Sqlite(t) => {
                                tenancy_sqlx::backup::insert_sqlite_row(t, spec, &v).await?;
                            }
                            Tx::Postgres(t) => {
                                tenancy_sqlx::backup::insert_pg_row(t, spec, &v).await?;
                            }
                        }
                        rows += 1;
                        if rows.is_multiple_of(1000) {
                            progress(rows, total);
                        }
                    }
                    _ if name == TENANT => values.push(v),
                    // Keys, subject keys and the audit log stay the source's.
                    _ => {}
                },
                BackupEvent::TableEnd { .. } => break,
                other => return Err(refused_shape(&other)),
            }
        }
        if let Some(tx) = tx {
            tx.commit().await?;
            continue;
        }
        // Members and accounts are the source's now (below), not the
        // backup's; keys, subject keys and the audit log stay the source's.
        if name == TENANT {
            let record = values
                .into_iter()
                .next()
                .and_then(|mut r| r.pop())
                .ok_or_else(|| failed("no tenant record"))?;
            let mut t: Tenant = serde_json::from_value(record).map_err(failed)?;
            if t.id != source {
                return Err(ApiError::invalid(
                    "backup refused: its tenant record names another tenant",
                ));
            }
            let now = Utc::now();
            t.display_name = clone
                .name
                .clone()
                .unwrap_or_else(|| format!("{} (copy)", t.display_name));
            t.id = target;
            t.slug = clone.slug.clone();
            // A domain names one tenant: the clone is reached by its slug.
            t.domains.clear();
            if let Value::Object(settings) = &mut t.settings {
                settings.retain(|k, _| CLONED_SETTINGS.contains(&k.as_str()));
            }
            // Suspended until every row is in (resumed at the end).
            t.status = tenancy_core::TenantStatus::Suspended {
                reason: "being restored as a copy".into(),
            };
            t.created_at = now;
            t.updated_at = now;
            t.version = 0;
            let created = data.create_tenant(t).await?;
            *made = Some(created.clone());
            tenant = Some(created);
            // The crossing goes into the source's log before any of
            // its data is copied.
            let mut tx = data
                .begin_write(&TenantContext::new((*now_source).clone()))
                .await?;
            let mut event =
                AuditEvent::system(source, "restore", "clone", "tenant").with_resource_id(source);
            event.details = json!({
                "clone_tenant": target,
                "clone_slug": clone.slug,
                "backup_created_at": header.created_at,
            });
            data.audit().append(&mut tx, event).await?;
            tx.commit().await?;
            // Members: the source's, as they are now.
            for m in &members {
                let mut m = m.clone();
                m.tenant_id = target;
                data.memberships().upsert(&m).await?;
            }
        }
    }
    progress(total, total);
    let tenant = tenant.ok_or_else(|| failed("the backup has no tenant record"))?;
    let mut tx = data
        .begin_write(&TenantContext::new(tenant.clone()))
        .await?;
    let mut event =
        AuditEvent::system(tenant.id, "restore", "clone", "tenant").with_resource_id(tenant.id);
    event.details = json!({
        "source_tenant": source,
        "source_slug": header.tenant_slug,
        "backup_created_at": header.created_at,
        "rows": rows,
    });
    data.audit().append(&mut tx, event).await?;
    tx.commit().await?;
    // Every row is in: the clone opens.
    let tenant = data
        .transition(&tenant, Transition::Resume, "restore")
        .await?;
    Ok((tenant, manifest))
}

/// Restores the backup in `file` (sealed with `key`) into this deployment's
/// placement, as the same tenant (for a new one, see [`clone_from`]).
/// `progress` is told the rows restored so far and the rows to restore.
pub async fn restore_from(
    data: &Data,
    file: &Path,
    key: &BackupKey,
    options: RestoreOptions,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<(Tenant, Manifest), ApiError> {
    let copy = PrivateCopy::of(data, file)?;
    restore_copy(data, &copy.0, key, options, progress).await
}

async fn restore_copy(
    data: &Data,
    file: &Path,
    key: &BackupKey,
    options: RestoreOptions,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<(Tenant, Manifest), ApiError> {
    let (header, manifest) = verify(file, key)?;
    let total = restored_rows(&manifest);
    let done_path = progress_path(data, header.tenant_id);
    let binding = progress_binding(&header, &manifest)?;
    let recorded = match std::fs::read_to_string(&done_path) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(failed(e)),
    };
    let done: BTreeSet<String> = match (recorded, options.resume) {
        (None, _) => BTreeSet::new(),
        (Some(text), true) => {
            let mut lines = text.lines();
            if lines.next() != Some(binding.as_str()) {
                return Err(ApiError::conflict(
                    "the interrupted restore of this tenant was of another backup: \
                     finish it with that backup, or remove its progress file",
                ));
            }
            lines.map(str::to_owned).collect()
        }
        (Some(_), false) => {
            return Err(ApiError::conflict(format!(
                "a restore of tenant {} was interrupted: run it again with --resume",
                header.tenant_slug
            )));
        }
    };
    let resuming = options.resume && !done.is_empty();
    // The store itself, not the cache (which may remember "no such tenant").
    let existing = data
        .tenant_store()
        .by_id(header.tenant_id)
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    if existing
        .as_ref()
        .is_some_and(|t| matches!(t.status, tenancy_core::TenantStatus::Deleted))
    {
        return Err(ApiError::conflict(format!(
            "tenant {} was purged here: it is not restored under the same id",
            header.tenant_slug
        )));
    }
    if existing.is_some() && !resuming && !options.replace {
        return Err(ApiError::conflict(format!(
            "tenant {} ({}) exists here: restore with --replace to overwrite its data",
            header.tenant_slug, header.tenant_id
        )));
    }
    if !resuming {
        start_progress(&done_path, &binding)?;
    }
    // Pass two: load, table by table, each checked against the manifest.
    let mut r = BackupReader::new(open(file)?, key).map_err(refused)?;
    let mut tenant: Option<Tenant> = existing.map(|t| (*t).clone());
    let specs = app_tables();
    let tenant_id = header.tenant_id.to_string();
    let mut rows = 0u64;
    let chain_key = data.audit().chain_key(header.tenant_id);
    let mut here: Option<ChainVerifier<'_>> = None;
    let mut source_chain: Option<Value> = None;
    loop {
        let (name, columns) = match r.next().map_err(refused)? {
            BackupEvent::Table { name, columns } => (name, columns),
            BackupEvent::Sealed(_) => break,
            other => return Err(refused_shape(&other)),
        };
        let skip = done.contains(&name);
        let mut values: Vec<Vec<Value>> = Vec::new();
        let spec = specs.iter().find(|s| s.name == name);
        // Library tables are small (one row per member or key): gathered,
        // then applied. Application tables stream into one transaction.
        // The audit log streams too, re-appended event by event (the chain
        // re-links under this deployment's key: identical where the key is
        // the same) — but only into an empty log: a live tenant's log is
        // append-only and is kept as it is.
        let is_audit = name == AUDIT;
        let mut audit_into = false;
        let mut app_tx = match (spec.is_some() || is_audit, skip) {
            (true, false) => {
                let t = tenant
                    .as_ref()
                    .ok_or_else(|| failed("the tenant record comes first"))?;
                if options.replace && !resuming && name == specs[0].name {
                    data.remove_tenant_rows(t).await?;
                }
                let mut tx = data.begin_write(&TenantContext::new(t.clone())).await?;
                if is_audit {
                    audit_into = data.audit().live_events(&mut tx, 0, 1).await?.is_empty()
                        && data.audit_archive().paths(t.id).map_err(failed)?.is_empty();
                }
                Some(tx)
            }
            _ => None,
        };
        if is_audit && columns != audit_columns() {
            return Err(ApiError::invalid(
                "backup refused: its audit log has other columns than this version's",
            ));
        }
        if let Some(s) = spec
            && s.columns != columns
        {
            return Err(ApiError::invalid(format!(
                "backup refused: table {name} has other columns than this version's"
            )));
        }
        let sum = loop {
            match r.next().map_err(refused)? {
                BackupEvent::Row(v) if skip => drop(v),
                BackupEvent::Row(v) => match (&mut app_tx, spec) {
                    (Some(tx), Some(spec)) => {
                        // Every application row is the tenant's own (on
                        // SQLite no policy would stop another id).
                        if v.first().and_then(Value::as_str) != Some(tenant_id.as_str()) {
                            return Err(ApiError::invalid(format!(
                                "backup refused: a row of {name} belongs to another tenant"
                            )));
                        }
                        let v = if spec.name == "customers" {
                            redact_if_erased(data, header.tenant_id, v).await?
                        } else {
                            v
                        };
                        match tx.tx() {
                            Tx::Sqlite(t) => {
                                tenancy_sqlx::backup::insert_sqlite_row(t, spec, &v).await?;
                            }
                            Tx::Postgres(t) => {
                                tenancy_sqlx::backup::insert_pg_row(t, spec, &v).await?;
                            }
                        }
                        rows += 1;
                        if rows.is_multiple_of(1000) {
                            progress(rows, total);
                        }
                    }
                    (Some(tx), None) if audit_into => {
                        let [seq, event, prev_hash, hash] =
                            <[Value; 4]>::try_from(v).map_err(|_| failed("audit row"))?;
                        let row = ChainedEvent::new(
                            seq.as_u64().ok_or_else(|| failed("audit seq"))?,
                            serde_json::from_value(event).map_err(failed)?,
                            hash32(&prev_hash)?,
                            hash32(&hash)?,
                        );
                        if row.event.tenant != header.tenant_id {
                            return Err(ApiError::invalid(
                                "backup refused: an audit event of another tenant",
                            ));
                        }
                        // Re-verified with this deployment's key: it holds
                        // where the audit root was restored with the data.
                        let v = here.get_or_insert_with(|| {
                            ChainVerifier::new(
                                &chain_key,
                                header.tenant_id,
                                row.seq.saturating_sub(1),
                                row.prev_hash,
                                &[],
                            )
                        });
                        v.push(&row);
                        data.audit().append(tx, row.event).await?;
                        rows += 1;
                    }
                    (None, None) if name == SUBJECT_KEYS => {
                        restore_subject_key(data, header.tenant_id, v).await?;
                    }
                    (None, None) if name == AUDIT_CHAIN => {
                        let names = audit_chain_columns();
                        source_chain = Some(Value::Object(
                            names.into_iter().map(|c| c.name).zip(v).collect(),
                        ));
                    }
                    (Some(_), None) => {}
                    _ => values.push(v),
                },
                BackupEvent::TableEnd { sum, .. } => break sum,
                other => return Err(refused_shape(&other)),
            }
        };
        if manifest.tables.get(&name) != Some(&sum) {
            return Err(ApiError::invalid(format!(
                "backup refused: table {name} differs from the verified manifest (was the file replaced?)"
            )));
        }
        if skip {
            continue;
        }
        match app_tx {
            Some(tx) => tx.commit().await?,
            None if name == AUDIT_CHAIN => {}
            None => {
                apply_library_table(data, &header, &name, values, &mut tenant, options).await?;
            }
        }
        mark_done(&done_path, &name)?;
    }
    progress(rows, total);
    let tenant = tenant.ok_or_else(|| failed("the backup has no tenant record"))?;
    // The restore itself goes into the tenant's log.
    let mut tx = data
        .begin_write(&TenantContext::new(tenant.clone()))
        .await?;
    let mut event =
        AuditEvent::system(tenant.id, "restore", "restore", "tenant").with_resource_id(tenant.id);
    event.details = json!({
        "backup_created_at": header.created_at,
        "replace": options.replace,
        "resumed": resuming,
        "rows": manifest.tables.values().map(|s| s.rows).sum::<u64>(),
        // The source's chain as verified when the backup was taken, and
        // whether the events re-appended here verified under this
        // deployment's audit root (null: none were re-appended).
        "source_chain": source_chain,
        "reverified_here": here.map(|v| v.finish().is_intact()),
    });
    data.audit().append(&mut tx, event).await?;
    tx.commit().await?;
    let _ = std::fs::remove_file(&done_path);
    Ok((tenant, manifest))
}

/// A customer row from a backup, as the erasure left it where the customer
/// was forgotten since (here, or in the backup's own tombstones): names
/// redacted, personal fields and indexes cleared, deactivated. A restore
/// never brings a forgotten customer back.
async fn redact_if_erased(
    data: &Data,
    tenant: tenancy_core::TenantId,
    mut row: Vec<Value>,
) -> Result<Vec<Value>, ApiError> {
    let spec = &app_tables()[1];
    let col = |name: &str| spec.columns.iter().position(|c| c.name == name);
    let id = col("id")
        .and_then(|i| row.get(i))
        .and_then(Value::as_str)
        .and_then(|s| s.parse::<uuid::Uuid>().ok())
        .ok_or_else(|| failed("a customer row without an id"))?;
    let subject = crate::subject::customer_subject(crate::id::Id(id))?;
    let entry = data
        .subjects()
        .store()
        .get(tenant, &subject)
        .await
        .map_err(failed)?;
    let Some(erased_at) = entry.and_then(|e| e.erased_at) else {
        return Ok(row);
    };
    for (name, value) in [
        ("first_name", Value::from(crate::subject::REDACTED)),
        ("last_name", Value::from(crate::subject::REDACTED)),
        ("email", Value::Null),
        ("date_of_birth", Value::Null),
        ("phone_enc", Value::Null),
        ("phone_index", Value::Null),
        ("pan_enc", Value::Null),
        ("pan_index", Value::Null),
        ("aadhaar_enc", Value::Null),
        ("bank_account_enc", Value::Null),
        ("medical_history_enc", Value::Null),
        ("shared", Value::Bool(false)),
        ("active", Value::Bool(false)),
        ("erased_at", instant(erased_at)),
    ] {
        if let Some(slot) = col(name).and_then(|i| row.get_mut(i)) {
            *slot = value;
        }
    }
    Ok(row)
}

fn refused_shape(e: &BackupEvent) -> ApiError {
    ApiError::invalid(format!("backup refused: unexpected {e:?}"))
}

fn start_progress(path: &Path, binding: &str) -> Result<(), ApiError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(failed)?;
    }
    let _ = std::fs::remove_file(path);
    let mut f = crate::ops::private_file(path).map_err(failed)?;
    writeln!(f, "{binding}").map_err(failed)?;
    f.sync_all().map_err(failed)
}

fn mark_done(path: &Path, table: &str) -> Result<(), ApiError> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(failed)?;
    writeln!(f, "{table}").map_err(failed)?;
    f.sync_all().map_err(failed)
}

async fn apply_library_table(
    data: &Data,
    header: &BackupHeader,
    name: &str,
    rows: Vec<Vec<Value>>,
    tenant: &mut Option<Tenant>,
    options: RestoreOptions,
) -> Result<(), ApiError> {
    let id = header.tenant_id;
    match name {
        TENANT => {
            let record = rows
                .into_iter()
                .next()
                .and_then(|mut r| r.pop())
                .ok_or_else(|| failed("no tenant record"))?;
            let t: Tenant = serde_json::from_value(record).map_err(failed)?;
            if t.id != id {
                return Err(ApiError::invalid(
                    "backup refused: its tenant record names another tenant",
                ));
            }
            if tenant.is_none() {
                *tenant = Some(data.create_tenant(t).await?);
            } else if options.replace {
                data.ensure_tenant_storage(tenant.as_ref().ok_or_else(|| failed("tenant"))?)
                    .await?;
            }
        }
        USERS => {
            for r in rows {
                let [id, email, name, hash] =
                    <[Value; 4]>::try_from(r).map_err(|_| failed("user row"))?;
                let (Some(id), Some(email), Some(name), Some(hash)) =
                    (id.as_str(), email.as_str(), name.as_str(), hash.as_str())
                else {
                    return Err(failed("user row"));
                };
                if data.user_record(id).await?.is_none() {
                    data.insert_user(id, email, name, hash).await?;
                }
            }
        }
        MEMBERS => {
            // Members as in the backup, not added to those here: on
            // replace, a member removed or demoted since keeps no access
            // the backup would not give.
            for m in data.memberships().members_of(id).await? {
                data.memberships()
                    .remove(
                        &tenancy_core::UserId::new(m.user_id.as_str().to_owned()),
                        id,
                    )
                    .await?;
            }
            for r in rows {
                let m: Membership =
                    serde_json::from_value(r.into_iter().next().unwrap_or_default())
                        .map_err(failed)?;
                if m.tenant_id != id {
                    return Err(ApiError::invalid(
                        "backup refused: a membership of another tenant",
                    ));
                }
                data.memberships().upsert(&m).await?;
            }
        }
        KEYS => {
            let mut keys = Vec::new();
            for r in rows {
                let [version, wrapped, state, created_at] =
                    <[Value; 4]>::try_from(r).map_err(|_| failed("key row"))?;
                let state = match state.as_str() {
                    Some("primary") => KeyState::Primary,
                    Some("retired") => KeyState::Retired,
                    _ => KeyState::Destroyed,
                };
                let version = version
                    .as_i64()
                    .and_then(|v| u32::try_from(v).ok())
                    .ok_or_else(|| failed("key version"))?;
                keys.push(StoredKey::new(
                    id,
                    version,
                    unb64(&wrapped)?,
                    state,
                    parse_instant(&created_at)?.ok_or_else(|| failed("key time"))?,
                ));
            }
            data.keyring().import_keys(id, keys).await.map_err(failed)?;
        }
        // Streamed row by row as read (one per customer: not gathered).
        SUBJECT_KEYS => {}
        other => {
            return Err(ApiError::invalid(format!(
                "backup refused: unknown table {other}"
            )));
        }
    }
    Ok(())
}

/// Stores one subject key of a backup (from the private copy, verified in
/// pass one). A subject erased here since the backup stays erased: the
/// store never replaces a tombstone.
async fn restore_subject_key(
    data: &Data,
    id: tenancy_core::TenantId,
    row: Vec<Value>,
) -> Result<(), ApiError> {
    let [subject, wrapped, created_at, erased_at] =
        <[Value; 4]>::try_from(row).map_err(|_| failed("subject key row"))?;
    let subject = SubjectId::new(subject.as_str().unwrap_or_default()).map_err(failed)?;
    let created_at = parse_instant(&created_at)?.ok_or_else(|| failed("time"))?;
    let entry = match (wrapped.is_null(), parse_instant(&erased_at)?) {
        (false, None) => StoredSubjectKey::live(id, subject, unb64(&wrapped)?, created_at),
        (true, Some(at)) => StoredSubjectKey::erased(id, subject, created_at, at),
        _ => return Err(failed("a subject key neither live nor erased")),
    };
    data.subjects()
        .store()
        .insert(entry)
        .await
        .map_err(failed)?;
    Ok(())
}

/// Reads the header of a backup without verifying it (to show what it is).
pub fn peek(file: &Path) -> Result<BackupHeader, ApiError> {
    let mut line = Vec::new();
    open(file)?.read_until(b'\n', &mut line).map_err(failed)?;
    #[derive(serde::Deserialize)]
    struct H {
        header: BackupHeader,
    }
    serde_json::from_slice::<H>(&line)
        .map(|h| h.header)
        .map_err(|e| ApiError::invalid(format!("not a backup: {e}")))
}

/// Every application table's count and checksum as stored now for `tenant`
/// (to compare a restore with its backup).
pub async fn table_sums(data: &Data, tenant: &Tenant) -> Result<Vec<(String, TableSum)>, ApiError> {
    let mut tx = data.begin(&TenantContext::new(tenant.clone())).await?;
    let mut out = Vec::new();
    for spec in app_tables() {
        let sum = match tx.tx() {
            Tx::Sqlite(t) => tenancy_sqlx::backup::read_sqlite_table_sum(t, &spec).await?,
            Tx::Postgres(t) => tenancy_sqlx::backup::read_pg_table_sum(t, &spec).await?,
        };
        out.push((spec.name.clone(), sum));
    }
    tx.commit().await?;
    Ok(out)
}
