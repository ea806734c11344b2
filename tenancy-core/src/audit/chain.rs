//! The per-tenant audit hash chain.
//!
//! Each stored event carries a sequence number (1, 2, … per tenant), the
//! previous event's hash and its own:
//!
//! ```text
//! hash(n) = HMAC-SHA256(chain key of the tenant,
//!                       "tenancy-rs/audit/v1" ‖ hash(n-1) ‖ n (u64 BE) ‖ canonical(event n))
//! ```
//!
//! with `hash(0)` = 32 zero bytes. The chain key is derived per tenant
//! (HKDF-SHA256) from a root secret the **application** holds — not the
//! database — so someone who can write the audit table (the table owner, a
//! DBA, a leaked superuser password) can change, delete, reorder or insert
//! rows but cannot forge the hashes that would hide it. [`verify`] finds
//! every such change.
//!
//! One limit, by construction: removing the *newest* rows leaves a shorter
//! chain that is still valid. Keep the head ([`ChainReport::anchor`])
//! outside the database (a log line, a ticket, another store) and verify
//! against it later with [`verify_anchored`]: a chain that now ends before
//! the anchor is [`ChainBreak::Truncated`], and one whose row at the
//! anchored position is another (the newest rows removed, then the log grew
//! again over the same sequence numbers) is [`ChainBreak::AnchorMismatch`].
//!
//! The canonical form is JSON with a fixed field order and object keys
//! sorted at every depth, so it survives a round trip through `jsonb`.

use std::fmt::Write as _;

use chrono::SecondsFormat;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;
use zeroize::{Zeroize, ZeroizeOnDrop};

use super::AuditEvent;
use crate::TenantId;

/// A link hash.
pub type Hash = [u8; 32];

/// The "previous hash" of the first event of a tenant.
pub const GENESIS: Hash = [0u8; 32];

/// A tenant's chain key, derived from the application's audit root secret.
///
/// ```
/// use tenancy_core::audit::chain::{ChainKey, GENESIS};
/// use tenancy_core::audit::{Action, AuditEvent};
/// use tenancy_core::TenantId;
///
/// let tenant = TenantId::new_v4();
/// let key = ChainKey::derive(&[7u8; 32], tenant);
/// let event = AuditEvent::user(tenant, "u1", Action::READ, "customers");
/// let h1 = key.link(&GENESIS, 1, &event);
/// assert_eq!(h1, key.link(&GENESIS, 1, &event));
/// assert_ne!(h1, key.link(&GENESIS, 2, &event));
/// ```
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct ChainKey([u8; 32]);

impl std::fmt::Debug for ChainKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChainKey(..)")
    }
}

impl ChainKey {
    /// The chain key of `tenant` under `root`.
    pub fn derive(root: &[u8; 32], tenant: TenantId) -> Self {
        let hk = hkdf::Hkdf::<Sha256>::new(Some(tenant.as_uuid().as_bytes()), root);
        let mut key = [0u8; 32];
        // 32 bytes is far below HKDF-SHA256's output limit: cannot fail.
        if hk.expand(b"tenancy-rs/audit-chain/v1", &mut key).is_err() {
            key = [0u8; 32];
        }
        Self(key)
    }

