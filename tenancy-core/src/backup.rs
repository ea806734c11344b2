//! The portable backup format of one tenant: a versioned, sealed stream of
//! typed tables that any placement can write and any placement can restore.
//!
//! # Layout
//!
//! One file of JSON Lines, written and read as a stream (memory does not
//! grow with the tenant):
//!
//! ```text
//! {"header":{"format":"tenancy-rs/backup/v1","tenant_id":…,"created_at":…,"source":…}}
//! {"table":"customers","columns":[{"name":"id","type":"uuid"},…]}
//! {"row":["0b3…","Meera",…]}                      one line per row
//! {"end":"customers","rows":1200,"checksum":"…","tag":"…"}
//! …                                               more tables
//! {"manifest":{"tables":{"customers":{"rows":1200,"checksum":"…"},…}},"seal":"…"}
//! ```
//!
//! Values are typed by their column ([`ColumnType`]) so a table written from
//! SQLite (where everything is text, integer or blob) restores into
//! PostgreSQL's `uuid`, `date`, `timestamptz`, `jsonb`, `bytea` and back.
//!
//! # Integrity
//!
//! - Each table's **checksum** is order-independent: the sum, modulo 2²⁵⁶,
//!   of the SHA-256 of every row's canonical form. Two stores holding the
//!   same rows in any order agree on it, so a restore can be compared with
//!   its source table by table; a changed, dropped, added or duplicated row
//!   changes it.
//! - The **seal** is an HMAC-SHA256, under the backup key, of every byte
//!   before the manifest line and of the manifest itself. [`BackupReader`]
//!   verifies each table's count and checksum when the table ends and the
//!   seal at the end.
//! - Each table end carries a **tag**: an HMAC (under its own label) over
//!   every byte before it. [`BackupEvent::TableEnd`] is returned only once
//!   the tag verified, so everything up to that table is authentic — even
//!   if the file changed since an earlier reading. A tag does not prove the
//!   file is complete: verify the whole file to its seal first (a first
//!   pass), then load it.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::TenantId;

/// The format tag written in every backup's header.
pub const FORMAT: &str = "tenancy-rs/backup/v1";

/// Why a backup could not be written or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackupError {
    /// Reading or writing the stream failed.
    #[error("backup I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The stream is not a backup of this format (or was cut short).
    #[error("not a {FORMAT} backup: {0}")]
    Format(String),
    /// The backup was altered: a table's rows do not match its checksum or
    /// count, or the seal does not verify under the backup key. Nothing read
    /// from it may be kept.
    #[error("the backup was altered or sealed with another key: {0}")]
    Tampered(String),
    /// A value does not fit its column type.
    #[error("backup value of {table}.{column}: {detail}")]
    Value {
        /// The table.
        table: String,
        /// The column.
        column: String,
        /// What is wrong.
        detail: String,
    },
    /// The writer was used out of order (a row outside a table, …).
    #[error("backup writer misuse: {0}")]
    Usage(&'static str),
}

/// A portable column type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ColumnType {
    /// Text.
    Text,
    /// A 64-bit integer.
    Int,
    /// A 64-bit float.
    Float,
    /// A boolean.
    Bool,
    /// Bytes, as unpadded base64 in the stream.
    Bytes,
    /// Any JSON value.
    Json,
    /// A calendar date, `YYYY-MM-DD`.
    Date,
    /// An instant, RFC 3339 in UTC.
    Timestamp,
    /// A UUID, hyphenated.
    Uuid,
}

impl ColumnType {
    /// Checks that `v` is a value of this type (or null).
    pub fn check(self, v: &Value) -> Result<(), String> {
        let ok = match (self, v) {
            (_, Value::Null) | (Self::Json, _) => true,
            (Self::Text, Value::String(_)) => true,
            (Self::Int, Value::Number(n)) => n.is_i64(),
            (Self::Float, Value::Number(_)) => true,
            (Self::Bool, Value::Bool(_)) => true,
            (Self::Bytes, Value::String(s)) => {
                use base64::Engine as _;
                base64::engine::general_purpose::STANDARD_NO_PAD
                    .decode(s)
                    .is_ok()
            }
            (Self::Date, Value::String(s)) => {
                chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").is_ok()
            }
            (Self::Timestamp, Value::String(s)) => DateTime::parse_from_rfc3339(s).is_ok(),
            (Self::Uuid, Value::String(s)) => uuid::Uuid::parse_str(s).is_ok(),
            _ => false,
        };
        if ok {
            Ok(())
        } else {
            Err(format!("{v} is not a {self:?} value"))
        }
    }
}

