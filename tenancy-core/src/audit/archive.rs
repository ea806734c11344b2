//! Audit retention and archival: the live log keeps a bounded window, older
//! events move into sealed archive segments, and the chain still verifies —
//! from a checkpoint for the live log alone, end to end across the archive
//! and the live log — with truncation still detected.
//!
//! # The pieces
//!
//! - [`Retention`]: per tenant, a **minimum** (events younger than it are
//!   never archived or pruned from the live log) and an optional
//!   **maximum** (archived events older than it are destroyed).
//! - [`Segment`]: a contiguous run of the chain, sealed with the tenant's
//!   chain key (HMAC over its header and every row's hash; the rows' content
//!   is covered by the chain hashes themselves). A segment records the hash
//!   before its first row and the anchor of its last.
//! - [`Checkpoint`]: where the live log starts after a prune — the last
//!   archived row's sequence number and hash, authenticated with the chain
//!   key. The database stores it; the live log verifies from it
//!   ([`super::chain::ChainVerifier`]), so deleting the oldest live rows is
//!   still [`ChainBreak::Missing`], and a
//!   checkpoint moved or forged by someone who can write the database is
//!   [`ChainBreak::Checkpoint`].
//! - [`ArchiveDir`]: segments as JSON Lines files in a directory per tenant
//!   (owner-only, written atomically), and the **floor** — an authenticated
//!   checkpoint recording where retained history begins once segments older
//!   than the maximum are destroyed.
//! - [`verify_archive`]: floor → every segment → the live log, as one chain.
//!   A removed or edited segment, a gap, a forged floor or checkpoint, and
//!   truncated newest rows (against anchors) are all reported.
//!
//! Archiving is: read the oldest live rows older than the minimum, seal them
//! into a segment ([`Segment::seal`] refuses a chain that does not verify),
//! write it durably, then — in one database transaction — move the
//! checkpoint and delete the archived rows. A crash between the two leaves a
//! segment whose rows are still live; the next run rewrites it.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use super::AuditEvent;
use super::chain::{
    Anchor, ChainBreak, ChainKey, ChainReport, ChainVerifier, ChainedEvent, GENESIS, Hash,
};
use crate::TenantId;

/// The format tag of a segment file.
pub const SEGMENT_FORMAT: &str = "tenancy-rs/audit-segment/v1";

const CHECKPOINT_LABEL: &str = "tenancy-rs/audit-checkpoint/v1";
const SEGMENT_LABEL: &str = "tenancy-rs/audit-segment/v1";
const FLOOR_LABEL: &str = "tenancy-rs/audit-floor/v1";

/// Why retention, archival or archive verification failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ArchiveError {
    /// The retention settings are inconsistent.
    #[error("audit retention: {0}")]
    Retention(String),
    /// The rows to archive do not form an intact chain from the checkpoint:
    /// nothing is archived (run the chain verification to see where).
    #[error("the audit chain is broken at {0:?}: refusing to seal it into the archive")]
    Broken(ChainBreak),
    /// Reading or writing the archive failed.
    #[error("audit archive {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The rows pruned were not exactly the rows sealed (the live log changed
    /// under the archival): the prune is rolled back and the segment stays
    /// unreferenced until the next run rewrites it.
    #[error(
        "the audit log changed while archiving: {sealed} rows were sealed but {pruned} would be pruned; nothing was pruned (run the chain verification)"
    )]
    Changed {
        /// Rows sealed into the segment.
        sealed: u64,
        /// Rows the prune matched.
        pruned: u64,
    },
    /// A segment file is not a segment.
    #[error("audit archive {path}: not a segment: {detail}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ArchiveError + '_ {
    move |source| ArchiveError::Io {
        path: path.to_owned(),
        source,
    }
}

/// How long a tenant's audit events are kept.
///
/// ```
/// use chrono::{Duration, TimeZone, Utc};
/// use tenancy_core::audit::archive::Retention;
///
/// let r = Retention::days(90, Some(2555))?;
/// let now = Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap();
/// assert_eq!(r.archive_before(now), now - Duration::days(90));
/// assert_eq!(r.destroy_before(now), Some(now - Duration::days(2555)));
/// assert!(Retention::days(90, Some(30)).is_err()); // maximum below minimum
/// # Ok::<(), tenancy_core::audit::archive::ArchiveError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    /// Days an event stays in the live log at least.
    pub min_days: u32,
    /// Days after which an archived event is destroyed (none: kept).
    pub max_days: Option<u32>,
}