    /// The hash of event `seq` following `prev`.
    pub fn link(&self, prev: &Hash, seq: u64, event: &AuditEvent) -> Hash {
        // HMAC accepts keys of any length: the else branch is unreachable.
        let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(&self.0) else {
            return GENESIS;
        };
        mac.update(b"tenancy-rs/audit/v1");
        mac.update(prev);
        mac.update(&seq.to_be_bytes());
        mac.update(canonical(event).as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// An HMAC of `parts` under this key, domain-separated by `label`
    /// (checkpoints and archive seals use it; each part is length-prefixed).
    pub fn mac(&self, label: &str, parts: &[&[u8]]) -> Hash {
        let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(&self.0) else {
            return GENESIS;
        };
        mac.update(label.as_bytes());
        for p in parts {
            mac.update(&(p.len() as u64).to_be_bytes());
            mac.update(p);
        }
        mac.finalize().into_bytes().into()
    }
}

/// The canonical text of an event (what the chain hashes).
pub fn canonical(e: &AuditEvent) -> String {
    let mut s = String::with_capacity(256);
    s.push('{');
    let mut field = |name: &str, v: &Value| {
        if s.len() > 1 {
            s.push(',');
        }
        write_str(&mut s, name);
        s.push(':');
        write_value(&mut s, v);
    };
    field("tenant", &Value::String(e.tenant.to_string()));
    field("actor_kind", &Value::String(e.actor.kind().to_owned()));
    field("actor_id", &Value::String(e.actor.id().to_owned()));
    field("action", &Value::String(e.action.clone()));
    field("resource_type", &Value::String(e.resource_type.clone()));
    field(
        "resource_id",
        &e.resource_id.clone().map_or(Value::Null, Value::String),
    );
    field(
        "fields",
        &Value::Array(e.fields.iter().cloned().map(Value::String).collect()),
    );
    field(
        "record_count",
        &e.record_count.map_or(Value::Null, Value::from),
    );
    field("details", &e.details);
    field(
        "ip",
        &e.ip.map_or(Value::Null, |ip| Value::String(ip.to_string())),
    );
    field(
        "user_agent",
        &e.user_agent.clone().map_or(Value::Null, Value::String),
    );
    field(
        "at",
        &Value::String(e.at.to_rfc3339_opts(SecondsFormat::Micros, true)),
    );
    field(
        "flags",
        &Value::Array(
            e.flags
                .names()
                .into_iter()
                .map(|n| Value::String(n.to_owned()))
                .collect(),
        ),
    );
    s.push('}');
    s
}

fn write_str(out: &mut String, s: &str) {
    // serde_json's string escaping; writing to a String cannot fail.
    match serde_json::to_string(s) {
        Ok(q) => out.push_str(&q),
        Err(_) => out.push_str("\"\""),
    }
}

fn write_value(out: &mut String, v: &Value) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => {
            let _ = write!(out, "{n}");
        }
        Value::String(s) => write_str(out, s),
        Value::Array(xs) => {
            out.push('[');
            for (i, x) in xs.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(out, x);
            }
            out.push(']');
        }
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_str(out, k);
                out.push(':');
                if let Some(x) = m.get(k) {
                    write_value(out, x);
                }
            }
            out.push('}');
        }
    }
}

/// An event as stored in a chain.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ChainedEvent {
    /// Its position in the tenant's chain, from 1.
    pub seq: u64,
    /// The event.
    pub event: AuditEvent,
    /// The previous event's hash as stored.
    pub prev_hash: Hash,
    /// Its hash as stored.
    pub hash: Hash,
}

impl ChainedEvent {
    /// A stored event (for stores outside this crate).
    pub fn new(seq: u64, event: AuditEvent, prev_hash: Hash, hash: Hash) -> Self {
        Self {
            seq,
            event,
            prev_hash,
            hash,
        }
    }
}

/// A place where the chain does not hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChainBreak {
    /// The row's content or hash does not match: it was modified (or
    /// inserted with a forged hash).
    Modified {
        /// The row.
        seq: u64,
    },
    /// Sequence numbers jump: rows were deleted.
    Missing {
        /// The last intact row before the gap (0: the start).
        after: u64,
        /// The next row present.
        next: u64,
    },
    /// The row does not follow its predecessor: rows were inserted,
    /// reordered or deleted before it.
    Relinked {
        /// The row.
        seq: u64,
    },
    /// The row belongs to another tenant.
    ForeignTenant {
        /// The row.
        seq: u64,
    },
    /// The row of a head recorded earlier ([`Anchor`]) is gone: the newest
    /// rows were removed.
    Truncated {
        /// The anchored row.
        anchored: u64,
        /// Where the chain ends now (0: empty).
        head: u64,
    },
    /// The row at an anchored position is not the one anchored: rows were
    /// removed and the log grew again over the same sequence numbers.
    AnchorMismatch {
        /// The row.
        seq: u64,
    },
    /// An archive segment's seal does not verify: the segment file was
    /// edited, or was not sealed with this tenant's key.
    SegmentSeal {
        /// The segment's first row.
        first: u64,
    },
    /// A checkpoint (where the live log or the retained history starts)
    /// does not verify: it was forged or moved.
    Checkpoint {
        /// The position it claims.
        seq: u64,
    },
}