/// A column of a backed-up table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Column {
    /// Its name.
    pub name: String,
    /// Its portable type.
    #[serde(rename = "type")]
    pub ty: ColumnType,
}

impl Column {
    /// A column.
    pub fn new(name: impl Into<String>, ty: ColumnType) -> Self {
        Self {
            name: name.into(),
            ty,
        }
    }
}

/// The first line of a backup.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct BackupHeader {
    /// [`FORMAT`].
    pub format: String,
    /// The tenant backed up.
    pub tenant_id: TenantId,
    /// Its slug then.
    pub tenant_slug: String,
    /// When the backup began.
    pub created_at: DateTime<Utc>,
    /// Free-form facts about the source (placement, schema versions, …).
    pub source: Value,
}

impl BackupHeader {
    /// A header for `tenant`.
    pub fn new(tenant_id: TenantId, slug: &str, created_at: DateTime<Utc>, source: Value) -> Self {
        Self {
            format: FORMAT.to_owned(),
            tenant_id,
            tenant_slug: slug.to_owned(),
            created_at,
            source,
        }
    }
}

/// An order-independent checksum of a table's rows: the count and the sum
/// modulo 2²⁵⁶ of each row's SHA-256.
///
/// ```
/// use serde_json::json;
/// use tenancy_core::backup::TableSum;
///
/// let (mut a, mut b) = (TableSum::default(), TableSum::default());
/// for r in [json!([1, "x"]), json!([2, "y"])] { a.add(r.as_array().unwrap()); }
/// for r in [json!([2, "y"]), json!([1, "x"])] { b.add(r.as_array().unwrap()); }
/// assert_eq!(a, b);
/// b.add(json!([2, "y"]).as_array().unwrap()); // a duplicate changes it
/// assert_ne!(a, b);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableSum {
    /// Rows.
    pub rows: u64,
    /// The sum, as 64 hex digits.
    #[serde(with = "hex32")]
    pub checksum: [u8; 32],
}

impl TableSum {
    /// Adds one row.
    pub fn add(&mut self, row: &[Value]) {
        let canonical = serde_json::to_vec(row).unwrap_or_default();
        let h: [u8; 32] = Sha256::digest(&canonical).into();
        // Big-endian addition with carry, modulo 2^256.
        let mut carry = 0u16;
        for i in (0..32).rev() {
            let s = u16::from(self.checksum[i]) + u16::from(h[i]) + carry;
            self.checksum[i] = (s & 0xff) as u8;
            carry = s >> 8;
        }
        self.rows += 1;
    }
}

mod hex32 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(h: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&h.iter().map(|b| format!("{b:02x}")).collect::<String>())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let s = String::deserialize(d)?;
        let mut out = [0u8; 32];
        if s.len() != 64 {
            return Err(serde::de::Error::custom("expected 64 hex digits"));
        }
        for (i, b) in out.iter_mut().enumerate() {
            *b = s
                .get(2 * i..2 * i + 2)
                .and_then(|p| u8::from_str_radix(p, 16).ok())
                .ok_or_else(|| serde::de::Error::custom("expected 64 hex digits"))?;
        }
        Ok(out)
    }
}

/// The last line of a backup: every table's count and checksum.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Per table, in the order written.
    pub tables: BTreeMap<String, TableSum>,
}

/// The key that seals backups (32 secret bytes): the restoring side needs
/// the same key to accept a backup.
pub struct BackupKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for BackupKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BackupKey(..)")
    }
}

impl BackupKey {
    /// A key from its bytes.
    pub fn new(bytes: [u8; 32]) -> Self {
        Self(Zeroizing::new(bytes))
    }

    fn mac(&self) -> Result<Hmac<Sha256>, BackupError> {
        // HMAC accepts keys of any length: the error cannot happen.
        <Hmac<Sha256> as Mac>::new_from_slice(self.0.as_slice())
            .map_err(|_| BackupError::Format("the backup key was refused".into()))
    }
}

