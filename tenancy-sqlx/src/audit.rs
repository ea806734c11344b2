//! The isolation audit: inspect the live database and report every way a
//! tenant table or the connecting role could let data cross tenants.
//!
//! Run it at start-up **connected as the application role**; in strict mode
//! ([`Audit::enforce`]) the application refuses to start on any finding.
//!
//! For every table in the audited schemas that has a `tenant_id` column
//! (unless exempted) it checks:
//!
//! | check | why |
//! |---|---|
//! | RLS enabled | otherwise policies are ignored |
//! | RLS forced | otherwise the table owner bypasses the policies |
//! | a policy for ALL commands with USING and WITH CHECK on `app.tenant_id` | reads *and* writes are bound to the tenant |
//! | no other permissive policy that ignores `app.tenant_id` | permissive policies are OR-ed: one `USING (true)` opens everything |
//! | `tenant_id` NOT NULL | a NULL row belongs to nobody and is invisible to everybody |
//! | an index leading with `tenant_id` | every tenant query filters on it |
//!
//! and for the connecting role: not superuser, not `BYPASSRLS`, not the
//! owner (or a member of the owner role) of any tenant table.
//!
//! ```no_run
//! # async fn start(app_pool: sqlx::PgPool) -> Result<(), tenancy_sqlx::DbError> {
//! use tenancy_sqlx::audit::Audit;
//!
//! let mut conn = app_pool.acquire().await?;
//! let report = Audit::new().schema("insurance").exempt("insurance.products").enforce(&mut conn).await?;
//! tracing::info!("{report}");
//! # Ok(()) }
//! ```

use std::fmt;

use sqlx::PgConnection;

use crate::{DbError, TENANT_SETTING};

/// One problem found by the audit.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Finding {
    /// Row-level security is not enabled on the table.
    RlsDisabled {
        /// Schema-qualified table.
        table: String,
    },
    /// Row-level security is enabled but not forced.
    RlsNotForced {
        /// Schema-qualified table.
        table: String,
    },
    /// No policy applies to all commands with both USING and WITH CHECK
    /// referencing `app.tenant_id`.
    NoTenantPolicy {
        /// Schema-qualified table.
        table: String,
    },
    /// A policy has no WITH CHECK clause, so writes are not bound to the tenant.
    MissingWithCheck {
        /// Schema-qualified table.
        table: String,
        /// The policy.
        policy: String,
    },
    /// A permissive policy does not reference `app.tenant_id` and can widen access.
    WideningPolicy {
        /// Schema-qualified table.
        table: String,
        /// The policy.
        policy: String,
    },
    /// The tenant column allows NULL.
    NullableTenantColumn {
        /// Schema-qualified table.
        table: String,
    },
    /// No index starts with the tenant column.
    NoTenantIndex {
        /// Schema-qualified table.
        table: String,
    },
    /// The connecting role is a superuser (bypasses RLS entirely).
    RoleIsSuperuser {
        /// The role.
        role: String,
    },
    /// The connecting role has BYPASSRLS.
    RoleBypassesRls {
        /// The role.
        role: String,
    },
    /// The connecting role owns (or is a member of the owner of) a tenant table.
    RoleOwnsTable {
        /// Schema-qualified table.
        table: String,
        /// The table's owner.
        owner: String,
    },
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Finding::RlsDisabled { table } => write!(
                f,
                "{table}: row-level security is disabled — ALTER TABLE {table} ENABLE ROW LEVEL SECURITY"
            ),
            Finding::RlsNotForced { table } => write!(
                f,
                "{table}: row-level security is not forced, the owner bypasses it — ALTER TABLE {table} FORCE ROW LEVEL SECURITY"
            ),
            Finding::NoTenantPolicy { table } => write!(
                f,
                "{table}: no policy FOR ALL with USING and WITH CHECK on {TENANT_SETTING} — see tenancy_sqlx::rls::TenantTable"
            ),
            Finding::MissingWithCheck { table, policy } => write!(
                f,
                "{table}: policy {policy} has no WITH CHECK, writes are not bound to the tenant"
            ),
            Finding::WideningPolicy { table, policy } => write!(
                f,
                "{table}: permissive policy {policy} does not reference {TENANT_SETTING} and is OR-ed with the tenant policy — drop it or make it RESTRICTIVE"
            ),
            Finding::NullableTenantColumn { table } => write!(
                f,
                "{table}: tenant_id allows NULL — ALTER TABLE {table} ALTER COLUMN tenant_id SET NOT NULL"
            ),
            Finding::NoTenantIndex { table } => write!(
                f,
                "{table}: no index leads with tenant_id — CREATE INDEX ON {table} (tenant_id, ...)"
            ),
            Finding::RoleIsSuperuser { role } => write!(
                f,
                "role {role} is a superuser and bypasses every policy — connect the application as an ordinary role"
            ),
            Finding::RoleBypassesRls { role } => write!(
                f,
                "role {role} has BYPASSRLS — ALTER ROLE {role} NOBYPASSRLS"
            ),
            Finding::RoleOwnsTable { table, owner } => write!(
                f,
                "{table}: owned by {owner}, which the connecting role is or belongs to — run the application as a non-owner role"
            ),
        }
    }
}

