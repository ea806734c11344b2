//! Tables in and out of the portable backup stream
//! ([`tenancy_core::backup`]) on PostgreSQL and SQLite: rows are read as a
//! stream and written typed, so memory stays flat however large the table,
//! and a table written from one backend restores into the other.
//!
//! Values are normalised on the way out so both backends write the same
//! bytes for the same data: instants to microseconds (what PostgreSQL
//! keeps), UUIDs hyphenated, bytes as unpadded base64, JSON re-serialised.
//! The order-independent checksums of a table read back after a restore then
//! equal the source's ([`read_pg_table_sum`], `read_sqlite_table_sum`).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use chrono::{DateTime, NaiveDate, SecondsFormat, SubsecRound as _, Utc};
use futures_util::TryStreamExt as _;
use serde_json::Value;
use sqlx::Row as _;
use tenancy_core::backup::{BackupWriter, Column, ColumnType, TableSum};
use tenancy_core::rls::quote_ident;

use crate::DbError;

/// A table of a backup: its name and its columns with portable types, and
/// the columns rows are ordered by (for a stable stream, not for the
/// checksum, which ignores order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSpec {
    /// The table.
    pub name: String,
    /// Its columns.
    pub columns: Vec<Column>,
    /// `ORDER BY` of the read.
    pub order_by: String,
}

impl TableSpec {
    /// A table ordered by `order_by` (a column list).
    pub fn new(name: &str, order_by: &str, columns: &[(&str, ColumnType)]) -> Self {
        Self {
            name: name.to_owned(),
            columns: columns.iter().map(|(n, t)| Column::new(*n, *t)).collect(),
            order_by: order_by.to_owned(),
        }
    }

    fn select(&self) -> String {
        let cols: Vec<String> = self.columns.iter().map(|c| quote_ident(&c.name)).collect();
        format!(
            "SELECT {} FROM {} ORDER BY {}",
            cols.join(", "),
            quote_ident(&self.name),
            self.order_by
        )
    }

    fn insert(&self) -> String {
        let cols: Vec<String> = self.columns.iter().map(|c| quote_ident(&c.name)).collect();
        let params: Vec<String> = (1..=self.columns.len()).map(|i| format!("${i}")).collect();
        format!(
            "INSERT INTO {} ({}) VALUES ({})",
            quote_ident(&self.name),
            cols.join(", "),
            params.join(", ")
        )
    }
}

fn bad(spec: &TableSpec, col: &Column, detail: impl std::fmt::Display) -> DbError {
    DbError::InvalidData {
        what: "backup value",
        reason: format!("{}.{}: {detail}", spec.name, col.name),
    }
}

fn instant(t: DateTime<Utc>) -> Value {
    Value::String(
        t.trunc_subsecs(6)
            .to_rfc3339_opts(SecondsFormat::Micros, true),
    )
}

fn json_of(v: Option<Value>) -> Value {
    v.unwrap_or(Value::Null)
}

/// One value of a PostgreSQL row, normalised.
fn pg_value(
    row: &sqlx::postgres::PgRow,
    i: usize,
    spec: &TableSpec,
    col: &Column,
) -> Result<Value, DbError> {
    let e = |x: sqlx::Error| bad(spec, col, x);
    Ok(match col.ty {
        ColumnType::Text => json_of(
            row.try_get::<Option<String>, _>(i)
                .map_err(e)?
                .map(Value::from),
        ),
        ColumnType::Int => json_of(
            row.try_get::<Option<i64>, _>(i)
                .map_err(e)?
                .map(Value::from),
        ),
        ColumnType::Float => json_of(
            row.try_get::<Option<f64>, _>(i)
                .map_err(e)?
                .map(Value::from),
        ),
        ColumnType::Bool => json_of(
            row.try_get::<Option<bool>, _>(i)
                .map_err(e)?
                .map(Value::from),
        ),
        ColumnType::Bytes => json_of(
            row.try_get::<Option<Vec<u8>>, _>(i)
                .map_err(e)?
                .map(|b| Value::from(STANDARD_NO_PAD.encode(b))),
        ),
        ColumnType::Json => json_of(row.try_get::<Option<Value>, _>(i).map_err(e)?),
        ColumnType::Date => json_of(
            row.try_get::<Option<NaiveDate>, _>(i)
                .map_err(e)?
                .map(|d| Value::from(d.format("%Y-%m-%d").to_string())),
        ),
        ColumnType::Timestamp => json_of(
            row.try_get::<Option<DateTime<Utc>>, _>(i)
                .map_err(e)?
                .map(instant),
        ),
        ColumnType::Uuid => json_of(
            row.try_get::<Option<uuid::Uuid>, _>(i)
                .map_err(e)?
                .map(|u| Value::from(u.hyphenated().to_string())),
        ),
        _ => return Err(bad(spec, col, "unsupported column type")),
    })
}