/// One line of the stream; each shape has a field the others lack.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum Line {
    Header {
        header: BackupHeader,
    },
    Table {
        table: String,
        columns: Vec<Column>,
    },
    Row {
        row: Vec<Value>,
    },
    End {
        end: String,
        rows: u64,
        #[serde(with = "hex32")]
        checksum: [u8; 32],
        /// HMAC of every byte before this line (labelled): the stream so far.
        #[serde(with = "hex32")]
        tag: [u8; 32],
    },
    Manifest {
        manifest: Manifest,
        #[serde(with = "hex32")]
        seal: [u8; 32],
    },
}

/// Writes a backup as a stream.
///
/// ```
/// use chrono::Utc;
/// use serde_json::json;
/// use tenancy_core::backup::*;
/// use tenancy_core::TenantId;
///
/// let key = BackupKey::new([9u8; 32]);
/// let header = BackupHeader::new(TenantId::new_v4(), "acme", Utc::now(), json!({"placement": "shared"}));
/// let mut out = Vec::new();
/// let mut w = BackupWriter::new(&mut out, &key, header)?;
/// w.begin_table("customers", vec![Column::new("id", ColumnType::Int), Column::new("name", ColumnType::Text)])?;
/// w.row(vec![json!(1), json!("Meera")])?;
/// w.end_table()?;
/// let manifest = w.finish()?;
/// assert_eq!(manifest.tables["customers"].rows, 1);
///
/// let mut r = BackupReader::new(out.as_slice(), &key)?;
/// let mut rows = 0;
/// loop {
///     match r.next()? {
///         BackupEvent::Row(_) => rows += 1,
///         BackupEvent::Sealed(m) => { assert_eq!(m, manifest); break }
///         _ => {}
///     }
/// }
/// assert_eq!(rows, 1);
/// # Ok::<(), BackupError>(())
/// ```
pub struct BackupWriter<'k, W: Write> {
    out: W,
    mac: Hmac<Sha256>,
    manifest: Manifest,
    table: Option<(String, Vec<Column>, TableSum)>,
    _key: std::marker::PhantomData<&'k BackupKey>,
}

impl<W: Write> std::fmt::Debug for BackupWriter<'_, W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackupWriter").finish_non_exhaustive()
    }
}

impl<'k, W: Write> BackupWriter<'k, W> {
    /// Starts a backup with `header`.
    pub fn new(out: W, key: &'k BackupKey, header: BackupHeader) -> Result<Self, BackupError> {
        let mut w = Self {
            out,
            mac: key.mac()?,
            manifest: Manifest::default(),
            table: None,
            _key: std::marker::PhantomData,
        };
        w.line(&Line::Header { header })?;
        Ok(w)
    }

    fn line(&mut self, line: &Line) -> Result<(), BackupError> {
        let mut bytes = serde_json::to_vec(line).map_err(|e| BackupError::Format(e.to_string()))?;
        bytes.push(b'\n');
        // What a reader would refuse is not written.
        if bytes.len() > MAX_LINE {
            return Err(BackupError::Usage("a row longer than MAX_LINE"));
        }
        self.mac.update(&bytes);
        self.out.write_all(&bytes)?;
        Ok(())
    }

    /// Starts a table. Each table appears once.
    pub fn begin_table(&mut self, name: &str, columns: Vec<Column>) -> Result<(), BackupError> {
        if self.table.is_some() {
            return Err(BackupError::Usage("end the current table first"));
        }
        if self.manifest.tables.contains_key(name) {
            return Err(BackupError::Usage("a table appears once in a backup"));
        }
        self.line(&Line::Table {
            table: name.to_owned(),
            columns: columns.clone(),
        })?;
        self.table = Some((name.to_owned(), columns, TableSum::default()));
        Ok(())
    }

    /// Writes one row of the current table (values in column order, each
    /// of its column's type).
    pub fn row(&mut self, values: Vec<Value>) -> Result<(), BackupError> {
        let Some((name, columns, sum)) = &mut self.table else {
            return Err(BackupError::Usage("a row outside a table"));
        };
        if values.len() != columns.len() {
            return Err(BackupError::Value {
                table: name.clone(),
                column: String::new(),
                detail: format!("{} values for {} columns", values.len(), columns.len()),
            });
        }
        for (c, v) in columns.iter().zip(&values) {
            c.ty.check(v).map_err(|detail| BackupError::Value {
                table: name.clone(),
                column: c.name.clone(),
                detail,
            })?;
        }
        sum.add(&values);
        self.line(&Line::Row { row: values })
    }

