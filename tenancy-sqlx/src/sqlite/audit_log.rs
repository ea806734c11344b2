//! The audit log of a SQLite tenant: a hash-chained, append-only table
//! inside the tenant's own file ([`SqliteAuditLog`]).

use std::sync::Arc;

use chrono::{DateTime, Utc};
use tenancy_core::TenantId;
use tenancy_core::audit::archive::{
    self, ArchiveDir, ArchiveError, ArchiveReport, Checkpoint, Retention, Segment,
};
use tenancy_core::audit::chain::{
    self, ChainBreak, ChainKey, ChainReport, ChainVerifier, ChainedEvent, GENESIS, Hash,
};
use tenancy_core::audit::{AuditEvent, ComplianceRules};
use zeroize::Zeroizing;

use super::SqliteTenantTx;
use crate::{ArchiveRun, AuditPage, AuditQuery, DbError};

/// The audit table inside every tenant file (created with the file, and by
/// every migration run for older files): append-only — triggers refuse
/// `UPDATE`, and `DELETE` of any row past the archival checkpoint — and
/// chained (see [`tenancy_core::audit::chain`]); plus the checkpoint,
/// which only moves forward.
pub(crate) const AUDIT_TABLE: &str = "CREATE TABLE IF NOT EXISTS tenancy_audit_log (\
     seq INTEGER PRIMARY KEY, at TEXT NOT NULL, actor_id TEXT NOT NULL, action TEXT NOT NULL, \
     resource_type TEXT NOT NULL, flags TEXT NOT NULL, event TEXT NOT NULL, \
     prev_hash BLOB NOT NULL, hash BLOB NOT NULL); \
     CREATE INDEX IF NOT EXISTS tenancy_audit_log_at ON tenancy_audit_log (at); \
     CREATE TRIGGER IF NOT EXISTS tenancy_audit_log_no_update BEFORE UPDATE ON tenancy_audit_log \
     BEGIN SELECT RAISE(ABORT, 'tenancy: the audit log is append-only'); END; \
     CREATE TABLE IF NOT EXISTS tenancy_audit_checkpoint (\
     id INTEGER PRIMARY KEY CHECK (id = 1), seq INTEGER NOT NULL CHECK (seq >= 1), \
     hash BLOB NOT NULL, mac BLOB NOT NULL, archived_at TEXT NOT NULL); \
     DROP TRIGGER IF EXISTS tenancy_audit_log_no_delete; \
     CREATE TRIGGER tenancy_audit_log_no_delete BEFORE DELETE ON tenancy_audit_log \
     WHEN OLD.seq > coalesce((SELECT seq FROM tenancy_audit_checkpoint WHERE id = 1), 0) \
     BEGIN SELECT RAISE(ABORT, 'tenancy: the audit log is append-only (only archived events are pruned)'); END; \
     CREATE TRIGGER IF NOT EXISTS tenancy_audit_checkpoint_forward BEFORE UPDATE ON tenancy_audit_checkpoint \
     WHEN NEW.seq < OLD.seq \
     BEGIN SELECT RAISE(ABORT, 'tenancy: audit checkpoints only move forward'); END; \
     CREATE TRIGGER IF NOT EXISTS tenancy_audit_checkpoint_kept BEFORE DELETE ON tenancy_audit_checkpoint \
     BEGIN SELECT RAISE(ABORT, 'tenancy: audit checkpoints are kept'); END";

/// The audit log of SQLite tenants, written in the tenant's own transaction
/// (so an event commits or rolls back with the change it describes).
///
/// The chain key of each tenant is derived from a root secret the
/// application holds, never the database: whoever can edit the file can
/// break the chain but not forge it, and [`SqliteAuditLog::verify_chain`]
/// finds the break.
///
/// ```no_run
/// use tenancy_core::audit::{Action, AuditEvent};
/// use tenancy_sqlx::sqlite::{SqliteAuditLog, SqliteTenantDb};
///
/// # async fn f(db: SqliteTenantDb, ctx: tenancy_core::TenantContext) -> Result<(), tenancy_sqlx::DbError> {
/// let log = SqliteAuditLog::new([7u8; 32]); // from your secret store
/// let mut tx = db.begin_immediate(&ctx).await?;
/// // ... the change ...
/// log.append(&mut tx, AuditEvent::from_context(&ctx, Action::CREATE, "customers")).await?;
/// tx.commit().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct SqliteAuditLog {
    root: Arc<Zeroizing<[u8; 32]>>,
    rules: Arc<ComplianceRules>,
    alerts: Option<Arc<str>>,
}