impl Retention {
    /// A retention of at least `min_days` live, at most `max_days` in all.
    pub fn days(min_days: u32, max_days: Option<u32>) -> Result<Self, ArchiveError> {
        if max_days.is_some_and(|max| max < min_days) {
            return Err(ArchiveError::Retention(format!(
                "the maximum ({} days) must not be below the minimum ({min_days} days)",
                max_days.unwrap_or_default()
            )));
        }
        Ok(Self { min_days, max_days })
    }

    /// Events before this instant may leave the live log.
    pub fn archive_before(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        now - Duration::days(i64::from(self.min_days))
    }

    /// Archived events before this instant are destroyed.
    pub fn destroy_before(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.max_days
            .map(|max| now - Duration::days(i64::from(max)))
    }
}

fn hex(h: &Hash) -> String {
    h.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Hash> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

mod hex_hash {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(h: &super::Hash, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::hex(h))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<super::Hash, D::Error> {
        let s = String::deserialize(d)?;
        super::unhex(&s).ok_or_else(|| serde::de::Error::custom("expected 64 hex digits"))
    }
}

/// Where a verified chain (re)starts: the last row before it — its sequence
/// number and hash — authenticated with the tenant's chain key.
///
/// ```
/// use tenancy_core::audit::archive::Checkpoint;
/// use tenancy_core::audit::chain::ChainKey;
/// use tenancy_core::TenantId;
///
/// let tenant = TenantId::new_v4();
/// let key = ChainKey::derive(&[7u8; 32], tenant);
/// let cp = Checkpoint::new(&key, 40, [9u8; 32]);
/// assert!(cp.is_authentic(&key));
/// let moved = Checkpoint { seq: 41, ..cp };
/// assert!(!moved.is_authentic(&key));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The last archived row.
    pub seq: u64,
    /// Its hash.
    #[serde(with = "hex_hash")]
    pub hash: Hash,
    /// HMAC of both under the chain key.
    #[serde(with = "hex_hash")]
    pub mac: Hash,
}

impl Checkpoint {
    /// A checkpoint after row `seq` with hash `hash`.
    pub fn new(key: &ChainKey, seq: u64, hash: Hash) -> Self {
        Self {
            seq,
            hash,
            mac: key.mac(CHECKPOINT_LABEL, &[&seq.to_be_bytes(), &hash]),
        }
    }

    /// Whether it was made with `key` (not moved or forged).
    pub fn is_authentic(&self, key: &ChainKey) -> bool {
        let expected = key.mac(CHECKPOINT_LABEL, &[&self.seq.to_be_bytes(), &self.hash]);
        // Not secret-dependent timing that matters: both are public once stored.
        expected == self.mac
    }

    /// The anchor of the row it points at.
    pub fn anchor(&self) -> Anchor {
        Anchor {
            seq: self.seq,
            hash: self.hash,
        }
    }
}

/// Where a tenant's retained history begins once segments were destroyed:
/// the last destroyed row and its time, authenticated under the chain key
/// with a label of its own (a checkpoint cannot be replayed as a floor).
///
/// ```
/// use chrono::Utc;
/// use tenancy_core::audit::archive::Floor;
/// use tenancy_core::audit::chain::ChainKey;
/// use tenancy_core::TenantId;
///
/// let key = ChainKey::derive(&[7u8; 32], TenantId::new_v4());
/// let floor = Floor::new(&key, 40, [9u8; 32], Utc::now());
/// assert!(floor.is_authentic(&key));
/// assert!(!Floor { seq: 41, ..floor }.is_authentic(&key));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Floor {
    /// The last destroyed row.
    pub seq: u64,
    /// Its hash.
    #[serde(with = "hex_hash")]
    pub hash: Hash,
    /// Its time.
    pub last_at: DateTime<Utc>,
    /// HMAC of all three under the chain key.
    #[serde(with = "hex_hash")]
    pub mac: Hash,
}

impl Floor {
    fn mac_of(key: &ChainKey, seq: u64, hash: &Hash, last_at: DateTime<Utc>) -> Hash {
        key.mac(
            FLOOR_LABEL,
            &[&seq.to_be_bytes(), hash, last_at.to_rfc3339().as_bytes()],
        )
    }

