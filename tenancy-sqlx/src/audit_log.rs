//! The audit log in PostgreSQL: append-only, hash-chained per tenant.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use tenancy_core::TenantId;
use tenancy_core::audit::archive::{
    self, ArchiveDir, ArchiveError, ArchiveReport, Checkpoint, Retention, Segment,
};
use tenancy_core::audit::chain::{
    self, ChainBreak, ChainKey, ChainReport, ChainVerifier, ChainedEvent, GENESIS, Hash,
};
use tenancy_core::audit::{
    AuditActor, AuditError, AuditEvent, AuditSink, ComplianceFlags, ComplianceRules,
};
use zeroize::Zeroizing;

use crate::{DbError, TenantDb, TenantTx};

/// Audit events in `tenancy.audit_log`.
///
/// - **Append-only.** The application role may insert and read its own
///   tenant's rows (row-level security) and has no UPDATE or DELETE grant.
/// - **Hash-chained per tenant** with a key derived from `chain_root`, a
///   secret the application holds (never stored in the database); see
///   [`tenancy_core::audit::chain`]. [`PgAuditLog::verify_chain`] detects
///   modified, deleted, reordered and inserted rows.
/// - **Never silently dropped.** [`PgAuditLog::append`] writes inside the
///   caller's [`TenantTx`], so the event commits or rolls back with the change
///   it describes. Events without a database change go through
///   [`AuditSink::record`] (own transaction), usually behind an
///   [`tenancy_core::audit::AuditQueue`].
/// - Appends of one tenant are serialised (a transaction-scoped advisory
///   lock held until commit): append last in a transaction.
///
/// ```no_run
/// # async fn example(db: tenancy_sqlx::TenantDb, ctx: tenancy_core::TenantContext) -> Result<(), tenancy_sqlx::DbError> {
/// use tenancy_core::audit::{Action, AuditEvent, ComplianceRules};
/// use tenancy_sqlx::PgAuditLog;
///
/// let root = [0u8; 32]; // from your secret store, e.g. base64 in an env var
/// let log = PgAuditLog::new(db.clone(), root)
///     .with_rules(ComplianceRules::default().pii_field("customers.pan"));
///
/// let mut tx = db.begin(&ctx).await?;
/// sqlx::query("UPDATE customers SET email = $1 WHERE id = $2")
///     .bind("new@example.com").bind(42_i64)
///     .execute(&mut *tx).await?;
/// log.append(&mut tx, AuditEvent::from_context(&ctx, Action::UPDATE, "customers")
///     .with_resource_id(42).with_fields(["customers.email"])).await?;
/// tx.commit().await?;
///
/// assert!(log.verify_chain(ctx.tenant_id()).await?.is_intact());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PgAuditLog {
    db: TenantDb,
    root: Arc<Zeroizing<[u8; 32]>>,
    rules: Arc<ComplianceRules>,
    alerts: Option<Arc<str>>,
}

impl std::fmt::Debug for PgAuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgAuditLog").finish_non_exhaustive()
    }
}

/// Filters for [`PgAuditLog::query`]; every filter is optional.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct AuditQuery {
    /// Only this actor id.
    pub actor: Option<String>,
    /// Only this action.
    pub action: Option<String>,
    /// Only this resource type.
    pub resource_type: Option<String>,
    /// From this time, inclusive.
    pub from: Option<DateTime<Utc>>,
    /// Until this time, exclusive.
    pub until: Option<DateTime<Utc>>,
    /// Only events with this compliance flag (`pii`, `financial`, `bulk_export`, `high_risk`).
    pub flag: Option<String>,
    /// Page size (default 100, at most 1 000).
    pub limit: Option<u32>,
    /// Continue after this sequence number (from [`AuditPage::next`]); pages
    /// go newest first.
    pub before_seq: Option<u64>,
}

