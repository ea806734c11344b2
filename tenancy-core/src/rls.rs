//! PostgreSQL row-level security DDL for tenant tables, as text, and the
//! sealed tenant binding every PostgreSQL data path opens transactions with.
//!
//! Every PostgreSQL data path (tenancy-sqlx, tenancy-diesel) applies the same
//! statements with its own driver, and the isolation audit of tenancy-sqlx
//! checks for exactly this shape. [`TenantTable`] produces the statements
//! that make a table tenant-isolated:
//!
//! 1. `tenant_id` is `NOT NULL`;
//! 2. row-level security is enabled **and forced** (so the owner is bound too);
//! 3. one policy for **all** commands with both `USING` and `WITH CHECK` on
//!    `tenant_id = (SELECT tenancy.tenant())` — the scalar subquery so
//!    PostgreSQL evaluates it once per statement rather than once per row;
//! 4. `SELECT, INSERT, UPDATE, DELETE` for the application role, nothing more;
//! 5. an index leading with `tenant_id`.
//!
//! # The sealed binding
//!
//! `tenancy.tenant()` (installed by [`SEAL_SQL`]) answers the tenant that
//! **the message which began the transaction** sealed with a proof only the
//! library can make ([`SealKey`]); see [`begin_sql`]. SQL that runs later in
//! the transaction — an injected statement, a careless helper — cannot
//! re-scope it: `set_config('app.tenant_id', …)`, `SET`, `SET LOCAL` and
//! `RESET` only make `tenancy.tenant()` return NULL, and a second
//! `tenancy.seal` is refused. With no sealed tenant the predicate is
//! `tenant_id = NULL`: no row is visible and no row can be written.
//! Isolation fails closed. The design and its limits are in the workspace's
//! `docs/threat-model.md`.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

/// The transaction-local setting that names the tenant of a sealed
/// transaction. It is set by `tenancy.seal`, never trusted on its own:
/// changing it inside the transaction makes the policies see no tenant.
pub const TENANT_SETTING: &str = "app.tenant_id";

/// The SQL that installs the sealed binding in a database: schema `tenancy`,
/// the owner-only seal key (generated on first install), the owner-only
/// sequences that hold the sealed tenant, `tenancy.seal(...)` and
/// `tenancy.tenant()`. Idempotent; run it as the owner of the tenant tables
/// before creating them (tenancy-sqlx's `migrate::run` does).
///
/// ```
/// assert!(tenancy_core::rls::SEAL_SQL.contains("CREATE OR REPLACE FUNCTION tenancy.tenant()"));
/// ```
pub const SEAL_SQL: &str = include_str!("../sql/seal.sql");

/// The SQL expression policies compare the tenant column with.
pub const SEALED_TENANT: &str = "(SELECT tenancy.tenant())";

/// The key that proves a transaction was sealed by the library.
///
/// The database generates it on install ([`SEAL_SQL`], table
/// `tenancy.seal_key`, readable by the owner only); the application is
/// configured with the same 32 bytes — read it once with the owner's
/// connection (tenancy-sqlx: `migrate::seal_key`) or pass it in from your
/// secret store ([`SealKey::from_hex`]). The application role can neither
/// read it nor seal a transaction without it.
///
/// ```
/// use tenancy_core::rls::SealKey;
///
/// let key = SealKey::from_hex(&"ab".repeat(32))?;
/// assert_eq!(format!("{key:?}"), "SealKey(..)"); // never printed
/// assert!(SealKey::from_hex("abc").is_err());
/// # Ok::<(), tenancy_core::rls::SealKeyError>(())
/// ```
#[derive(Clone)]
pub struct SealKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealKey(..)")
    }
}

/// A seal key that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SealKeyError {
    /// Not 32 bytes.
    #[error(
        "a seal key is 32 bytes ({expected} hex digits); got {found} — copy it from tenancy.seal_key"
    )]
    Length {
        /// Hex digits expected.
        expected: usize,
        /// What was given.
        found: usize,
    },
    /// Not hexadecimal.
    #[error("a seal key is written in hexadecimal digits (0-9, a-f)")]
    NotHex,
}

