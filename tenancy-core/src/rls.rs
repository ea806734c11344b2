//! PostgreSQL row-level security DDL for tenant tables, as text.
//!
//! Every PostgreSQL data path (tenancy-sqlx, tenancy-diesel) applies the same
//! statements with its own driver, and the isolation audit of tenancy-sqlx
//! checks for exactly this shape. [`TenantTable`] produces the statements
//! that make a table tenant-isolated:
//!
//! 1. `tenant_id` is `NOT NULL`;
//! 2. row-level security is enabled **and forced** (so the owner is bound too);
//! 3. one policy for **all** commands with both `USING` and `WITH CHECK` on
//!    `tenant_id = (SELECT NULLIF(current_setting('app.tenant_id', true), '')::uuid)`
//!    — `NULLIF` because an unset setting reads as `''` once a session has
//!    used it, and the scalar subquery so PostgreSQL evaluates it once per
//!    statement rather than once per row;
//! 4. `SELECT, INSERT, UPDATE, DELETE` for the application role, nothing more;
//! 5. an index leading with `tenant_id`.
//!
//! With no tenant set, the predicate is `tenant_id = NULL`: no row is
//! visible and no row can be written. Isolation fails closed.

/// The transaction-local setting that carries the tenant id
/// (`SET LOCAL app.tenant_id = '<uuid>'`, never per session).
pub const TENANT_SETTING: &str = "app.tenant_id";

/// `BEGIN` and the tenant setting as one simple-protocol message: one round
/// trip, transaction scope only. The id is a validated UUID, so the literal
/// cannot carry anything else.
///
/// ```
/// use tenancy_core::TenantId;
///
/// let id: TenantId = "6f1c0c8e-2d5b-4c1a-9a57-3f8e2b7d9c41".parse()?;
/// assert_eq!(
///     tenancy_core::rls::begin_sql(id),
///     "BEGIN; SET LOCAL app.tenant_id = '6f1c0c8e-2d5b-4c1a-9a57-3f8e2b7d9c41'"
/// );
/// # Ok::<(), tenancy_core::TenantIdError>(())
/// ```
pub fn begin_sql(tenant: crate::TenantId) -> String {
    format!(
        "BEGIN; SET LOCAL {TENANT_SETTING} = '{}'",
        tenant.as_uuid().hyphenated()
    )
}

/// The name of the policy [`TenantTable`] creates.
pub const POLICY_NAME: &str = "tenant_isolation";

/// [`begin_sql`] for a tenant placed in a schema of its own: the same
/// message also sets `search_path` to that schema (only), with transaction
/// scope. `schema` is quoted; pass a name checked by
/// [`Placement::checked_name`](crate::Placement::checked_name).
///
/// ```
/// use tenancy_core::TenantId;
///
/// let id: TenantId = "6f1c0c8e-2d5b-4c1a-9a57-3f8e2b7d9c41".parse()?;
/// assert_eq!(
///     tenancy_core::rls::begin_sql_in_schema(id, "t_acme"),
///     "BEGIN; SET LOCAL search_path TO \"t_acme\"; \
///      SET LOCAL app.tenant_id = '6f1c0c8e-2d5b-4c1a-9a57-3f8e2b7d9c41'"
/// );
/// # Ok::<(), tenancy_core::TenantIdError>(())
/// ```
pub fn begin_sql_in_schema(tenant: crate::TenantId, schema: &str) -> String {
    format!(
        "BEGIN; SET LOCAL search_path TO {}; SET LOCAL {TENANT_SETTING} = '{}'",
        quote_ident(schema),
        tenant.as_uuid().hyphenated()
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
///     "\"tenant_id\" = (SELECT NULLIF(current_setting('app.tenant_id', true), '')::uuid)"
/// );
/// ```
pub fn tenant_predicate(column: &str) -> String {
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
    /// 3. default the column to the transaction's tenant
    ///    (`NULLIF(current_setting('app.tenant_id', true), '')::uuid`), so
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
            format!(
                "ALTER TABLE {table} ALTER COLUMN {column} SET DEFAULT \
                 NULLIF(current_setting('{TENANT_SETTING}', true), '')::uuid"
            ),
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