    /// A floor after row `seq` (hash `hash`, time `last_at`).
    pub fn new(key: &ChainKey, seq: u64, hash: Hash, last_at: DateTime<Utc>) -> Self {
        Self {
            seq,
            hash,
            last_at,
            mac: Self::mac_of(key, seq, &hash, last_at),
        }
    }

    /// Whether it was made with `key` (not moved, forged or a replayed
    /// checkpoint).
    pub fn is_authentic(&self, key: &ChainKey) -> bool {
        Self::mac_of(key, self.seq, &self.hash, self.last_at) == self.mac
    }
}

/// The first line of a segment file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SegmentHeader {
    /// [`SEGMENT_FORMAT`].
    pub format: String,
    /// The tenant.
    pub tenant: TenantId,
    /// The first row's sequence number.
    pub first_seq: u64,
    /// The last row's sequence number.
    pub last_seq: u64,
    /// The hash before the first row (its `prev_hash`).
    #[serde(with = "hex_hash")]
    pub prev_hash: Hash,
    /// The last row's hash: the segment's anchor.
    #[serde(with = "hex_hash")]
    pub last_hash: Hash,
    /// The oldest event's time.
    pub first_at: DateTime<Utc>,
    /// The newest event's time.
    pub last_at: DateTime<Utc>,
    /// When it was sealed.
    pub sealed_at: DateTime<Utc>,
    /// HMAC under the chain key over the header and every row's hash.
    #[serde(with = "hex_hash")]
    pub seal: Hash,
}

#[derive(Serialize, Deserialize)]
struct SegmentRow {
    seq: u64,
    #[serde(with = "hex_hash")]
    prev_hash: Hash,
    #[serde(with = "hex_hash")]
    hash: Hash,
    event: AuditEvent,
}

/// A sealed run of a tenant's chain.
#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    /// What it holds.
    pub header: SegmentHeader,
    /// The rows, in sequence order.
    pub rows: Vec<ChainedEvent>,
}

fn seal_of(key: &ChainKey, h: &SegmentHeader, rows: &[ChainedEvent]) -> Hash {
    let mut hashes = Vec::with_capacity(rows.len() * 40);
    for r in rows {
        hashes.extend_from_slice(&r.seq.to_be_bytes());
        hashes.extend_from_slice(&r.hash);
    }
    key.mac(
        SEGMENT_LABEL,
        &[
            h.format.as_bytes(),
            h.tenant.as_uuid().as_bytes(),
            &h.first_seq.to_be_bytes(),
            &h.last_seq.to_be_bytes(),
            &h.prev_hash,
            &h.last_hash,
            h.first_at.to_rfc3339().as_bytes(),
            h.last_at.to_rfc3339().as_bytes(),
            h.sealed_at.to_rfc3339().as_bytes(),
            &hashes,
        ],
    )
}

impl Segment {
    /// Seals `rows` — which must follow `after` (the checkpoint: last
    /// archived row's sequence number and hash, or `(0, GENESIS)`) and form
    /// an intact chain — into a segment. A broken chain is refused: the
    /// archive never vouches for tampered rows.
    pub fn seal(
        key: &ChainKey,
        tenant: TenantId,
        after: (u64, Hash),
        rows: Vec<ChainedEvent>,
        now: DateTime<Utc>,
    ) -> Result<Self, ArchiveError> {
        let (Some(first), Some(last)) = (rows.first(), rows.last()) else {
            return Err(ArchiveError::Retention("nothing to archive".into()));
        };
        let mut v = ChainVerifier::new(key, tenant, after.0, after.1, &[]);
        for r in &rows {
            v.push(r);
        }
        if let Some(b) = v.finish().breaks.first() {
            return Err(ArchiveError::Broken(*b));
        }
        let mut header = SegmentHeader {
            format: SEGMENT_FORMAT.to_owned(),
            tenant,
            first_seq: first.seq,
            last_seq: last.seq,
            prev_hash: first.prev_hash,
            last_hash: last.hash,
            first_at: first.event.at,
            last_at: last.event.at,
            sealed_at: now,
            seal: GENESIS,
        };
        header.seal = seal_of(key, &header, &rows);
        Ok(Self { header, rows })
    }