/// What the audit found.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct AuditReport {
    /// The role the audit connected as.
    pub role: String,
    /// The tenant tables examined (schema-qualified).
    pub tables: Vec<String>,
    /// Problems, in a stable order.
    pub findings: Vec<Finding>,
}

impl AuditReport {
    /// Whether nothing was found.
    pub fn is_clean(&self) -> bool {
        self.findings.is_empty()
    }
}

impl fmt::Display for AuditReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "isolation audit as role {}: {} tenant table(s), {} finding(s)",
            self.role,
            self.tables.len(),
            self.findings.len()
        )?;
        for finding in &self.findings {
            writeln!(f, "  FAIL {finding}")?;
        }
        if self.findings.is_empty() {
            for t in &self.tables {
                writeln!(f, "  ok   {t}")?;
            }
        }
        Ok(())
    }
}

/// Configures and runs the isolation audit.
#[derive(Debug, Clone)]
pub struct Audit {
    schemas: Vec<String>,
    column: String,
    exempt: Vec<String>,
}

impl Default for Audit {
    fn default() -> Self {
        Self {
            schemas: Vec::new(),
            column: "tenant_id".into(),
            exempt: Vec::new(),
        }
    }
}

#[derive(sqlx::FromRow)]
struct TableRow {
    qualified: String,
    rls: bool,
    forced: bool,
    not_null: bool,
    tenant_index: bool,
    owner: String,
    is_owner: bool,
}

#[derive(sqlx::FromRow)]
struct PolicyRow {
    name: String,
    cmd: String,
    permissive: bool,
    using_expr: Option<String>,
    check_expr: Option<String>,
}

impl Audit {
    /// Audits the `public` schema unless [`Audit::schema`] names others.
    pub fn new() -> Self {
        Self::default()
    }