impl AuditQuery {
    /// Every event, newest first.
    pub fn new() -> Self {
        Self::default()
    }
    /// Only this actor.
    pub fn actor(mut self, id: impl Into<String>) -> Self {
        self.actor = Some(id.into());
        self
    }
    /// Only this action.
    pub fn action(mut self, action: impl Into<String>) -> Self {
        self.action = Some(action.into());
        self
    }
    /// Only this resource type.
    pub fn resource_type(mut self, r: impl Into<String>) -> Self {
        self.resource_type = Some(r.into());
        self
    }
    /// Within `[from, until)`.
    pub fn between(mut self, from: DateTime<Utc>, until: DateTime<Utc>) -> Self {
        self.from = Some(from);
        self.until = Some(until);
        self
    }
    /// Only events with a compliance flag.
    pub fn flag(mut self, flag: impl Into<String>) -> Self {
        self.flag = Some(flag.into());
        self
    }
    /// Page size.
    pub fn limit(mut self, n: u32) -> Self {
        self.limit = Some(n);
        self
    }
    /// The page after `seq`.
    pub fn before(mut self, seq: u64) -> Self {
        self.before_seq = Some(seq);
        self
    }
}

/// A page of events, newest first.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct AuditPage {
    /// The events with their sequence numbers.
    pub events: Vec<(u64, AuditEvent)>,
    /// Pass to [`AuditQuery::before`] for the next page; `None` at the end.
    pub next: Option<u64>,
}

/// One line of a user-activity report.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ActivityLine {
    /// The actor id.
    pub actor: String,
    /// The action.
    pub action: String,
    /// How many times.
    pub count: u64,
    /// The last time.
    pub last_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct Row {
    seq: i64,
    at: DateTime<Utc>,
    actor_kind: String,
    actor_id: String,
    action: String,
    resource_type: String,
    resource_id: Option<String>,
    fields: Vec<String>,
    record_count: Option<i64>,
    details: serde_json::Value,
    ip: Option<String>,
    user_agent: Option<String>,
    flags: Vec<String>,
    prev_hash: Vec<u8>,
    hash: Vec<u8>,
}

const COLUMNS: &str = "seq, at, actor_kind, actor_id, action, resource_type, resource_id, fields, \
                       record_count, details, ip, user_agent, flags, prev_hash, hash";

/// What one [`PgAuditLog::archive`] (or `SqliteAuditLog::archive`) run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ArchiveRun {
    /// Segments written.
    pub segments: u64,
    /// Rows moved from the live log into them.
    pub archived_rows: u64,
    /// Archived rows destroyed by the maximum retention.
    pub destroyed_rows: u64,
    /// The live log's checkpoint afterwards, if it moved.
    pub checkpoint: Option<Checkpoint>,
}