    /// Whether the seal verifies under `key` and the header matches the rows.
    pub fn is_sealed_by(&self, key: &ChainKey) -> bool {
        let h = &self.header;
        let consistent = h.format == SEGMENT_FORMAT
            && self.rows.first().is_some_and(|r| {
                r.seq == h.first_seq && r.prev_hash == h.prev_hash && r.event.at == h.first_at
            })
            && self.rows.last().is_some_and(|r| {
                r.seq == h.last_seq && r.hash == h.last_hash && r.event.at == h.last_at
            });
        consistent && seal_of(key, h, &self.rows) == h.seal
    }

    /// Writes the segment as JSON Lines: the header, then one row per line.
    pub fn write_to(&self, mut w: impl Write) -> std::io::Result<()> {
        serde_json::to_writer(&mut w, &self.header)?;
        w.write_all(b"\n")?;
        for r in &self.rows {
            serde_json::to_writer(
                &mut w,
                &SegmentRow {
                    seq: r.seq,
                    prev_hash: r.prev_hash,
                    hash: r.hash,
                    event: r.event.clone(),
                },
            )?;
            w.write_all(b"\n")?;
        }
        Ok(())
    }

    /// Reads a segment written by [`Segment::write_to`] (the seal is not
    /// checked here: see [`Segment::is_sealed_by`]).
    pub fn read_from(r: impl BufRead, path: &Path) -> Result<Self, ArchiveError> {
        let bad = |detail: String| ArchiveError::Format {
            path: path.to_owned(),
            detail,
        };
        let mut lines = r.lines();
        let header: SegmentHeader = match lines.next() {
            Some(l) => serde_json::from_str(&l.map_err(io(path))?)
                .map_err(|e| bad(format!("header: {e}")))?,
            None => return Err(bad("empty file".into())),
        };
        let mut rows = Vec::new();
        for (i, l) in lines.enumerate() {
            let row: SegmentRow = serde_json::from_str(&l.map_err(io(path))?)
                .map_err(|e| bad(format!("row {}: {e}", i + 1)))?;
            rows.push(ChainedEvent::new(
                row.seq,
                row.event,
                row.prev_hash,
                row.hash,
            ));
        }
        Ok(Self { header, rows })
    }
}

/// Archive segments in a directory: `<root>/<tenant>/<first>-<last>.jsonl`,
/// each written to a temporary file, synced and renamed into place,
/// readable by the owner only; `floor.json` beside them once segments were
/// destroyed by the maximum retention.
#[derive(Debug, Clone)]
pub struct ArchiveDir {
    root: PathBuf,
}

impl ArchiveDir {
    /// Segments under `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The tenant's directory.
    pub fn tenant_dir(&self, tenant: TenantId) -> PathBuf {
        self.root.join(tenant.to_string())
    }

    /// Writes `segment` durably; a segment starting at the same row (left by
    /// an interrupted run) is replaced. Returns its path.
    pub fn write(&self, segment: &Segment) -> Result<PathBuf, ArchiveError> {
        let dir = self.tenant_dir(segment.header.tenant);
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let name = format!(
            "{:020}-{:020}.jsonl",
            segment.header.first_seq, segment.header.last_seq
        );
        let path = dir.join(&name);
        let tmp = dir.join(format!(".{name}.tmp"));
        let mut f = private_file(&tmp).map_err(io(&tmp))?;
        let mut w = std::io::BufWriter::new(&mut f);
        segment.write_to(&mut w).map_err(io(&tmp))?;
        w.flush().map_err(io(&tmp))?;
        drop(w);
        f.sync_all().map_err(io(&tmp))?;
        for (first, _, other) in self.paths(segment.header.tenant)? {
            if first == segment.header.first_seq && other != path {
                std::fs::remove_file(&other).map_err(io(&other))?;
            }
        }
        std::fs::rename(&tmp, &path).map_err(io(&path))?;
        sync_dir(&dir)?;
        Ok(path)
    }