    /// Ends the current table.
    pub fn end_table(&mut self) -> Result<TableSum, BackupError> {
        let Some((name, _, sum)) = self.table.take() else {
            return Err(BackupError::Usage("no table to end"));
        };
        let tag: [u8; 32] = table_mac(&self.mac).finalize().into_bytes().into();
        self.line(&Line::End {
            end: name.clone(),
            rows: sum.rows,
            checksum: sum.checksum,
            tag,
        })?;
        self.manifest.tables.insert(name, sum);
        Ok(sum)
    }

    /// Writes the manifest and the seal; returns the manifest.
    pub fn finish(mut self) -> Result<Manifest, BackupError> {
        if self.table.is_some() {
            return Err(BackupError::Usage("end the current table first"));
        }
        let manifest = std::mem::take(&mut self.manifest);
        let body = serde_json::to_vec(&manifest).map_err(|e| BackupError::Format(e.to_string()))?;
        self.mac.update(&body);
        let seal: [u8; 32] = self.mac.clone().finalize().into_bytes().into();
        let mut bytes = serde_json::to_vec(&Line::Manifest {
            manifest: manifest.clone(),
            seal,
        })
        .map_err(|e| BackupError::Format(e.to_string()))?;
        bytes.push(b'\n');
        self.out.write_all(&bytes)?;
        self.out.flush()?;
        Ok(manifest)
    }
}

/// What a [`BackupReader`] read next.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum BackupEvent {
    /// A table begins.
    Table {
        /// Its name.
        name: String,
        /// Its columns.
        columns: Vec<Column>,
    },
    /// A row of the current table, checked against the column types.
    Row(Vec<Value>),
    /// The current table ended; its rows matched its count and checksum,
    /// and its tag verified: everything read so far is what was written.
    TableEnd {
        /// Its name.
        name: String,
        /// Its count and checksum.
        sum: TableSum,
    },
    /// The seal verified: everything read is what was written. Only now may
    /// a restore commit.
    Sealed(Manifest),
}

/// A table end's tag: the HMAC of the stream so far, under a label of its
/// own (a tag is never a seal).
fn table_mac(mac: &Hmac<Sha256>) -> Hmac<Sha256> {
    let mut m = mac.clone();
    m.update(b"\0tenancy-rs/backup/table-end");
    m
}

/// The longest line a backup may hold (one row): a longer one is refused
/// rather than read into memory.
pub const MAX_LINE: usize = 16 * 1024 * 1024;

/// The most tables a backup may hold, and columns a table: a file with
/// more is refused (memory for the manifest stays bounded).
pub const MAX_TABLES: usize = 4096;
/// See [`MAX_TABLES`].
pub const MAX_COLUMNS: usize = 1024;

/// One line, at most [`MAX_LINE`] bytes (so memory stays bounded whatever
/// the file holds).
fn read_line<R: BufRead>(input: &mut R, line: &mut Vec<u8>) -> Result<usize, BackupError> {
    let n = std::io::Read::take(input, MAX_LINE as u64 + 1).read_until(b'\n', line)?;
    if n > MAX_LINE {
        return Err(BackupError::Tampered(format!(
            "a line longer than {MAX_LINE} bytes"
        )));
    }
    Ok(n)
}

/// Reads a backup as a stream, verifying as it goes.
pub struct BackupReader<'k, R: BufRead> {
    input: R,
    mac: Hmac<Sha256>,
    header: BackupHeader,
    table: Option<(String, Vec<Column>, TableSum)>,
    seen: Manifest,
    done: bool,
    line: Vec<u8>,
    _key: std::marker::PhantomData<&'k BackupKey>,
}

impl<R: BufRead> std::fmt::Debug for BackupReader<'_, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackupReader")
            .field("header", &self.header)
            .finish_non_exhaustive()
    }
}