impl SealKey {
    /// The key from its 32 bytes (the `key` column of `tenancy.seal_key`).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// The key from a slice; it must be 32 bytes long.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, SealKeyError> {
        let array: [u8; 32] = bytes.try_into().map_err(|_| SealKeyError::Length {
            expected: 64,
            found: bytes.len() * 2,
        })?;
        Ok(Self::from_bytes(array))
    }

    /// The key from 64 hex digits (`encode(key, 'hex')`).
    pub fn from_hex(hex: &str) -> Result<Self, SealKeyError> {
        let hex = hex.trim();
        let hex = hex.strip_prefix("\\x").unwrap_or(hex);
        if hex.len() != 64 {
            return Err(SealKeyError::Length {
                expected: 64,
                found: hex.len(),
            });
        }
        let mut out = Zeroizing::new([0u8; 32]);
        for (i, pair) in hex.as_bytes().chunks(2).enumerate() {
            let digit = |c: u8| (c as char).to_digit(16).ok_or(SealKeyError::NotHex);
            out[i] = u8::try_from(digit(pair[0])? * 16 + digit(pair[1])?)
                .map_err(|_| SealKeyError::NotHex)?;
        }
        Ok(Self(out))
    }

    /// The key's bytes, to install it in another database (tenancy-sqlx:
    /// `migrate::install_seal`). Treat them like a password.
    pub fn expose_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The proof `tenancy.seal` checks: HMAC-SHA256 over the tenant's 16
    /// bytes and `issued` (seconds since the Unix epoch, 8 bytes big-endian).
    pub fn proof(&self, tenant: crate::TenantId, issued: i64) -> [u8; 32] {
        // HMAC accepts keys of any length: new_from_slice cannot fail here.
        let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(self.0.as_slice()) else {
            unreachable!("HMAC takes keys of any length")
        };
        mac.update(tenant.as_uuid().as_bytes());
        mac.update(&issued.to_be_bytes());
        mac.finalize().into_bytes().into()
    }

    /// `CALL tenancy.seal(...)` for `tenant`, issued now.
    fn seal_call(&self, tenant: crate::TenantId) -> String {
        let issued = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        self.seal_call_at(tenant, issued)
    }

    fn seal_call_at(&self, tenant: crate::TenantId, issued: i64) -> String {
        let mut sql = String::with_capacity(160);
        let _ = write!(
            sql,
            "CALL tenancy.seal('{}', {issued}, '\\x",
            tenant.as_uuid().hyphenated()
        );
        for b in self.proof(tenant, issued) {
            let _ = write!(sql, "{b:02x}");
        }
        sql.push_str("')");
        sql
    }
}

/// The message that opens a tenant transaction: `BEGIN` and the seal, as one
/// simple-protocol message (one round trip). The id is a validated UUID and
/// the proof is hex, so the text cannot carry anything else.
///
/// ```
/// use tenancy_core::{TenantId, rls::{SealKey, begin_sql}};
///
/// let id: TenantId = "6f1c0c8e-2d5b-4c1a-9a57-3f8e2b7d9c41".parse()?;
/// let sql = begin_sql(id, &SealKey::from_bytes([7; 32]));
/// assert!(sql.starts_with("BEGIN; CALL tenancy.seal('6f1c0c8e-2d5b-4c1a-9a57-3f8e2b7d9c41', "));
/// # Ok::<(), tenancy_core::TenantIdError>(())
/// ```
pub fn begin_sql(tenant: crate::TenantId, key: &SealKey) -> String {
    format!("BEGIN; {}", key.seal_call(tenant))
}

/// The name of the policy [`TenantTable`] creates.
pub const POLICY_NAME: &str = "tenant_isolation";

/// [`begin_sql`] for a tenant placed in a schema of its own: the same
/// message also sets `search_path` to that schema (only), with transaction
/// scope. `schema` is quoted; pass a name checked by
/// [`Placement::checked_name`](crate::Placement::checked_name).
///
/// ```
/// use tenancy_core::{TenantId, rls::{SealKey, begin_sql_in_schema}};
///
/// let id: TenantId = "6f1c0c8e-2d5b-4c1a-9a57-3f8e2b7d9c41".parse()?;
/// let sql = begin_sql_in_schema(id, "t_acme", &SealKey::from_bytes([7; 32]));
/// assert!(sql.starts_with("BEGIN; SET LOCAL search_path TO \"t_acme\"; CALL tenancy.seal("));
/// # Ok::<(), tenancy_core::TenantIdError>(())
/// ```
pub fn begin_sql_in_schema(tenant: crate::TenantId, schema: &str, key: &SealKey) -> String {
    format!(
        "BEGIN; SET LOCAL search_path TO {}; {}",
        quote_ident(schema),
        key.seal_call(tenant)
    )
}