/// A chain's head recorded outside the database: the newest row's sequence
/// number and hash. Its text form is `<seq>:<hash as 64 hex digits>`.
///
/// ```
/// use tenancy_core::audit::chain::Anchor;
///
/// let anchor: Anchor = format!("12:{}", "ab".repeat(32)).parse()?;
/// assert_eq!(anchor.seq, 12);
/// assert_eq!(anchor.to_string().parse::<Anchor>()?, anchor);
/// assert!("12:abc".parse::<Anchor>().is_err());
/// # Ok::<(), tenancy_core::audit::chain::AnchorError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Anchor {
    /// The newest row's sequence number.
    pub seq: u64,
    /// Its hash.
    pub hash: Hash,
}

/// A malformed [`Anchor`] text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an audit anchor is written <seq>:<64 hex digits>, as reported with the chain's head")]
pub struct AnchorError;

impl std::fmt::Display for Anchor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:", self.seq)?;
        for b in self.hash {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for Anchor {
    type Err = AnchorError;

    fn from_str(s: &str) -> Result<Self, AnchorError> {
        let (seq, hex) = s.trim().split_once(':').ok_or(AnchorError)?;
        let seq: u64 = seq.parse().map_err(|_| AnchorError)?;
        if seq == 0 || hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(AnchorError);
        }
        let mut hash = [0u8; 32];
        for (i, b) in hash.iter_mut().enumerate() {
            *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| AnchorError)?;
        }
        Ok(Self { seq, hash })
    }
}

/// The outcome of [`verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ChainReport {
    /// Rows checked.
    pub rows: u64,
    /// The newest row's sequence number and hash (anchor it elsewhere to
    /// detect deletion of the newest rows).
    pub head: Option<(u64, Hash)>,
    /// Every break found, in order.
    pub breaks: Vec<ChainBreak>,
}

impl ChainReport {
    /// Whether no break was found.
    pub fn is_intact(&self) -> bool {
        self.breaks.is_empty()
    }

    /// The head to keep outside the database, if the chain has rows.
    pub fn anchor(&self) -> Option<Anchor> {
        self.head.map(|(seq, hash)| Anchor { seq, hash })
    }
}

/// Verifies a tenant's chain, given its rows in sequence order.
pub fn verify(
    key: &ChainKey,
    tenant: TenantId,
    rows: impl IntoIterator<Item = ChainedEvent>,
) -> ChainReport {
    verify_anchored(key, tenant, rows, &[])
}

/// [`verify`], and checks heads recorded earlier ([`ChainReport::anchor`]):
/// the row at each anchored position must still be there
/// ([`ChainBreak::Truncated`] otherwise) and be the anchored one
/// ([`ChainBreak::AnchorMismatch`]: the newest rows were removed and the log
/// grew again over the same sequence numbers).
///
/// ```
/// use tenancy_core::audit::chain::{self, ChainBreak, ChainKey, ChainedEvent, GENESIS};
/// use tenancy_core::audit::{Action, AuditEvent};
/// use tenancy_core::TenantId;
///
/// let tenant = TenantId::new_v4();
/// let key = ChainKey::derive(&[7u8; 32], tenant);
/// let chain_of = |actions: &[&str]| {
///     let mut rows = Vec::new();
///     let mut prev = GENESIS;
///     for (i, action) in actions.iter().enumerate() {
///         let e = AuditEvent::user(tenant, "u1", *action, "customers");
///         let hash = key.link(&prev, i as u64 + 1, &e);
///         rows.push(ChainedEvent::new(i as u64 + 1, e, prev, hash));
///         prev = hash;
///     }
///     rows
/// };
/// let anchor = chain::verify(&key, tenant, chain_of(&["create", "delete"])).anchor().unwrap();
/// // The newest row removed: still a valid chain, but not against the anchor.
/// let shorter = chain_of(&["create"]);
/// assert!(chain::verify(&key, tenant, shorter.clone()).is_intact());
/// assert_eq!(
///     chain::verify_anchored(&key, tenant, shorter, &[anchor]).breaks,
///     [ChainBreak::Truncated { anchored: 2, head: 1 }]
/// );
/// // ... and the log grown again over the same position: another row there.
/// let regrown = chain_of(&["create", "read", "read"]);
/// assert_eq!(
///     chain::verify_anchored(&key, tenant, regrown, &[anchor]).breaks,
///     [ChainBreak::AnchorMismatch { seq: 2 }]
/// );
/// ```
pub fn verify_anchored(
    key: &ChainKey,
    tenant: TenantId,
    rows: impl IntoIterator<Item = ChainedEvent>,
    anchors: &[Anchor],
) -> ChainReport {
    let mut v = ChainVerifier::new(key, tenant, 0, GENESIS, anchors);
    for row in rows {
        v.push(&row);
    }
    v.finish()
}