impl<'k, R: BufRead> BackupReader<'k, R> {
    /// Opens a backup and reads its header.
    pub fn new(mut input: R, key: &'k BackupKey) -> Result<Self, BackupError> {
        let mut mac = key.mac()?;
        let mut line = Vec::new();
        if read_line(&mut input, &mut line)? == 0 {
            return Err(BackupError::Format("empty".into()));
        }
        mac.update(&line);
        let header = match serde_json::from_slice(&line) {
            Ok(Line::Header { header: h }) if h.format == FORMAT => h,
            Ok(Line::Header { header: h }) => {
                return Err(BackupError::Format(format!(
                    "unknown format {:?}",
                    h.format
                )));
            }
            _ => return Err(BackupError::Format("the first line is not a header".into())),
        };
        Ok(Self {
            input,
            mac,
            header,
            table: None,
            seen: Manifest::default(),
            done: false,
            line,
            _key: std::marker::PhantomData,
        })
    }

    /// The header.
    pub fn header(&self) -> &BackupHeader {
        &self.header
    }

    /// The next event. After [`BackupEvent::Sealed`] there is none.
    #[allow(clippy::should_implement_trait)] // fallible: not an Iterator
    pub fn next(&mut self) -> Result<BackupEvent, BackupError> {
        if self.done {
            return Err(BackupError::Usage("the backup was read to its seal"));
        }
        self.line.clear();
        if read_line(&mut self.input, &mut self.line)? == 0 {
            return Err(BackupError::Tampered(
                "the backup ends before its seal".into(),
            ));
        }
        let line: Line = serde_json::from_slice(&self.line)
            .map_err(|e| BackupError::Tampered(format!("an unreadable line: {e}")))?;
        // A table end authenticates everything before it, so a table may be
        // committed as soon as it ends (not only after the seal).
        if let Line::End { tag, .. } = &line {
            table_mac(&self.mac)
                .verify_slice(tag)
                .map_err(|_| BackupError::Tampered("a table's tag does not verify".into()))?;
        }
        if !matches!(line, Line::Manifest { .. }) {
            self.mac.update(&self.line);
        }
        match line {
            Line::Header { .. } => Err(BackupError::Tampered("a second header".into())),
            Line::Table { table, columns } => {
                if self.seen.tables.len() >= MAX_TABLES || columns.len() > MAX_COLUMNS {
                    return Err(BackupError::Tampered(format!(
                        "more than {MAX_TABLES} tables or {MAX_COLUMNS} columns"
                    )));
                }
                if self.table.is_some() || self.seen.tables.contains_key(&table) {
                    return Err(BackupError::Tampered(format!("table {table} out of place")));
                }
                self.table = Some((table.clone(), columns.clone(), TableSum::default()));
                Ok(BackupEvent::Table {
                    name: table,
                    columns,
                })
            }
            Line::Row { row: values } => {
                let Some((name, columns, sum)) = &mut self.table else {
                    return Err(BackupError::Tampered("a row outside a table".into()));
                };
                if values.len() != columns.len() {
                    return Err(BackupError::Tampered(format!(
                        "a row of {name} has the wrong width"
                    )));
                }
                for (c, v) in columns.iter().zip(&values) {
                    c.ty.check(v).map_err(|detail| BackupError::Value {
                        table: name.clone(),
                        column: c.name.clone(),
                        detail,
                    })?;
                }
                sum.add(&values);
                Ok(BackupEvent::Row(values))
            }
            Line::End {
                end,
                rows,
                checksum,
                ..
            } => {
                let Some((name, _, sum)) = self.table.take() else {
                    return Err(BackupError::Tampered("a table end outside a table".into()));
                };
                if end != name || sum.rows != rows || sum.checksum != checksum {
                    return Err(BackupError::Tampered(format!(
                        "table {name}: {} rows read, {rows} recorded, or their checksum differs",
                        sum.rows
                    )));
                }
                self.seen.tables.insert(name.clone(), sum);
                Ok(BackupEvent::TableEnd { name, sum })
            }
            Line::Manifest { manifest, seal } => {
                if self.table.is_some() {
                    return Err(BackupError::Tampered("the manifest inside a table".into()));
                }
                if manifest != self.seen {
                    return Err(BackupError::Tampered(
                        "the manifest does not list the tables read".into(),
                    ));
                }
                let body = serde_json::to_vec(&manifest)
                    .map_err(|e| BackupError::Format(e.to_string()))?;
                self.mac.update(&body);
                self.mac
                    .clone()
                    .verify_slice(&seal)
                    .map_err(|_| BackupError::Tampered("the seal does not verify".into()))?;
                if !self.input.fill_buf()?.is_empty() {
                    return Err(BackupError::Tampered("data after the seal".into()));
                }
                self.done = true;
                Ok(BackupEvent::Sealed(manifest))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn backup(key: &BackupKey, rows: u64) -> Vec<u8> {
        let header = BackupHeader::new(TenantId::new_v4(), "t", Utc::now(), Value::Null);
        let mut out = Vec::new();
        let mut w = BackupWriter::new(&mut out, key, header).unwrap();
        w.begin_table(
            "customers",
            vec![
                Column::new("id", ColumnType::Uuid),
                Column::new("n", ColumnType::Int),
                Column::new("blob", ColumnType::Bytes),
                Column::new("at", ColumnType::Timestamp),
            ],
        )
        .unwrap();
        for n in 0..rows {
            w.row(vec![
                json!(uuid::Uuid::new_v4().to_string()),
                json!(n),
                json!("AAEC"),
                json!("2026-12-07T10:00:00Z"),
            ])
            .unwrap();
        }
        w.end_table().unwrap();
        w.begin_table("policies", vec![Column::new("x", ColumnType::Text)])
            .unwrap();
        w.end_table().unwrap();
        w.finish().unwrap();
        out
    }

    fn read_all(bytes: &[u8], key: &BackupKey) -> Result<Manifest, BackupError> {
        let mut r = BackupReader::new(bytes, key)?;
        loop {
            if let BackupEvent::Sealed(m) = r.next()? {
                return Ok(m);
            }
        }
    }

    #[test]
    fn a_backup_reads_back_and_every_alteration_is_refused() {
        let key = BackupKey::new([1u8; 32]);
        let bytes = backup(&key, 20);
        let m = read_all(&bytes, &key).unwrap();
        assert_eq!(m.tables["customers"].rows, 20);
        assert_eq!(m.tables["policies"].rows, 0);

        let text = String::from_utf8(bytes.clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let rebuild = |ls: &[&str]| ls.iter().map(|l| format!("{l}\n")).collect::<String>();
        // A changed value.
        let changed = text.replacen("\"AAEC\"", "\"AAED\"", 1);
        assert!(matches!(
            read_all(changed.as_bytes(), &key),
            Err(BackupError::Tampered(_))
        ));
        // A dropped row.
        let mut dropped = lines.clone();
        dropped.remove(3);
        assert!(matches!(
            read_all(rebuild(&dropped).as_bytes(), &key),
            Err(BackupError::Tampered(_))
        ));
        // Cut short (no seal).
        let cut = rebuild(&lines[..lines.len() - 1]);
        assert!(matches!(
            read_all(cut.as_bytes(), &key),
            Err(BackupError::Tampered(_))
        ));
        // Rows reordered: the table checksum still agrees, the seal does not.
        let mut swapped = lines.clone();
        swapped.swap(2, 3);
        assert!(matches!(
            read_all(rebuild(&swapped).as_bytes(), &key),
            Err(BackupError::Tampered(_))
        ));
        // Data appended after the seal.
        let mut appended = bytes.clone();
        appended.extend_from_slice(b"{\"row\":[1]}\n");
        assert!(matches!(
            read_all(&appended, &key),
            Err(BackupError::Tampered(_))
        ));
        // Another key.
        assert!(matches!(
            read_all(&bytes, &BackupKey::new([2u8; 32])),
            Err(BackupError::Tampered(_))
        ));
        // A value of the wrong type is refused on writing.
        let mut out = Vec::new();
        let header = BackupHeader::new(TenantId::new_v4(), "t", Utc::now(), Value::Null);
        let mut w = BackupWriter::new(&mut out, &key, header).unwrap();
        w.begin_table("t", vec![Column::new("d", ColumnType::Date)])
            .unwrap();
        assert!(matches!(
            w.row(vec![json!("07/12/2026")]),
            Err(BackupError::Value { .. })
        ));
    }

    #[test]
    fn a_table_end_authenticates_everything_before_it() {
        let key = BackupKey::new([1u8; 32]);
        let a = String::from_utf8(backup(&key, 5)).unwrap();
        let b = String::from_utf8(backup(&key, 5)).unwrap();
        // A's header, then B's tables: every line well-formed and each
        // table's count and checksum right — only the tag can tell.
        let spliced: String = a
            .lines()
            .take(1)
            .chain(b.lines().skip(1))
            .map(|l| format!("{l}\n"))
            .collect();
        let first_end = |text: &str| {
            let mut r = BackupReader::new(text.as_bytes(), &key).unwrap();
            loop {
                match r.next() {
                    Ok(BackupEvent::TableEnd { .. }) => return Ok(()),
                    Ok(_) => {}
                    Err(e) => return Err(e),
                }
            }
        };
        assert!(
            matches!(first_end(&spliced), Err(BackupError::Tampered(m)) if m.contains("tag")),
            "refused at the first table end, before the seal"
        );
        // Twin: the genuine file passes its first table end.
        assert!(first_end(&a).is_ok());
    }

    #[test]
    fn a_backup_of_too_many_tables_is_refused() {
        let key = BackupKey::new([4u8; 32]);
        let tables = |n: usize| {
            let mut out = Vec::new();
            let header = BackupHeader::new(TenantId::new_v4(), "t", Utc::now(), Value::Null);
            let mut w = BackupWriter::new(&mut out, &key, header).unwrap();
            for i in 0..n {
                w.begin_table(&format!("t{i}"), vec![Column::new("x", ColumnType::Int)])
                    .unwrap();
                w.end_table().unwrap();
            }
            w.finish().unwrap();
            out
        };
        assert_eq!(
            read_all(&tables(MAX_TABLES), &key).unwrap().tables.len(),
            MAX_TABLES
        );
        assert!(matches!(
            read_all(&tables(MAX_TABLES + 1), &key),
            Err(BackupError::Tampered(m)) if m.contains("tables")
        ));
    }

    #[test]
    fn an_overlong_line_is_refused_without_reading_it_whole() {
        let key = BackupKey::new([1u8; 32]);
        let bytes = backup(&key, 1);
        let header_end = bytes.iter().position(|b| *b == b'\n').unwrap() + 1;
        // A "line" longer than MAX_LINE, generated lazily, never ending.
        let endless = std::io::BufReader::new(std::io::repeat(b'x'));
        let input = std::io::Read::chain(&bytes[..header_end], endless);
        let mut r = BackupReader::new(std::io::BufReader::new(input), &key).unwrap();
        assert!(matches!(r.next(), Err(BackupError::Tampered(m)) if m.contains("longer")));
    }

    #[test]
    fn floats_survive_the_stream_bit_for_bit() {
        // Values whose shortest decimal form needs all 17 digits.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let floats: Vec<f64> = (0..2000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                f64::from_bits(x)
            })
            .filter(|f| f.is_finite())
            .collect();
        let key = BackupKey::new([3u8; 32]);
        let mut out = Vec::new();
        let header = BackupHeader::new(TenantId::new_v4(), "t", Utc::now(), Value::Null);
        let mut w = BackupWriter::new(&mut out, &key, header).unwrap();
        w.begin_table("f", vec![Column::new("x", ColumnType::Float)])
            .unwrap();
        for f in &floats {
            w.row(vec![json!(f)]).unwrap();
        }
        w.end_table().unwrap();
        w.finish().unwrap();
        let mut r = BackupReader::new(&out[..], &key).unwrap();
        let mut back = Vec::new();
        loop {
            match r.next().unwrap() {
                BackupEvent::Row(v) => back.push(v[0].as_f64().unwrap().to_bits()),
                BackupEvent::Sealed(_) => break,
                _ => {}
            }
        }
        let sent: Vec<u64> = floats.iter().map(|f| f.to_bits()).collect();
        assert_eq!(back, sent);
    }

    #[test]
    fn checksums_do_not_depend_on_row_order() {
        let rows: Vec<Vec<Value>> = (0..50)
            .map(|i| vec![json!(i), json!(format!("r{i}"))])
            .collect();
        let (mut a, mut b) = (TableSum::default(), TableSum::default());
        rows.iter().for_each(|r| a.add(r));
        rows.iter().rev().for_each(|r| b.add(r));
        assert_eq!(a, b);
        let mut c = TableSum::default();
        rows[1..].iter().for_each(|r| c.add(r));
        c.add(&[json!(0), json!("r0 ")]);
        assert_ne!(a, c);
    }
}