impl std::fmt::Debug for SqliteAuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteAuditLog").finish_non_exhaustive()
    }
}

fn invalid(reason: impl Into<String>) -> DbError {
    DbError::InvalidData {
        what: "tenancy_audit_log",
        reason: reason.into(),
    }
}

type Row = (i64, String, Vec<u8>, Vec<u8>);

fn chained(row: Row) -> Result<ChainedEvent, DbError> {
    let (seq, event, prev, hash) = row;
    Ok(ChainedEvent::new(
        u64::try_from(seq).map_err(|_| invalid("seq"))?,
        serde_json::from_str(&event).map_err(|e| invalid(e.to_string()))?,
        Hash::try_from(prev).map_err(|_| invalid("prev_hash length"))?,
        Hash::try_from(hash).map_err(|_| invalid("hash length"))?,
    ))
}

impl SqliteAuditLog {
    /// An audit log chaining with keys derived from `chain_root`.
    pub fn new(chain_root: [u8; 32]) -> Self {
        Self {
            root: Arc::new(Zeroizing::new(chain_root)),
            rules: Arc::new(ComplianceRules::default()),
            alerts: None,
        }
    }

    /// Also writes every event classified `high_risk` to the tenant file's
    /// outbox (topic `audit.high_risk` on `channel`) in the same
    /// transaction; [`super::SqliteTenantOutboxes`] relays them.
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