    /// Audits `schema` (call repeatedly for several).
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schemas.push(schema.into());
        self
    }

    /// The tenant column name (default `tenant_id`).
    pub fn tenant_column(mut self, column: impl Into<String>) -> Self {
        self.column = column.into();
        self
    }

    /// Skips `schema.table` (a table with a tenant column that is shared on
    /// purpose, such as a global catalogue). Exemptions are listed in logs.
    pub fn exempt(mut self, qualified_table: impl Into<String>) -> Self {
        self.exempt.push(qualified_table.into());
        self
    }

    /// Runs the audit and returns the report, findings or not.
    pub async fn run(&self, conn: &mut PgConnection) -> Result<AuditReport, DbError> {
        let schemas = if self.schemas.is_empty() {
            vec!["public".to_owned()]
        } else {
            self.schemas.clone()
        };
        let (role, superuser, bypass): (String, bool, bool) = sqlx::query_as(
            "SELECT current_user::text, rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user",
        )
        .fetch_one(&mut *conn)
        .await?;
        let mut findings = Vec::new();
        if superuser {
            findings.push(Finding::RoleIsSuperuser { role: role.clone() });
        }
        if bypass {
            findings.push(Finding::RoleBypassesRls { role: role.clone() });
        }

        let tables: Vec<TableRow> = sqlx::query_as(
            r#"
            SELECT format('%I.%I', n.nspname, c.relname) AS qualified,
                   c.relrowsecurity AS rls,
                   c.relforcerowsecurity AS forced,
                   a.attnotnull AS not_null,
                   EXISTS (SELECT 1 FROM pg_index i
                           WHERE i.indrelid = c.oid AND i.indkey[0] = a.attnum) AS tenant_index,
                   pg_get_userbyid(c.relowner)::text AS owner,
                   pg_has_role(current_user, c.relowner, 'MEMBER') AS is_owner
            FROM pg_class c
            JOIN pg_namespace n ON n.oid = c.relnamespace
            JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = $2
                               AND NOT a.attisdropped AND a.attnum > 0
            WHERE c.relkind IN ('r', 'p') AND n.nspname = ANY($1)
            ORDER BY 1
            "#,
        )
        .bind(&schemas)
        .bind(&self.column)
        .fetch_all(&mut *conn)
        .await?;

        let mut examined = Vec::new();
        for t in tables {
            if self.exempt.iter().any(|e| unquote(&t.qualified) == *e) {
                tracing::info!(table = %t.qualified, "isolation audit: table exempted by configuration");
                continue;
            }
            let table = t.qualified.clone();
            if !t.rls {
                findings.push(Finding::RlsDisabled {
                    table: table.clone(),
                });
            }
            if !t.forced {
                findings.push(Finding::RlsNotForced {
                    table: table.clone(),
                });
            }
            let policies: Vec<PolicyRow> = sqlx::query_as(
                r#"
                SELECT polname::text AS name, polcmd::text AS cmd, polpermissive AS permissive,
                       pg_get_expr(polqual, polrelid) AS using_expr,
                       pg_get_expr(polwithcheck, polrelid) AS check_expr
                FROM pg_policy WHERE polrelid = $1::regclass ORDER BY polname
                "#,
            )
            .bind(&t.qualified)
            .fetch_all(&mut *conn)
            .await?;
            let mentions = |e: &Option<String>| {
                e.as_deref()
                    .is_some_and(|e| e.contains(TENANT_SETTING) && e.contains(&self.column))
            };
            let mut has_tenant_policy = false;
            for p in &policies {
                let binds_tenant = mentions(&p.using_expr);
                if p.cmd == "*" && p.permissive && binds_tenant && mentions(&p.check_expr) {
                    has_tenant_policy = true;
                }
                if binds_tenant && p.check_expr.is_none() && p.cmd != "r" && p.cmd != "d" {
                    findings.push(Finding::MissingWithCheck {
                        table: table.clone(),
                        policy: p.name.clone(),
                    });
                }
                if p.permissive && !binds_tenant && !(p.cmd == "a" && mentions(&p.check_expr)) {
                    findings.push(Finding::WideningPolicy {
                        table: table.clone(),
                        policy: p.name.clone(),
                    });
                }
            }
            if !has_tenant_policy {
                findings.push(Finding::NoTenantPolicy {
                    table: table.clone(),
                });
            }
            if !t.not_null {
                findings.push(Finding::NullableTenantColumn {
                    table: table.clone(),
                });
            }
            if !t.tenant_index {
                findings.push(Finding::NoTenantIndex {
                    table: table.clone(),
                });
            }
            if t.is_owner {
                findings.push(Finding::RoleOwnsTable {
                    table: table.clone(),
                    owner: t.owner.clone(),
                });
            }
            examined.push(table);
        }
        Ok(AuditReport {
            role,
            tables: examined,
            findings,
        })
    }

    /// Strict mode: runs the audit and fails with [`DbError::Audit`] on any finding.
    pub async fn enforce(&self, conn: &mut PgConnection) -> Result<AuditReport, DbError> {
        let report = self.run(conn).await?;
        if report.is_clean() {
            tracing::info!(tables = report.tables.len(), "isolation audit passed");
            Ok(report)
        } else {
            tracing::error!("{report}");
            Err(DbError::Audit(Box::new(report)))
        }
    }
}

/// `"a"."b"` → `a.b` for comparing with configured names.
fn unquote(qualified: &str) -> String {
    qualified.replace('"', "")
}