/// Streams every row of `spec` on `conn` (a tenant transaction) into the
/// backup's next table. Returns the table's count and checksum.
pub async fn write_pg_table<W: std::io::Write>(
    conn: &mut sqlx::PgConnection,
    spec: &TableSpec,
    out: &mut BackupWriter<'_, W>,
) -> Result<TableSum, DbError> {
    out.begin_table(&spec.name, spec.columns.clone())
        .map_err(|e| DbError::Export(e.to_string()))?;
    let sql = spec.select();
    let mut rows = sqlx::query(&sql).fetch(&mut *conn);
    while let Some(row) = rows.try_next().await? {
        let values = spec
            .columns
            .iter()
            .enumerate()
            .map(|(i, c)| pg_value(&row, i, spec, c))
            .collect::<Result<Vec<_>, _>>()?;
        out.row(values)
            .map_err(|e| DbError::Export(e.to_string()))?;
    }
    out.end_table().map_err(|e| DbError::Export(e.to_string()))
}

/// The count and checksum of `spec`'s rows on `conn`, as a backup would
/// record them (to compare a restored table with its source).
pub async fn read_pg_table_sum(
    conn: &mut sqlx::PgConnection,
    spec: &TableSpec,
) -> Result<TableSum, DbError> {
    let sql = spec.select();
    let mut rows = sqlx::query(&sql).fetch(&mut *conn);
    let mut sum = TableSum::default();
    while let Some(row) = rows.try_next().await? {
        let values = spec
            .columns
            .iter()
            .enumerate()
            .map(|(i, c)| pg_value(&row, i, spec, c))
            .collect::<Result<Vec<_>, _>>()?;
        sum.add(&values);
    }
    Ok(sum)
}

fn text<'v>(spec: &TableSpec, col: &Column, v: &'v Value) -> Result<Option<&'v str>, DbError> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s)),
        other => Err(bad(spec, col, format!("{other} is not text"))),
    }
}

fn parse_bytes(spec: &TableSpec, col: &Column, v: &Value) -> Result<Option<Vec<u8>>, DbError> {
    text(spec, col, v)?
        .map(|s| STANDARD_NO_PAD.decode(s).map_err(|e| bad(spec, col, e)))
        .transpose()
}

fn parse_date(spec: &TableSpec, col: &Column, v: &Value) -> Result<Option<NaiveDate>, DbError> {
    text(spec, col, v)?
        .map(|s| NaiveDate::parse_from_str(s, "%Y-%m-%d").map_err(|e| bad(spec, col, e)))
        .transpose()
}

fn parse_instant(
    spec: &TableSpec,
    col: &Column,
    v: &Value,
) -> Result<Option<DateTime<Utc>>, DbError> {
    text(spec, col, v)?
        .map(|s| {
            DateTime::parse_from_rfc3339(s)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|e| bad(spec, col, e))
        })
        .transpose()
}

fn parse_uuid(spec: &TableSpec, col: &Column, v: &Value) -> Result<Option<uuid::Uuid>, DbError> {
    text(spec, col, v)?
        .map(|s| uuid::Uuid::parse_str(s).map_err(|e| bad(spec, col, e)))
        .transpose()
}

/// Inserts one row of a backup into `spec`'s table on `conn`.
pub async fn insert_pg_row(
    conn: &mut sqlx::PgConnection,
    spec: &TableSpec,
    values: &[Value],
) -> Result<(), DbError> {
    let sql = spec.insert();
    let mut q = sqlx::query(&sql);
    for (c, v) in spec.columns.iter().zip(values) {
        q = match c.ty {
            ColumnType::Text => q.bind(text(spec, c, v)?.map(str::to_owned)),
            ColumnType::Int => q.bind(v.as_i64()),
            ColumnType::Float => q.bind(v.as_f64()),
            ColumnType::Bool => q.bind(v.as_bool()),
            ColumnType::Bytes => q.bind(parse_bytes(spec, c, v)?),
            ColumnType::Json => q.bind((!v.is_null()).then(|| v.clone())),
            ColumnType::Date => q.bind(parse_date(spec, c, v)?),
            ColumnType::Timestamp => q.bind(parse_instant(spec, c, v)?),
            ColumnType::Uuid => q.bind(parse_uuid(spec, c, v)?),
            _ => return Err(bad(spec, c, "unsupported column type")),
        };
    }
    q.execute(&mut *conn).await?;
    Ok(())
}

#[cfg(feature = "sqlite")]
mod sqlite {
    use super::*;