    /// Appends `event` inside `tx` and returns its sequence number. The
    /// event must belong to the transaction's tenant. Use a transaction
    /// opened with `begin_immediate` (the write lock orders the chain).
    pub async fn append(&self, tx: &mut SqliteTenantTx, event: AuditEvent) -> Result<u64, DbError> {
        if event.tenant != tx.tenant_id() {
            return Err(tenancy_core::TenantMismatch {
                expected: tx.tenant_id(),
                found: event.tenant,
            }
            .into());
        }
        event.validate().map_err(|e| invalid(e.to_string()))?;
        let event = event.classify(&self.rules);
        // The newest live row or, once everything was archived, the checkpoint.
        let last: Option<(i64, Vec<u8>)> = sqlx::query_as(
            "SELECT seq, hash FROM (\
                 SELECT * FROM (SELECT seq, hash FROM tenancy_audit_log ORDER BY seq DESC LIMIT 1) \
                 UNION ALL SELECT seq, hash FROM tenancy_audit_checkpoint WHERE id = 1) \
             ORDER BY seq DESC LIMIT 1",
        )
        .fetch_optional(&mut **tx)
        .await?;
        let (prev_seq, prev_hash) = match last {
            Some((seq, hash)) => (
                u64::try_from(seq).map_err(|_| invalid("seq"))?,
                Hash::try_from(hash).map_err(|_| invalid("hash length"))?,
            ),
            None => (0, GENESIS),
        };
        let seq = prev_seq + 1;
        let hash = self.key(event.tenant).link(&prev_hash, seq, &event);
        let json = serde_json::to_string(&event).map_err(|e| invalid(e.to_string()))?;
        sqlx::query(
            "INSERT INTO tenancy_audit_log (seq, at, actor_id, action, resource_type, flags, event, \
             prev_hash, hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(i64::try_from(seq).map_err(|_| invalid("seq"))?)
        .bind(event.at)
        .bind(event.actor.id())
        .bind(&event.action)
        .bind(&event.resource_type)
        .bind(format!(",{},", event.flags.names().join(",")))
        .bind(json)
        .bind(prev_hash.as_slice())
        .bind(hash.as_slice())
        .execute(&mut **tx)
        .await?;
        if let Some(channel) = self.alerts.as_deref()
            && event.flags.high_risk
        {
            let alert = tenancy_core::outbox::OutboxMessage::new(
                event.tenant,
                channel,
                "audit.high_risk",
                serde_json::json!({ "seq": seq, "event": &event }),
            );
            super::outbox::enqueue(tx, &alert).await?;
        }
        Ok(seq)
    }

    /// Reads the tenant's whole chain (in `tx`) and verifies it.
    pub async fn verify_chain(&self, tx: &mut SqliteTenantTx) -> Result<ChainReport, DbError> {
        self.verify_chain_anchored(tx, &[]).await
    }

    /// [`Self::verify_chain`], also against heads recorded earlier
    /// ([`chain::verify_anchored`]): detects removal of the newest events.
    /// After archival the live log verifies from the checkpoint (see
    /// [`PgAuditLog::verify_chain_anchored`](crate::PgAuditLog::verify_chain_anchored)).
    pub async fn verify_chain_anchored(
        &self,
        tx: &mut SqliteTenantTx,
        anchors: &[chain::Anchor],
    ) -> Result<ChainReport, DbError> {
        let tenant = tx.tenant_id();
        let checkpoint = self.checkpoint(tx).await?;
        let rows = live_rows(tx).await?;
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

    /// One page of the tenant's live log in `tx` (rows after `after`, in
    /// order, at most `limit`), chained as stored (for a backup, read in the
    /// same snapshot as the tenant's data).
    pub async fn live_events(
        &self,
        tx: &mut SqliteTenantTx,
        after: u64,
        limit: u32,
    ) -> Result<Vec<ChainedEvent>, DbError> {
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT seq, event, prev_hash, hash FROM tenancy_audit_log WHERE seq > $1 \
             ORDER BY seq LIMIT $2",
        )
        .bind(i64::try_from(after).map_err(|_| invalid("seq"))?)
        .bind(i64::from(limit))
        .fetch_all(&mut **tx)
        .await?;
        rows.into_iter().map(chained).collect()
    }

    /// The tenant's checkpoint: where its live log starts after archival.
    pub async fn checkpoint(&self, tx: &mut SqliteTenantTx) -> Result<Option<Checkpoint>, DbError> {
        let row: Option<(i64, Vec<u8>, Vec<u8>)> =
            sqlx::query_as("SELECT seq, hash, mac FROM tenancy_audit_checkpoint WHERE id = 1")
                .fetch_optional(&mut **tx)
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

    /// Verifies the tenant's whole retained chain: the archive in `dir`,
    /// then the live log in `tx`, against `anchors`.
    pub async fn verify_archive(
        &self,
        tx: &mut SqliteTenantTx,
        dir: &ArchiveDir,
        anchors: &[chain::Anchor],
    ) -> Result<ArchiveReport, DbError> {
        let tenant = tx.tenant_id();
        let checkpoint = self.checkpoint(tx).await?;
        let rows = live_rows(tx).await?;
        Ok(archive::verify_archive(
            &self.key(tenant),
            tenant,
            dir,
            checkpoint.as_ref(),
            rows,
            anchors,
        )?)
    }

    /// Archives the tenant's events older than `retention`'s minimum into
    /// segments of at most `batch` rows in `dir`, moves the checkpoint and
    /// prunes them, in `tx` (open it with `begin_immediate`; commit it
    /// after); then destroys segments older than the maximum. The file's
    /// triggers refuse deleting a row past the checkpoint. A chain that does
    /// not verify is not archived.
    pub async fn archive(
        &self,
        tx: &mut SqliteTenantTx,
        retention: &Retention,
        dir: &ArchiveDir,
        now: DateTime<Utc>,
        batch: usize,
    ) -> Result<ArchiveRun, DbError> {
        let tenant = tx.tenant_id();
        let key = self.key(tenant);
        let cutoff = retention.archive_before(now);
        let batch = batch.clamp(1, 100_000);
        let mut run = ArchiveRun::default();
        let committed = self.checkpoint(tx).await?;
        loop {
            let checkpoint = self.checkpoint(tx).await?;
            if let Some(c) = checkpoint
                && !c.is_authentic(&key)
            {
                return Err(ArchiveError::Broken(ChainBreak::Checkpoint { seq: c.seq }).into());
            }
            let after = checkpoint.map_or((0, GENESIS), |c| (c.seq, c.hash));
            let rows: Vec<Row> = sqlx::query_as(
                "SELECT seq, event, prev_hash, hash FROM tenancy_audit_log WHERE seq > $1 \
                 ORDER BY seq LIMIT $2",
            )
            .bind(i64::try_from(after.0).map_err(|_| invalid("seq"))?)
            .bind(i64::try_from(batch).unwrap_or(i64::MAX))
            .fetch_all(&mut **tx)
            .await?;
            let rows: Vec<ChainedEvent> = rows
                .into_iter()
                .map(chained)
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
            let seq = i64::try_from(cp.seq).map_err(|_| invalid("seq"))?;
            sqlx::query(
                "INSERT INTO tenancy_audit_checkpoint (id, seq, hash, mac, archived_at) \
                 VALUES (1, $1, $2, $3, $4) ON CONFLICT (id) DO UPDATE \
                 SET seq = excluded.seq, hash = excluded.hash, mac = excluded.mac, \
                     archived_at = excluded.archived_at",
            )
            .bind(seq)
            .bind(cp.hash.as_slice())
            .bind(cp.mac.as_slice())
            .bind(now)
            .execute(&mut **tx)
            .await?;
            // Exactly the rows sealed: none below the old checkpoint, none
            // past the new one.
            let pruned = sqlx::query("DELETE FROM tenancy_audit_log WHERE seq > $1 AND seq <= $2")
                .bind(i64::try_from(after.0).map_err(|_| invalid("seq"))?)
                .bind(seq)
                .execute(&mut **tx)
                .await?
                .rows_affected();
            if pruned != n {
                return Err(ArchiveError::Changed { sealed: n, pruned }.into());
            }
            run.segments += 1;
            run.archived_rows += n;
            run.checkpoint = Some(cp);
            if n < batch as u64 {
                break;
            }
        }
        // Only what an earlier, committed run archived: this run's
        // checkpoint is not committed until the caller commits `tx`.
        if let Some(before) = retention.destroy_before(now) {
            let archived_to = committed.map_or(0, |c| c.seq);
            run.destroyed_rows = dir.destroy_before(&key, tenant, before, archived_to)?;
        }
        Ok(run)
    }

    /// Events matching `q`, newest first, one page.
    pub async fn query(
        &self,
        tx: &mut SqliteTenantTx,
        q: &AuditQuery,
    ) -> Result<AuditPage, DbError> {
        let limit = i64::from(q.limit.unwrap_or(100).clamp(1, 1000));
        // Every stored seq is below i64::MAX: a larger bound is no bound.
        let before = q.before_seq.map(|b| i64::try_from(b).unwrap_or(i64::MAX));
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT seq, event, prev_hash, hash FROM tenancy_audit_log \
             WHERE ($1 IS NULL OR actor_id = $1) AND ($2 IS NULL OR action = $2) \
               AND ($3 IS NULL OR resource_type = $3) AND ($4 IS NULL OR at >= $4) \
               AND ($5 IS NULL OR at < $5) AND ($6 IS NULL OR flags LIKE '%,' || $6 || ',%') \
               AND ($7 IS NULL OR seq < $7) \
             ORDER BY seq DESC LIMIT $8",
        )
        .bind(&q.actor)
        .bind(&q.action)
        .bind(&q.resource_type)
        .bind(q.from)
        .bind(q.until)
        .bind(&q.flag)
        .bind(before)
        .bind(limit + 1)
        .fetch_all(&mut **tx)
        .await?;
        let mut events = rows
            .into_iter()
            .map(|r| chained(r).map(|c| (c.seq, c.event)))
            .collect::<Result<Vec<_>, _>>()?;
        let next = if events.len() as i64 > limit {
            events.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
            events.last().map(|(seq, _)| *seq)
        } else {
            None
        };
        Ok(AuditPage { events, next })
    }

    /// Events of the tenant at or after `since` (for reports), oldest first.
    pub async fn since(
        &self,
        tx: &mut SqliteTenantTx,
        since: DateTime<Utc>,
    ) -> Result<Vec<(u64, AuditEvent)>, DbError> {
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT seq, event, prev_hash, hash FROM tenancy_audit_log WHERE at >= $1 ORDER BY seq",
        )
        .bind(since)
        .fetch_all(&mut **tx)
        .await?;
        rows.into_iter()
            .map(|r| chained(r).map(|c| (c.seq, c.event)))
            .collect()
    }
}

async fn live_rows(tx: &mut SqliteTenantTx) -> Result<Vec<ChainedEvent>, DbError> {
    let rows: Vec<Row> =
        sqlx::query_as("SELECT seq, event, prev_hash, hash FROM tenancy_audit_log ORDER BY seq")
            .fetch_all(&mut **tx)
            .await?;
    rows.into_iter().map(chained).collect()
}