    /// The tenant's segment files, `(first_seq, last_seq, path)` in order.
    pub fn paths(&self, tenant: TenantId) -> Result<Vec<(u64, u64, PathBuf)>, ArchiveError> {
        let dir = self.tenant_dir(tenant);
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(&dir)(e)),
        };
        let mut out = Vec::new();
        for e in entries {
            let path = e.map_err(io(&dir))?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            let Some(stem) = name.strip_suffix(".jsonl") else {
                continue;
            };
            if let Some((a, b)) = stem.split_once('-')
                && let (Ok(a), Ok(b)) = (a.parse(), b.parse())
            {
                out.push((a, b, path));
            }
        }
        out.sort();
        Ok(out)
    }

    /// Reads one segment file.
    pub fn read(&self, path: &Path) -> Result<Segment, ArchiveError> {
        let f = std::fs::File::open(path).map_err(io(path))?;
        Segment::read_from(std::io::BufReader::new(f), path)
    }

    /// Where retained history begins (after segments were destroyed), if
    /// anywhere but the genesis. Check it with [`Floor::is_authentic`].
    pub fn floor(&self, tenant: TenantId) -> Result<Option<Floor>, ArchiveError> {
        let path = self.tenant_dir(tenant).join("floor.json");
        match std::fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| ArchiveError::Format {
                        path,
                        detail: e.to_string(),
                    })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&path)(e)),
        }
    }

    /// Destroys the oldest segments whose newest event is before `before`
    /// (the maximum retention) and whose rows are archived (at most
    /// `archived_to`, the committed checkpoint's row), oldest first and
    /// without gaps, recording the new floor first. Returns how many rows
    /// were destroyed.
    ///
    /// Nothing is destroyed on the word of a file alone: the current floor
    /// must be authentic, and each doomed segment sealed by `key`, for this
    /// tenant, and continuing the chain from the one before — otherwise
    /// [`ArchiveError::Broken`] and the archive is left as it is.
    pub fn destroy_before(
        &self,
        key: &ChainKey,
        tenant: TenantId,
        before: DateTime<Utc>,
        archived_to: u64,
    ) -> Result<u64, ArchiveError> {
        let current = self.floor(tenant)?;
        if let Some(f) = current
            && !f.is_authentic(key)
        {
            return Err(ArchiveError::Broken(ChainBreak::Checkpoint { seq: f.seq }));
        }
        let (mut at_seq, mut at_hash) = current.map_or((0, GENESIS), |f| (f.seq, f.hash));
        let mut doomed = Vec::new();
        let mut floor = None;
        let mut rows = 0u64;
        for (_, last, path) in self.paths(tenant)? {
            let seg = self.read(&path)?;
            let h = &seg.header;
            // Left behind by an interrupted expiry: below the floor already
            // (by its sealed header, not its file name).
            if last <= at_seq {
                if h.last_seq > at_seq || h.tenant != tenant || !seg.is_sealed_by(key) {
                    return Err(ArchiveError::Broken(ChainBreak::SegmentSeal {
                        first: h.first_seq,
                    }));
                }
                doomed.push(path);
                continue;
            }
            if !seg.is_sealed_by(key) || h.tenant != tenant {
                return Err(ArchiveError::Broken(ChainBreak::SegmentSeal {
                    first: h.first_seq,
                }));
            }
            if h.first_seq != at_seq.saturating_add(1) || h.prev_hash != at_hash {
                return Err(ArchiveError::Broken(ChainBreak::Missing {
                    after: at_seq,
                    next: h.first_seq,
                }));
            }
            if h.last_at >= before || h.last_seq > archived_to {
                break;
            }
            rows += seg.rows.len() as u64;
            (at_seq, at_hash) = (h.last_seq, h.last_hash);
            floor = Some(Floor::new(key, h.last_seq, h.last_hash, h.last_at));
            doomed.push(path);
        }
        let dir = self.tenant_dir(tenant);
        if let Some(floor) = floor {
            let path = dir.join("floor.json");
            let tmp = dir.join(".floor.json.tmp");
            let bytes = serde_json::to_vec(&floor).map_err(|e| ArchiveError::Format {
                path: path.clone(),
                detail: e.to_string(),
            })?;
            let mut f = private_file(&tmp).map_err(io(&tmp))?;
            f.write_all(&bytes).map_err(io(&tmp))?;
            f.sync_all().map_err(io(&tmp))?;
            std::fs::rename(&tmp, &path).map_err(io(&path))?;
            sync_dir(&dir)?;
        }
        for p in doomed {
            std::fs::remove_file(&p).map_err(io(&p))?;
        }
        Ok(rows)
    }

    /// Removes the tenant's whole archive (when the tenant is purged).
    pub fn purge(&self, tenant: TenantId) -> Result<(), ArchiveError> {
        let dir = self.tenant_dir(tenant);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(&dir)(e)),
        }
    }
}