    /// One value of a SQLite row, normalised to what PostgreSQL would give.
    fn sqlite_value(
        row: &sqlx::sqlite::SqliteRow,
        i: usize,
        spec: &TableSpec,
        col: &Column,
    ) -> Result<Value, DbError> {
        let e = |x: sqlx::Error| bad(spec, col, x);
        let s = |row: &sqlx::sqlite::SqliteRow| row.try_get::<Option<String>, _>(i).map_err(e);
        Ok(match col.ty {
            ColumnType::Text => json_of(s(row)?.map(Value::from)),
            ColumnType::Int => json_of(
                row.try_get::<Option<i64>, _>(i)
                    .map_err(e)?
                    .map(Value::from),
            ),
            ColumnType::Float => json_of(
                row.try_get::<Option<f64>, _>(i)
                    .map_err(e)?
                    .map(Value::from),
            ),
            ColumnType::Bool => json_of(
                row.try_get::<Option<bool>, _>(i)
                    .map_err(e)?
                    .map(Value::from),
            ),
            ColumnType::Bytes => json_of(
                row.try_get::<Option<Vec<u8>>, _>(i)
                    .map_err(e)?
                    .map(|b| Value::from(STANDARD_NO_PAD.encode(b))),
            ),
            ColumnType::Json => match s(row)? {
                None => Value::Null,
                Some(t) => serde_json::from_str(&t).map_err(|x| bad(spec, col, x))?,
            },
            ColumnType::Date => json_of(
                row.try_get::<Option<NaiveDate>, _>(i)
                    .map_err(e)?
                    .map(|d| Value::from(d.format("%Y-%m-%d").to_string())),
            ),
            ColumnType::Timestamp => json_of(
                row.try_get::<Option<DateTime<Utc>>, _>(i)
                    .map_err(e)?
                    .map(instant),
            ),
            ColumnType::Uuid => match s(row)? {
                None => Value::Null,
                Some(t) => Value::from(
                    uuid::Uuid::parse_str(&t)
                        .map_err(|x| bad(spec, col, x))?
                        .hyphenated()
                        .to_string(),
                ),
            },
            _ => return Err(bad(spec, col, "unsupported column type")),
        })
    }

    fn values(row: &sqlx::sqlite::SqliteRow, spec: &TableSpec) -> Result<Vec<Value>, DbError> {
        spec.columns
            .iter()
            .enumerate()
            .map(|(i, c)| sqlite_value(row, i, spec, c))
            .collect()
    }

    /// [`write_pg_table`] for a SQLite tenant file.
    pub async fn write_sqlite_table<W: std::io::Write>(
        conn: &mut sqlx::SqliteConnection,
        spec: &TableSpec,
        out: &mut BackupWriter<'_, W>,
    ) -> Result<TableSum, DbError> {
        out.begin_table(&spec.name, spec.columns.clone())
            .map_err(|e| DbError::Export(e.to_string()))?;
        let sql = spec.select();
        let mut rows = sqlx::query(&sql).fetch(&mut *conn);
        while let Some(row) = rows.try_next().await? {
            out.row(values(&row, spec)?)
                .map_err(|e| DbError::Export(e.to_string()))?;
        }
        out.end_table().map_err(|e| DbError::Export(e.to_string()))
    }

    /// [`read_pg_table_sum`] for a SQLite tenant file.
    pub async fn read_sqlite_table_sum(
        conn: &mut sqlx::SqliteConnection,
        spec: &TableSpec,
    ) -> Result<TableSum, DbError> {
        let sql = spec.select();
        let mut rows = sqlx::query(&sql).fetch(&mut *conn);
        let mut sum = TableSum::default();
        while let Some(row) = rows.try_next().await? {
            sum.add(&values(&row, spec)?);
        }
        Ok(sum)
    }

    /// [`insert_pg_row`] for a SQLite tenant file (UUIDs, dates and
    /// instants stored as text, booleans as integers, JSON as text).
    pub async fn insert_sqlite_row(
        conn: &mut sqlx::SqliteConnection,
        spec: &TableSpec,
        values: &[Value],
    ) -> Result<(), DbError> {
        let sql = spec.insert();
        let mut q = sqlx::query(&sql);
        for (c, v) in spec.columns.iter().zip(values) {
            q = match c.ty {
                ColumnType::Text => q.bind(text(spec, c, v)?.map(str::to_owned)),
                ColumnType::Int => q.bind(v.as_i64()),
                ColumnType::Float => q.bind(v.as_f64()),
                ColumnType::Bool => q.bind(v.as_bool()),
                ColumnType::Bytes => q.bind(parse_bytes(spec, c, v)?),
                ColumnType::Json => q.bind((!v.is_null()).then(|| v.to_string())),
                ColumnType::Date => q.bind(parse_date(spec, c, v)?),
                ColumnType::Timestamp => q.bind(parse_instant(spec, c, v)?),
                ColumnType::Uuid => {
                    q.bind(parse_uuid(spec, c, v)?.map(|u| u.hyphenated().to_string()))
                }
                _ => return Err(bad(spec, c, "unsupported column type")),
            };
        }
        q.execute(&mut *conn).await?;
        Ok(())
    }
}

#[cfg(feature = "sqlite")]
pub use sqlite::{insert_sqlite_row, read_sqlite_table_sum, write_sqlite_table};