/// Verifies a chain row by row, from a starting point: the genesis, or a
/// checkpoint where older rows were archived (`start_seq`, `start_hash`: the
/// last row before the first one pushed). Rows are pushed in sequence order
/// and need not be held in memory together.
///
/// Anchors at or before the starting point cannot be checked against live
/// rows: one exactly at it is compared with `start_hash`, older ones are left
/// to a verification that includes the archive.
#[derive(Debug)]
pub struct ChainVerifier<'a> {
    key: &'a ChainKey,
    tenant: TenantId,
    anchors: &'a [Anchor],
    seen: Vec<bool>,
    prev_seq: u64,
    prev_hash: Hash,
    report: ChainReport,
}

impl<'a> ChainVerifier<'a> {
    /// A verifier whose first row must be `start_seq + 1`, linked to `start_hash`.
    pub fn new(
        key: &'a ChainKey,
        tenant: TenantId,
        start_seq: u64,
        start_hash: Hash,
        anchors: &'a [Anchor],
    ) -> Self {
        let mut report = ChainReport {
            rows: 0,
            head: (start_seq > 0).then_some((start_seq, start_hash)),
            breaks: Vec::new(),
        };
        let seen = anchors
            .iter()
            .map(|a| {
                if a.seq < start_seq {
                    true
                } else if a.seq == start_seq {
                    if a.hash != start_hash {
                        report
                            .breaks
                            .push(ChainBreak::AnchorMismatch { seq: a.seq });
                    }
                    true
                } else {
                    false
                }
            })
            .collect();
        Self {
            key,
            tenant,
            anchors,
            seen,
            prev_seq: start_seq,
            prev_hash: start_hash,
            report,
        }
    }

    /// Records a break found outside the rows (a broken seal, a forged checkpoint).
    pub fn note(&mut self, b: ChainBreak) {
        self.report.breaks.push(b);
    }

    /// Where the verified chain ends so far (`seq`, `hash`).
    pub fn position(&self) -> (u64, Hash) {
        (self.prev_seq, self.prev_hash)
    }

    /// Checks the next row.
    pub fn push(&mut self, row: &ChainedEvent) {
        let report = &mut self.report;
        report.rows += 1;
        if row.event.tenant != self.tenant {
            report
                .breaks
                .push(ChainBreak::ForeignTenant { seq: row.seq });
        }
        if row.seq != self.prev_seq + 1 {
            report.breaks.push(ChainBreak::Missing {
                after: self.prev_seq,
                next: row.seq,
            });
        }
        if row.prev_hash != self.prev_hash {
            report.breaks.push(ChainBreak::Relinked { seq: row.seq });
        }
        if self.key.link(&row.prev_hash, row.seq, &row.event) != row.hash {
            report.breaks.push(ChainBreak::Modified { seq: row.seq });
        }
        for (anchor, seen) in self.anchors.iter().zip(self.seen.iter_mut()) {
            if anchor.seq == row.seq {
                *seen = true;
                if anchor.hash != row.hash {
                    report
                        .breaks
                        .push(ChainBreak::AnchorMismatch { seq: row.seq });
                }
            }
        }
        self.prev_seq = row.seq;
        self.prev_hash = row.hash;
        report.head = Some((row.seq, row.hash));
    }

    /// The report, with anchors past the last row reported as truncation.
    pub fn finish(mut self) -> ChainReport {
        for (anchor, seen) in self.anchors.iter().zip(&self.seen) {
            if !seen {
                self.report.breaks.push(ChainBreak::Truncated {
                    anchored: anchor.seq,
                    head: self.report.head.map_or(0, |(seq, _)| seq),
                });
            }
        }
        self.report
    }
}