async fn lock_chain(conn: &mut PgConnection, tenant: TenantId) -> Result<(), DbError> {
    sqlx::query(
        "SELECT pg_advisory_xact_lock(hashtextextended('tenancy.audit_log:' || $1::text, 0))",
    )
    .bind(tenant.as_uuid())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

async fn read_checkpoint(
    conn: &mut PgConnection,
    tenant: TenantId,
) -> Result<Option<Checkpoint>, DbError> {
    let row: Option<(i64, Vec<u8>, Vec<u8>)> =
        sqlx::query_as("SELECT seq, hash, mac FROM tenancy.audit_checkpoints WHERE tenant_id = $1")
            .bind(tenant.as_uuid())
            .fetch_optional(&mut *conn)
            .await?;
    row.map(|(seq, hash, mac)| {
        Ok(Checkpoint {
            seq: u64::try_from(seq).map_err(|_| invalid("checkpoint seq"))?,
            hash: hash.try_into().map_err(|_| invalid("checkpoint hash"))?,
            mac: mac.try_into().map_err(|_| invalid("checkpoint mac"))?,
        })
    })
    .transpose()
}

fn invalid(reason: impl Into<String>) -> DbError {
    DbError::InvalidData {
        what: "tenancy.audit_log",
        reason: reason.into(),
    }
}

impl Row {
    fn into_chained(self, tenant: TenantId) -> Result<ChainedEvent, DbError> {
        let actor = match self.actor_kind.as_str() {
            "user" => AuditActor::User(self.actor_id),
            "system" => AuditActor::System(self.actor_id),
            other => return Err(invalid(format!("actor kind {other:?}"))),
        };
        let mut e = match &actor {
            AuditActor::User(id) => AuditEvent::user(tenant, id, &self.action, &self.resource_type),
            AuditActor::System(id) => {
                AuditEvent::system(tenant, id, &self.action, &self.resource_type)
            }
            _ => return Err(invalid("actor kind")),
        }
        .with_fields(self.fields)
        .with_details(self.details)
        .at(self.at);
        e.resource_id = self.resource_id;
        e.record_count = self
            .record_count
            .map(u64::try_from)
            .transpose()
            .map_err(|_| invalid("negative record_count"))?;
        e.ip = self
            .ip
            .map(|ip| ip.parse())
            .transpose()
            .map_err(|_| invalid("ip"))?;
        e.user_agent = self.user_agent;
        e.flags = ComplianceFlags::from_names(self.flags.iter().map(String::as_str));
        let hash = |v: Vec<u8>| -> Result<Hash, DbError> {
            v.try_into().map_err(|_| invalid("hash length"))
        };
        Ok(ChainedEvent::new(
            u64::try_from(self.seq).map_err(|_| invalid("seq"))?,
            e,
            hash(self.prev_hash)?,
            hash(self.hash)?,
        ))
    }
}

impl PgAuditLog {
    /// An audit log over `db`, chaining with keys derived from `chain_root`
    /// (32 secret bytes held by the application, never by the database).
    pub fn new(db: TenantDb, chain_root: [u8; 32]) -> Self {
        Self {
            db,
            root: Arc::new(Zeroizing::new(chain_root)),
            rules: Arc::new(ComplianceRules::default()),
            alerts: None,
        }
    }

    /// Also writes every event classified `high_risk` to the outbox
    /// (`tenancy.outbox`, topic `audit.high_risk` on `channel`) in the same
    /// transaction, for a [`Deliverer`](tenancy_core::outbox::Deliverer) to
    /// send to an alerting webhook: an alert exists exactly when the event
    /// does.
    pub fn with_alerts(mut self, channel: &str) -> Self {
        self.alerts = Some(channel.into());
        self
    }

    /// Classifies every appended event with `rules`.
    pub fn with_rules(mut self, rules: ComplianceRules) -> Self {
        self.rules = Arc::new(rules);
        self
    }

    fn key(&self, tenant: TenantId) -> ChainKey {
        ChainKey::derive(&self.root, tenant)
    }

    /// The tenant's chain key: to verify rows read outside this log (a
    /// backup of it, an export) with [`ChainVerifier`]. It authenticates the
    /// tenant's history: keep it where the audit root is kept.
    pub fn chain_key(&self, tenant: TenantId) -> ChainKey {
        self.key(tenant)
    }

    /// Appends `event` inside `tx` (so it commits or rolls back with the
    /// change it describes) and returns its sequence number. The event must
    /// belong to the transaction's tenant.
    pub async fn append(&self, tx: &mut TenantTx, event: AuditEvent) -> Result<u64, DbError> {
        if event.tenant != tx.tenant_id() {
            return Err(tenancy_core::TenantMismatch {
                expected: tx.tenant_id(),
                found: event.tenant,
            }
            .into());
        }
        self.append_conn(tx, event).await
    }

    async fn append_conn(
        &self,
        conn: &mut PgConnection,
        event: AuditEvent,
    ) -> Result<u64, DbError> {
        event.validate().map_err(|e| invalid(e.to_string()))?;
        let event = event.classify(&self.rules);
        let tenant = event.tenant;
        sqlx::query(
            "SELECT pg_advisory_xact_lock(hashtextextended('tenancy.audit_log:' || $1::text, 0))",
        )
        .bind(tenant.as_uuid())
        .execute(&mut *conn)
        .await?;
        // The newest live row or, once everything was archived, the checkpoint.
        let last: Option<(i64, Vec<u8>)> = sqlx::query_as(
            "SELECT seq, hash FROM (\
                 (SELECT seq, hash FROM tenancy.audit_log WHERE tenant_id = $1 ORDER BY seq DESC LIMIT 1) \
                 UNION ALL SELECT seq, hash FROM tenancy.audit_checkpoints WHERE tenant_id = $1) h \
             ORDER BY seq DESC LIMIT 1",
        )
        .bind(tenant.as_uuid())
        .fetch_optional(&mut *conn)
        .await?;
        let (prev_seq, prev_hash) = match last {
            Some((seq, hash)) => (
                u64::try_from(seq).map_err(|_| invalid("seq"))?,
                Hash::try_from(hash).map_err(|_| invalid("hash length"))?,
            ),
            None => (0, GENESIS),
        };
        let seq = prev_seq + 1;
        let hash = self.key(tenant).link(&prev_hash, seq, &event);
        sqlx::query(
            "INSERT INTO tenancy.audit_log (tenant_id, seq, at, actor_kind, actor_id, action, \
             resource_type, resource_id, fields, record_count, details, ip, user_agent, flags, \
             prev_hash, hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)",
        )
        .bind(tenant.as_uuid())
        .bind(i64::try_from(seq).map_err(|_| invalid("seq"))?)
        .bind(event.at)
        .bind(event.actor.kind())
        .bind(event.actor.id())
        .bind(&event.action)
        .bind(&event.resource_type)
        .bind(&event.resource_id)
        .bind(&event.fields)
        .bind(
            event
                .record_count
                .map(i64::try_from)
                .transpose()
                .map_err(|_| invalid("record_count too large"))?,
        )
        .bind(&event.details)
        .bind(event.ip.map(|ip| ip.to_string()))
        .bind(&event.user_agent)
        .bind(event.flags.names())
        .bind(prev_hash.as_slice())
        .bind(hash.as_slice())
        .execute(&mut *conn)
        .await?;
        if let Some(channel) = self.alerts.as_deref()
            && event.flags.high_risk
        {
            let alert = tenancy_core::outbox::OutboxMessage::new(
                tenant,
                channel,
                "audit.high_risk",
                serde_json::json!({ "seq": seq, "event": &event }),
            );
            crate::outbox::enqueue(&mut *conn, &alert).await?;
        }
        Ok(seq)
    }

    /// Reads the tenant's whole chain and verifies it.
    pub async fn verify_chain(&self, tenant: TenantId) -> Result<ChainReport, DbError> {
        self.verify_chain_anchored(tenant, &[]).await
    }

    /// [`Self::verify_chain`], also against heads recorded earlier
    /// ([`chain::verify_anchored`]): detects removal of the newest events,
    /// even once the log has grown again over the same sequence numbers.
    ///
    /// Once older events were archived ([`Self::archive`]) the live log
    /// verifies from the tenant's checkpoint; a checkpoint that does not
    /// verify is [`ChainBreak::Checkpoint`], and missing rows right after it
    /// are [`ChainBreak::Missing`]. Anchors older than the checkpoint are
    /// checked by [`Self::verify_archive`].
    pub async fn verify_chain_anchored(
        &self,
        tenant: TenantId,
        anchors: &[chain::Anchor],
    ) -> Result<ChainReport, DbError> {
        let (checkpoint, rows) = self.live(tenant).await?;
        let key = self.key(tenant);
        let (seq, hash) = checkpoint.map_or((0, GENESIS), |c| (c.seq, c.hash));
        let mut v = ChainVerifier::new(&key, tenant, seq, hash, anchors);
        if let Some(c) = checkpoint
            && !c.is_authentic(&key)
        {
            v.note(ChainBreak::Checkpoint { seq: c.seq });
        }
        for r in &rows {
            v.push(r);
        }
        Ok(v.finish())
    }

    /// The tenant's checkpoint and live rows, in one snapshot.
    async fn live(
        &self,
        tenant: TenantId,
    ) -> Result<(Option<Checkpoint>, Vec<ChainedEvent>), DbError> {
        let mut tx = self.db.begin_for_id(tenant).await?;
        let checkpoint = read_checkpoint(&mut tx, tenant).await?;
        let rows: Vec<Row> = sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM tenancy.audit_log WHERE tenant_id = $1 ORDER BY seq"
        ))
        .bind(tenant.as_uuid())
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let rows = rows
            .into_iter()
            .map(|r| r.into_chained(tenant))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((checkpoint, rows))
    }

    /// One page of the tenant's live log in `tx` (rows after `after`, in
    /// order, at most `limit`), chained as stored: for a backup, read in the
    /// same snapshot as the tenant's data.
    ///
    /// ```no_run
    /// # async fn f(log: &tenancy_sqlx::PgAuditLog, tx: &mut tenancy_sqlx::TenantTx) -> Result<(), tenancy_sqlx::DbError> {
    /// let mut after = 0;
    /// loop {
    ///     let page = log.live_events(tx, after, 1000).await?;
    ///     let Some(last) = page.last() else { break };
    ///     after = last.seq;
    ///     // … write `page` out …
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn live_events(
        &self,
        tx: &mut TenantTx,
        after: u64,
        limit: u32,
    ) -> Result<Vec<ChainedEvent>, DbError> {
        let tenant = tx.tenant_id();
        let rows: Vec<Row> = sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM tenancy.audit_log WHERE tenant_id = $1 AND seq > $2 \
             ORDER BY seq LIMIT $3"
        ))
        .bind(tenant.as_uuid())
        .bind(i64::try_from(after).map_err(|_| invalid("seq"))?)
        .bind(i64::from(limit))
        .fetch_all(&mut **tx)
        .await?;
        rows.into_iter().map(|r| r.into_chained(tenant)).collect()
    }

    /// The tenant's checkpoint: where its live log starts after archival.
    pub async fn checkpoint(&self, tenant: TenantId) -> Result<Option<Checkpoint>, DbError> {
        let mut tx = self.db.begin_for_id(tenant).await?;
        let c = read_checkpoint(&mut tx, tenant).await?;
        tx.commit().await?;
        Ok(c)
    }

    /// Verifies the tenant's whole retained chain: the archive in `dir`
    /// (from its floor, segment by segment), then the live log, against
    /// `anchors` ([`archive::verify_archive`]).
    pub async fn verify_archive(
        &self,
        tenant: TenantId,
        dir: &ArchiveDir,
        anchors: &[chain::Anchor],
    ) -> Result<ArchiveReport, DbError> {
        let (checkpoint, rows) = self.live(tenant).await?;
        Ok(archive::verify_archive(
            &self.key(tenant),
            tenant,
            dir,
            checkpoint.as_ref(),
            rows,
            anchors,
        )?)
    }

    /// Archives the tenant's events older than `retention`'s minimum: seals
    /// them into segments of at most `batch` rows in `dir`, then moves the
    /// checkpoint and deletes them from the live log, one transaction per
    /// segment; afterwards destroys archived segments older than the
    /// maximum. Runs as the **owner** (`owner`: a pool of the role that
    /// applied the migrations): the application role can neither delete
    /// audit rows nor move checkpoints, and even the owner cannot delete a
    /// row past its tenant's checkpoint. A chain that does not verify is not
    /// archived ([`ArchiveError::Broken`](archive::ArchiveError::Broken)).
    pub async fn archive(
        &self,
        owner: &sqlx::PgPool,
        tenant: TenantId,
        retention: &Retention,
        dir: &ArchiveDir,
        now: DateTime<Utc>,
        batch: usize,
    ) -> Result<ArchiveRun, DbError> {
        let key = self.key(tenant);
        let cutoff = retention.archive_before(now);
        let batch = batch.clamp(1, 100_000);
        let mut run = ArchiveRun::default();
        let mut archived_to: u64;
        loop {
            let mut tx = owner.begin().await?;
            lock_chain(&mut tx, tenant).await?;
            let checkpoint = read_checkpoint(&mut tx, tenant).await?;
            if let Some(c) = checkpoint
                && !c.is_authentic(&key)
            {
                return Err(ArchiveError::Broken(ChainBreak::Checkpoint { seq: c.seq }).into());
            }
            let after = checkpoint.map_or((0, GENESIS), |c| (c.seq, c.hash));
            archived_to = after.0;
            let rows: Vec<Row> = sqlx::query_as(&format!(
                "SELECT {COLUMNS} FROM tenancy.audit_log WHERE tenant_id = $1 AND seq > $2 \
                 ORDER BY seq LIMIT $3"
            ))
            .bind(tenant.as_uuid())
            .bind(i64::try_from(after.0).map_err(|_| invalid("seq"))?)
            .bind(i64::try_from(batch).unwrap_or(i64::MAX))
            .fetch_all(&mut *tx)
            .await?;
            let rows: Vec<ChainedEvent> = rows
                .into_iter()
                .map(|r| r.into_chained(tenant))
                .collect::<Result<Vec<_>, _>>()?
                .into_iter()
                .take_while(|r| r.event.at < cutoff)
                .collect();
            let Some(last) = rows.last() else { break };
            let (last_seq, last_hash) = (last.seq, last.hash);
            let n = rows.len() as u64;
            let segment = Segment::seal(&key, tenant, after, rows, now)?;
            dir.write(&segment)?;
            let cp = Checkpoint::new(&key, last_seq, last_hash);
            sqlx::query(
                "INSERT INTO tenancy.audit_checkpoints (tenant_id, seq, hash, mac, archived_at) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (tenant_id) DO UPDATE \
                 SET seq = excluded.seq, hash = excluded.hash, mac = excluded.mac, \
                     archived_at = excluded.archived_at",
            )
            .bind(tenant.as_uuid())
            .bind(i64::try_from(cp.seq).map_err(|_| invalid("seq"))?)
            .bind(cp.hash.as_slice())
            .bind(cp.mac.as_slice())
            .bind(now)
            .execute(&mut *tx)
            .await?;
            // Exactly the rows sealed: none below the old checkpoint, none
            // past the new one.
            let pruned = sqlx::query(
                "DELETE FROM tenancy.audit_log WHERE tenant_id = $1 AND seq > $2 AND seq <= $3",
            )
            .bind(tenant.as_uuid())
            .bind(i64::try_from(after.0).map_err(|_| invalid("seq"))?)
            .bind(i64::try_from(cp.seq).map_err(|_| invalid("seq"))?)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if pruned != n {
                return Err(ArchiveError::Changed { sealed: n, pruned }.into());
            }
            tx.commit().await?;
            run.segments += 1;
            run.archived_rows += n;
            run.checkpoint = Some(cp);
            archived_to = cp.seq;
            if n < batch as u64 {
                break;
            }
        }
        if let Some(before) = retention.destroy_before(now) {
            run.destroyed_rows = dir.destroy_before(&key, tenant, before, archived_to)?;
        }
        tracing::info!(
            tenant.id = %tenant,
            segments = run.segments,
            archived = run.archived_rows,
            destroyed = run.destroyed_rows,
            "audit log archived"
        );
        Ok(run)
    }

    /// Destroys every audit event of `tenant` and its checkpoint, whatever
    /// the state of its chain (a purged tenant's log goes even when it was
    /// tampered with: verify it first, to record the fact). Runs as the
    /// **owner**, in one transaction: the checkpoint is moved to the newest
    /// row — the only way the owner may delete rows — then everything goes.
    /// Returns how many events were destroyed.
    pub async fn purge(&self, owner: &sqlx::PgPool, tenant: TenantId) -> Result<u64, DbError> {
        let key = self.key(tenant);
        let mut tx = owner.begin().await?;
        lock_chain(&mut tx, tenant).await?;
        let newest: Option<(i64, Vec<u8>)> = sqlx::query_as(
            "SELECT seq, hash FROM tenancy.audit_log WHERE tenant_id = $1 ORDER BY seq DESC LIMIT 1",
        )
        .bind(tenant.as_uuid())
        .fetch_optional(&mut *tx)
        .await?;
        let mut destroyed = 0;
        if let Some((seq, hash)) = newest {
            let hash: Hash = hash.try_into().map_err(|_| invalid("hash"))?;
            let cp = Checkpoint::new(&key, u64::try_from(seq).map_err(|_| invalid("seq"))?, hash);
            sqlx::query(
                "INSERT INTO tenancy.audit_checkpoints (tenant_id, seq, hash, mac) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (tenant_id) DO UPDATE \
                 SET seq = excluded.seq, hash = excluded.hash, mac = excluded.mac \
                 WHERE tenancy.audit_checkpoints.seq <= excluded.seq",
            )
            .bind(tenant.as_uuid())
            .bind(seq)
            .bind(cp.hash.as_slice())
            .bind(cp.mac.as_slice())
            .execute(&mut *tx)
            .await?;
            destroyed = sqlx::query("DELETE FROM tenancy.audit_log WHERE tenant_id = $1")
                .bind(tenant.as_uuid())
                .execute(&mut *tx)
                .await?
                .rows_affected();
        }
        sqlx::query("DELETE FROM tenancy.audit_checkpoints WHERE tenant_id = $1")
            .bind(tenant.as_uuid())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        tracing::warn!(tenant.id = %tenant, destroyed, "audit log destroyed (tenant purge)");
        Ok(destroyed)
    }

    /// Events of `tenant` matching `q`, newest first, one page.
    pub async fn query(&self, tenant: TenantId, q: &AuditQuery) -> Result<AuditPage, DbError> {
        let limit = i64::from(q.limit.unwrap_or(100).clamp(1, 1000));
        let mut tx = self.db.begin_for_id(tenant).await?;
        let rows: Vec<Row> = sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM tenancy.audit_log WHERE tenant_id = $1 \
             AND ($2::text IS NULL OR actor_id = $2) \
             AND ($3::text IS NULL OR action = $3) \
             AND ($4::text IS NULL OR resource_type = $4) \
             AND ($5::timestamptz IS NULL OR at >= $5) \
             AND ($6::timestamptz IS NULL OR at < $6) \
             AND ($7::text IS NULL OR $7 = ANY (flags)) \
             AND ($8::bigint IS NULL OR seq < $8) \
             ORDER BY seq DESC LIMIT $9"
        ))
        .bind(tenant.as_uuid())
        .bind(&q.actor)
        .bind(&q.action)
        .bind(&q.resource_type)
        .bind(q.from)
        .bind(q.until)
        .bind(&q.flag)
        // Every stored seq is below i64::MAX: a larger bound is no bound.
        .bind(q.before_seq.map(|b| i64::try_from(b).unwrap_or(i64::MAX)))
        .bind(limit + 1)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let more = i64::try_from(rows.len()).unwrap_or(i64::MAX) > limit;
        let mut events = rows
            .into_iter()
            .map(|r| r.into_chained(tenant).map(|c| (c.seq, c.event)))
            .collect::<Result<Vec<_>, _>>()?;
        if more {
            events.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
        }
        let next = if more {
            events.last().map(|(s, _)| *s)
        } else {
            None
        };
        Ok(AuditPage { events, next })
    }

    /// Data-access report: every PII access and bulk export in `[from, until)`.
    pub async fn data_access_report(
        &self,
        tenant: TenantId,
        from: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<Vec<(u64, AuditEvent)>, DbError> {
        self.report(
            tenant,
            from,
            until,
            "('pii' = ANY (flags) OR 'bulk_export' = ANY (flags))",
        )
        .await
    }

    /// Security-incident report: high-risk events and refusals (`denied`) in `[from, until)`.
    pub async fn security_incidents(
        &self,
        tenant: TenantId,
        from: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<Vec<(u64, AuditEvent)>, DbError> {
        self.report(
            tenant,
            from,
            until,
            "('high_risk' = ANY (flags) OR action = 'denied')",
        )
        .await
    }

    async fn report(
        &self,
        tenant: TenantId,
        from: DateTime<Utc>,
        until: DateTime<Utc>,
        predicate: &'static str,
    ) -> Result<Vec<(u64, AuditEvent)>, DbError> {
        let mut tx = self.db.begin_for_id(tenant).await?;
        let rows: Vec<Row> = sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM tenancy.audit_log WHERE tenant_id = $1 \
             AND at >= $2 AND at < $3 AND {predicate} ORDER BY seq"
        ))
        .bind(tenant.as_uuid())
        .bind(from)
        .bind(until)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        rows.into_iter()
            .map(|r| r.into_chained(tenant).map(|c| (c.seq, c.event)))
            .collect()
    }

    /// User-activity report: actions per actor in `[from, until)`, busiest first.
    pub async fn user_activity(
        &self,
        tenant: TenantId,
        from: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<Vec<ActivityLine>, DbError> {
        let mut tx = self.db.begin_for_id(tenant).await?;
        let rows: Vec<(String, String, i64, DateTime<Utc>)> = sqlx::query_as(
            "SELECT actor_id, action, count(*), max(at) FROM tenancy.audit_log \
             WHERE tenant_id = $1 AND at >= $2 AND at < $3 \
             GROUP BY actor_id, action ORDER BY count(*) DESC, actor_id, action",
        )
        .bind(tenant.as_uuid())
        .bind(from)
        .bind(until)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(rows
            .into_iter()
            .map(|(actor, action, count, last_at)| ActivityLine {
                actor,
                action,
                count: u64::try_from(count).unwrap_or(0),
                last_at,
            })
            .collect())
    }
}

#[async_trait]
impl AuditSink for PgAuditLog {
    /// Appends in a transaction of its own.
    async fn record(&self, event: AuditEvent) -> Result<(), AuditError> {
        let sink = |e: DbError| {
            tracing::error!(error = %e, "audit log append failed");
            AuditError::Sink(e.to_string())
        };
        event.validate()?;
        let mut tx = self.db.begin_for_id(event.tenant).await.map_err(sink)?;
        self.append_conn(&mut tx, event).await.map_err(sink)?;
        tx.commit().await.map_err(|e| sink(e.into()))
    }
}