/// Quotes an SQL identifier (`my "table"` → `"my ""table"""`).
///
/// ```
/// assert_eq!(tenancy_core::rls::quote_ident("policies"), "\"policies\"");
/// assert_eq!(tenancy_core::rls::quote_ident("a\"b"), "\"a\"\"b\"");
/// ```
pub fn quote_ident(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// The policy predicate for `column`.
///
/// ```
/// assert_eq!(
///     tenancy_core::rls::tenant_predicate("tenant_id"),
///     "\"tenant_id\" = (SELECT tenancy.tenant())"
/// );
/// ```
pub fn tenant_predicate(column: &str) -> String {
    format!("{} = {SEALED_TENANT}", quote_ident(column))
}

/// The predicate policies had before the sealed binding: it trusts
/// `app.tenant_id`, which any SQL in the transaction can change. The
/// isolation audit reports it; [`TenantTable::statements`] replaces it.
pub fn unsealed_predicate(column: &str) -> String {
    format!(
        "{} = (SELECT NULLIF(current_setting('{TENANT_SETTING}', true), '')::uuid)",
        quote_ident(column)
    )
}

/// A table whose rows belong to tenants.
///
/// ```
/// use tenancy_core::rls::TenantTable;
///
/// let ddl = TenantTable::new("policies")
///     .schema("insurance")
///     .index_on(["id"])
///     .grant_to("app")
///     .statements();
/// assert!(ddl.iter().any(|s| s.contains("FORCE ROW LEVEL SECURITY")));
/// assert!(ddl.iter().any(|s| s.contains("WITH CHECK")));
/// assert!(ddl.iter().any(|s| s.contains("(\"tenant_id\", \"id\")")));
/// ```
#[derive(Debug, Clone)]
pub struct TenantTable {
    schema: Option<String>,
    name: String,
    column: String,
    index_columns: Vec<String>,
    roles: Vec<String>,
}

impl TenantTable {
    /// The table `name` with a `tenant_id` column.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            schema: None,
            name: name.into(),
            column: "tenant_id".into(),
            index_columns: Vec::new(),
            roles: Vec::new(),
        }
    }

    /// The tenant column's name.
    pub fn tenant_column_name(&self) -> &str {
        &self.column
    }

    /// The table name as `schema.table` (or `table`), unquoted, for file names and reports.
    pub fn display_name(&self) -> String {
        match &self.schema {
            Some(s) => format!("{s}.{}", self.name),
            None => self.name.clone(),
        }
    }

    /// Qualifies the table with a schema.
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = Some(schema.into());
        self
    }

    /// Uses another column name than `tenant_id`.
    pub fn tenant_column(mut self, column: impl Into<String>) -> Self {
        self.column = column.into();
        self
    }

    /// Columns that follow `tenant_id` in the tenant index (usually the
    /// primary key, so point reads by id use it).
    pub fn index_on<I, S>(mut self, columns: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.index_columns = columns.into_iter().map(Into::into).collect();
        self
    }

    /// Grants `SELECT, INSERT, UPDATE, DELETE` to `role`.
    pub fn grant_to(mut self, role: impl Into<String>) -> Self {
        self.roles.push(role.into());
        self
    }

    /// The quoted, schema-qualified table name.
    pub fn qualified_name(&self) -> String {
        match &self.schema {
            Some(s) => format!("{}.{}", quote_ident(s), quote_ident(&self.name)),
            None => quote_ident(&self.name),
        }
    }

    /// The DDL statements, in order. Each is idempotent.
    pub fn statements(&self) -> Vec<String> {
        let table = self.qualified_name();
        let column = quote_ident(&self.column);
        let predicate = tenant_predicate(&self.column);
        let policy = quote_ident(POLICY_NAME);
        let mut index_cols = vec![column.clone()];
        index_cols.extend(self.index_columns.iter().map(|c| quote_ident(c)));
        let index_name = quote_ident(&format!("{}_{}_idx", self.name, self.column));
        let mut out = vec![
            format!("ALTER TABLE {table} ALTER COLUMN {column} SET NOT NULL"),
            format!("ALTER TABLE {table} ENABLE ROW LEVEL SECURITY"),
            format!("ALTER TABLE {table} FORCE ROW LEVEL SECURITY"),
            format!("DROP POLICY IF EXISTS {policy} ON {table}"),
            format!(
                "CREATE POLICY {policy} ON {table} AS PERMISSIVE FOR ALL \
                 USING ({predicate}) WITH CHECK ({predicate})"
            ),
            format!(
                "CREATE INDEX IF NOT EXISTS {index_name} ON {table} ({})",
                index_cols.join(", ")
            ),
        ];
        for role in &self.roles {
            out.push(format!(
                "GRANT SELECT, INSERT, UPDATE, DELETE ON {table} TO {}",
                quote_ident(role)
            ));
        }
        out
    }

    /// Statements that convert an **existing single-tenant table** into this
    /// tenant table, in order (run them in one transaction, as the owner):
    ///
    /// 1. add the tenant column, nullable;
    /// 2. backfill every existing row with `existing_rows_belong_to`;
    /// 3. default the column to the transaction's sealed tenant
    ///    (`tenancy.tenant()`), so
    ///    application `INSERT`s that do not name it yet are stamped with the
    ///    right tenant — and fail `NOT NULL` outside a tenant transaction;
    /// 4. then [`TenantTable::statements`]: `NOT NULL`, row-level security
    ///    enabled and forced, the policy, the tenant-leading index, grants.
    ///
    /// Unique constraints and foreign keys that should become per tenant
    /// (`UNIQUE (tenant_id, code)` instead of `UNIQUE (code)`) are yours to
    /// change: which ones is a product decision.
    ///
    /// ```
    /// use tenancy_core::rls::TenantTable;
    ///
    /// let default: tenancy_core::TenantId = "6f1c0c8e-2d5b-4c1a-9a57-3f8e2b7d9c41".parse()?;
    /// let steps = TenantTable::new("customers").grant_to("app").conversion_statements(default);
    /// assert!(steps[0].contains("ADD COLUMN IF NOT EXISTS \"tenant_id\" uuid"));
    /// assert!(steps[1].starts_with("UPDATE"));
    /// assert!(steps.iter().any(|s| s.contains("FORCE ROW LEVEL SECURITY")));
    /// # Ok::<(), tenancy_core::TenantIdError>(())
    /// ```
    pub fn conversion_statements(&self, existing_rows_belong_to: crate::TenantId) -> Vec<String> {
        let table = self.qualified_name();
        let column = quote_ident(&self.column);
        let mut out = vec![
            format!("ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {column} uuid"),
            format!(
                "UPDATE {table} SET {column} = '{}' WHERE {column} IS NULL",
                existing_rows_belong_to.as_uuid().hyphenated()
            ),
            format!("ALTER TABLE {table} ALTER COLUMN {column} SET DEFAULT tenancy.tenant()"),
        ];
        out.extend(self.statements());
        out
    }

    /// The DDL as one script.
    pub fn ddl(&self) -> String {
        let mut s = self.statements().join(";\n");
        s.push_str(";\n");
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proof_is_rfc2104_hmac_over_tenant_and_issued() {
        // The server recomputes it as sha256(opad || sha256(ipad || m)).
        let key = SealKey::from_bytes([0x0b; 32]);
        let tenant: crate::TenantId = "6f1c0c8e-2d5b-4c1a-9a57-3f8e2b7d9c41".parse().unwrap();
        let proof = key.proof(tenant, 1_700_000_000);
        use sha2::Digest;
        let mut ipad = [0x36u8; 64];
        let mut opad = [0x5cu8; 64];
        for i in 0..32 {
            ipad[i] ^= 0x0b;
            opad[i] ^= 0x0b;
        }
        let inner = Sha256::new()
            .chain_update(ipad)
            .chain_update(tenant.as_uuid().as_bytes())
            .chain_update(1_700_000_000i64.to_be_bytes())
            .finalize();
        let outer: [u8; 32] = Sha256::new()
            .chain_update(opad)
            .chain_update(inner)
            .finalize()
            .into();
        assert_eq!(proof, outer);
        assert_ne!(proof, key.proof(tenant, 1_700_000_001));
    }

    #[test]
    fn seal_call_is_hex_only() {
        let key = SealKey::from_bytes([1; 32]);
        let tenant: crate::TenantId = "6f1c0c8e-2d5b-4c1a-9a57-3f8e2b7d9c41".parse().unwrap();
        let call = key.seal_call_at(tenant, 42);
        assert!(
            call.starts_with("CALL tenancy.seal('6f1c0c8e-2d5b-4c1a-9a57-3f8e2b7d9c41', 42, '\\x")
        );
        let hex = &call[call.len() - 66..call.len() - 2];
        assert!(hex.bytes().all(|b| b.is_ascii_hexdigit()));
    }

    #[test]
    fn keys_parse_from_hex_only() {
        assert!(SealKey::from_hex(&"0f".repeat(32)).is_ok());
        assert!(SealKey::from_hex(&format!("\\x{}", "0f".repeat(32))).is_ok());
        assert_eq!(
            SealKey::from_hex(&"zz".repeat(32)).unwrap_err(),
            SealKeyError::NotHex
        );
        assert!(matches!(
            SealKey::from_hex("00"),
            Err(SealKeyError::Length { .. })
        ));
        assert!(SealKey::from_slice(&[0; 31]).is_err());
    }
}