#[cfg(unix)]
fn private_file(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let _ = std::fs::remove_file(path);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

#[cfg(not(unix))]
fn private_file(path: &Path) -> std::io::Result<std::fs::File> {
    let _ = std::fs::remove_file(path);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
}

fn sync_dir(dir: &Path) -> Result<(), ArchiveError> {
    #[cfg(unix)]
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))?;
    Ok(())
}

/// What [`verify_archive`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ArchiveReport {
    /// The chain from the floor through the archive and the live log.
    pub chain: ChainReport,
    /// Segments read.
    pub segments: u64,
    /// Rows in them.
    pub archived_rows: u64,
    /// Rows in the live log.
    pub live_rows: u64,
    /// Where retained history begins (0: the genesis).
    pub floor: u64,
}

impl ArchiveReport {
    /// Whether nothing was found wrong.
    pub fn is_intact(&self) -> bool {
        self.chain.is_intact()
    }
}

/// Verifies a tenant's whole retained chain: from the floor (genesis, or
/// where destroyed segments ended), through every archive segment, then the
/// live log. `checkpoint` is the live log's stored checkpoint, if any.
/// Segments are read one at a time; `live` may be a stream.
pub fn verify_archive(
    key: &ChainKey,
    tenant: TenantId,
    dir: &ArchiveDir,
    checkpoint: Option<&Checkpoint>,
    live: impl IntoIterator<Item = ChainedEvent>,
    anchors: &[Anchor],
) -> Result<ArchiveReport, ArchiveError> {
    let floor = dir.floor(tenant)?;
    let (start_seq, start_hash) = floor.map_or((0, GENESIS), |f| (f.seq, f.hash));
    let mut v = ChainVerifier::new(key, tenant, start_seq, start_hash, anchors);
    if let Some(f) = floor
        && !f.is_authentic(key)
    {
        v.note(ChainBreak::Checkpoint { seq: f.seq });
    }
    if let Some(cp) = checkpoint
        && !cp.is_authentic(key)
    {
        v.note(ChainBreak::Checkpoint { seq: cp.seq });
    }
    let (mut segments, mut archived_rows, mut live_rows) = (0, 0, 0);
    // Rows after the checkpoint (or all, without one) are not archived yet:
    // a segment written by a run whose prune did not commit is live too.
    let archived_to = checkpoint.map_or(start_seq, |cp| cp.seq);
    for (first, last, path) in dir.paths(tenant)? {
        // Left behind by an interrupted expiry (older than the floor), or
        // by an interrupted archival (newer than the checkpoint).
        if last <= start_seq || first > archived_to {
            continue;
        }
        let seg = dir.read(&path)?;
        segments += 1;
        if !seg.is_sealed_by(key) || seg.header.tenant != tenant {
            v.note(ChainBreak::SegmentSeal {
                first: seg.header.first_seq,
            });
        }
        for r in &seg.rows {
            if r.seq > archived_to {
                break;
            }
            archived_rows += 1;
            v.push(r);
        }
    }
    if let Some(cp) = checkpoint
        && v.position() != (cp.seq, cp.hash)
    {
        // The archive does not end where the live log starts.
        v.note(ChainBreak::Missing {
            after: v.position().0,
            next: cp.seq + 1,
        });
    }
    for r in live {
        live_rows += 1;
        v.push(&r);
    }
    Ok(ArchiveReport {
        chain: v.finish(),
        segments,
        archived_rows,
        live_rows,
        floor: start_seq,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::chain;

    fn chain_of(key: &ChainKey, tenant: TenantId, n: u64) -> Vec<ChainedEvent> {
        let mut prev = GENESIS;
        (1..=n)
            .map(|seq| {
                let mut e = AuditEvent::user(tenant, "u1", "read", "customers");
                e.at = DateTime::from_timestamp(
                    1_700_000_000 + i64::try_from(seq).unwrap() * 86_400,
                    0,
                )
                .unwrap();
                let hash = key.link(&prev, seq, &e);
                let row = ChainedEvent::new(seq, e, prev, hash);
                prev = hash;
                row
            })
            .collect()
    }

    #[test]
    fn archive_plus_live_verifies_and_each_tampering_is_found() {
        let tenant = TenantId::new_v4();
        let key = ChainKey::derive(&[1u8; 32], tenant);
        let rows = chain_of(&key, tenant, 30);
        let anchor = chain::verify(&key, tenant, rows.clone()).anchor().unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let dir = ArchiveDir::new(tmp.path());
        let now = Utc::now();
        let s1 = Segment::seal(&key, tenant, (0, GENESIS), rows[..10].to_vec(), now).unwrap();
        let s2 =
            Segment::seal(&key, tenant, (10, rows[9].hash), rows[10..20].to_vec(), now).unwrap();
        dir.write(&s1).unwrap();
        let p2 = dir.write(&s2).unwrap();
        let cp = Checkpoint::new(&key, 20, rows[19].hash);
        let live = rows[20..].to_vec();
        let ok = verify_archive(&key, tenant, &dir, Some(&cp), live.clone(), &[anchor]).unwrap();
        assert!(ok.is_intact(), "{:?}", ok.chain.breaks);
        assert_eq!((ok.segments, ok.archived_rows, ok.live_rows), (2, 20, 10));

        // The live log alone verifies from the checkpoint.
        let anchors = [anchor];
        let mut v = ChainVerifier::new(&key, tenant, cp.seq, cp.hash, &anchors);
        live.iter().for_each(|r| v.push(r));
        assert!(v.finish().is_intact());

        // The newest live rows removed: truncated against the anchor.
        let short =
            verify_archive(&key, tenant, &dir, Some(&cp), live[..5].to_vec(), &[anchor]).unwrap();
        assert!(matches!(
            short.chain.breaks[..],
            [ChainBreak::Truncated {
                anchored: 30,
                head: 25
            }]
        ));
        // The oldest live row removed: a gap after the checkpoint.
        let gap = verify_archive(&key, tenant, &dir, Some(&cp), live[1..].to_vec(), &[]).unwrap();
        assert!(gap.chain.breaks.contains(&ChainBreak::Missing {
            after: 20,
            next: 22
        }));
        // A forged checkpoint.
        let forged = Checkpoint { seq: 25, ..cp };
        let f = verify_archive(&key, tenant, &dir, Some(&forged), live.clone(), &[]).unwrap();
        assert!(f.chain.breaks.contains(&ChainBreak::Checkpoint { seq: 25 }));
        // An edited event in a segment: its chain hash no longer matches.
        let original = std::fs::read_to_string(&p2).unwrap();
        std::fs::write(&p2, original.replace("\"read\"", "\"login\"")).unwrap();
        let edited = verify_archive(&key, tenant, &dir, Some(&cp), live.clone(), &[]).unwrap();
        assert!(
            edited
                .chain
                .breaks
                .contains(&ChainBreak::Modified { seq: 11 })
        );
        // An edited header (the sealing time): the seal no longer verifies.
        let mut seg = s2.clone();
        seg.header.sealed_at += Duration::days(1);
        let mut bytes = Vec::new();
        seg.write_to(&mut bytes).unwrap();
        std::fs::write(&p2, bytes).unwrap();
        let resealed = verify_archive(&key, tenant, &dir, Some(&cp), live.clone(), &[]).unwrap();
        assert_eq!(
            resealed.chain.breaks,
            [ChainBreak::SegmentSeal { first: 11 }]
        );
        // A removed segment.
        std::fs::remove_file(&p2).unwrap();
        let removed = verify_archive(&key, tenant, &dir, Some(&cp), live.clone(), &[]).unwrap();
        assert!(!removed.is_intact());
        // Expiry: the floor moves, what remains verifies.
        dir.write(&s2).unwrap();
        let destroyed = dir
            .destroy_before(&key, tenant, s1.header.last_at + Duration::seconds(1), 20)
            .unwrap();
        assert_eq!(destroyed, 10);
        let after = verify_archive(&key, tenant, &dir, Some(&cp), live, &[]).unwrap();
        assert!(after.is_intact(), "{:?}", after.chain.breaks);
        assert_eq!(after.floor, 10);
    }

    #[test]
    fn a_checkpoint_replayed_as_the_floor_is_refused() {
        let tenant = TenantId::new_v4();
        let key = ChainKey::derive(&[1u8; 32], tenant);
        let rows = chain_of(&key, tenant, 20);
        let tmp = tempfile::tempdir().unwrap();
        let dir = ArchiveDir::new(tmp.path());
        let now = Utc::now();
        let s1 = Segment::seal(&key, tenant, (0, GENESIS), rows[..10].to_vec(), now).unwrap();
        let p1 = dir.write(&s1).unwrap();
        let cp = Checkpoint::new(&key, 10, rows[9].hash);
        // Segment removed, the (authentic) checkpoint copied in as floor.
        std::fs::remove_file(&p1).unwrap();
        std::fs::write(
            dir.tenant_dir(tenant).join("floor.json"),
            format!(
                r#"{{"seq":10,"hash":"{}","last_at":"{}","mac":"{}"}}"#,
                hex(&cp.hash),
                rows[9].event.at.to_rfc3339(),
                hex(&cp.mac)
            ),
        )
        .unwrap();
        let r = verify_archive(&key, tenant, &dir, Some(&cp), rows[10..].to_vec(), &[]).unwrap();
        assert!(r.chain.breaks.contains(&ChainBreak::Checkpoint { seq: 10 }));
        // Control: the floor expiry writes verifies.
        let real = Floor::new(&key, 10, rows[9].hash, rows[9].event.at);
        std::fs::write(
            dir.tenant_dir(tenant).join("floor.json"),
            serde_json::to_vec(&real).unwrap(),
        )
        .unwrap();
        let ok = verify_archive(&key, tenant, &dir, Some(&cp), rows[10..].to_vec(), &[]).unwrap();
        assert!(ok.is_intact(), "{:?}", ok.chain.breaks);
    }

    #[test]
    fn expiry_destroys_nothing_on_a_forged_header() {
        let tenant = TenantId::new_v4();
        let key = ChainKey::derive(&[1u8; 32], tenant);
        let rows = chain_of(&key, tenant, 20);
        let tmp = tempfile::tempdir().unwrap();
        let dir = ArchiveDir::new(tmp.path());
        let now = Utc::now();
        let s1 = Segment::seal(&key, tenant, (0, GENESIS), rows[..10].to_vec(), now).unwrap();
        // The newest event back-dated in the header: would look expired.
        let mut forged = s1.clone();
        forged.header.last_at = rows[0].event.at;
        let p1 = dir.write(&s1).unwrap();
        let mut bytes = Vec::new();
        forged.write_to(&mut bytes).unwrap();
        std::fs::write(&p1, bytes).unwrap();
        let cutoff = rows[0].event.at + Duration::seconds(1);
        assert!(matches!(
            dir.destroy_before(&key, tenant, cutoff, 10),
            Err(ArchiveError::Broken(ChainBreak::SegmentSeal { first: 1 }))
        ));
        assert!(p1.exists());
        // Control: the genuine segment is kept by the same cut-off (its
        // newest event is younger), and destroyed by a later one.
        dir.write(&s1).unwrap();
        assert_eq!(dir.destroy_before(&key, tenant, cutoff, 10).unwrap(), 0);
        let later = s1.header.last_at + Duration::seconds(1);
        // Not before its rows are archived (the checkpoint moved past them).
        assert_eq!(dir.destroy_before(&key, tenant, later, 9).unwrap(), 0);
        assert_eq!(dir.destroy_before(&key, tenant, later, 10).unwrap(), 10);
        assert!(!p1.exists());
    }

    #[test]
    fn a_segment_past_the_checkpoint_is_still_live() {
        let tenant = TenantId::new_v4();
        let key = ChainKey::derive(&[1u8; 32], tenant);
        let rows = chain_of(&key, tenant, 10);
        let tmp = tempfile::tempdir().unwrap();
        let dir = ArchiveDir::new(tmp.path());
        // Written, but the prune never committed: no checkpoint.
        let s1 = Segment::seal(&key, tenant, (0, GENESIS), rows[..5].to_vec(), Utc::now()).unwrap();
        dir.write(&s1).unwrap();
        let r = verify_archive(&key, tenant, &dir, None, rows.clone(), &[]).unwrap();
        assert!(r.is_intact(), "{:?}", r.chain.breaks);
        assert_eq!((r.segments, r.archived_rows, r.live_rows), (0, 0, 10));
    }

    #[test]
    fn a_broken_chain_is_never_sealed() {
        let tenant = TenantId::new_v4();
        let key = ChainKey::derive(&[1u8; 32], tenant);
        let mut rows = chain_of(&key, tenant, 5);
        rows[2].event.action = "delete".into();
        assert!(matches!(
            Segment::seal(&key, tenant, (0, GENESIS), rows, Utc::now()),
            Err(ArchiveError::Broken(ChainBreak::Modified { seq: 3 }))
        ));
    }
}
