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
//! | a policy for ALL commands with USING and WITH CHECK exactly `tenant_id = (SELECT tenancy.tenant())` | reads *and* writes are bound to the sealed tenant |
//! | no policy trusting the raw `app.tenant_id` setting (the shape before the sealed binding) | any SQL in the transaction can change that setting |
//! | no other permissive policy | permissive policies are OR-ed: one `USING (true)` — or one `<> ''` — opens everything |
//! | `tenant_id` NOT NULL | a NULL row belongs to nobody and is invisible to everybody |
//! | an index leading with `tenant_id` | every tenant query filters on it |
//! | every partition has forced RLS and the tenant policy of its own | a partition queried directly ignores its parent's policies |
//! | no view without `security_invoker`, no materialized view over it | they read with their owner's rights, or copy rows out of RLS |
//! | no callable `SECURITY DEFINER` function owned by a superuser or `BYPASSRLS` role naming it | it runs without RLS for whoever calls it |
//!
//! Policies are compared with the exact shape [`tenancy_core::rls::TenantTable`]
//! creates, as PostgreSQL prints it back (`pg_get_expr`): a predicate that
//! only mentions the tenant — `<> ''`, `IS NOT NULL`, `OR true`, another
//! setting, a wrapper function, a `COALESCE` default — is not the tenant
//! policy. Permissive policies for one command are accepted when every
//! expression they use is exactly the tenant predicate; restrictive policies
//! only narrow and are ignored; a tenant policy `TO` other roles does not
//! count for the connecting role.
//!
//! For the connecting role: not superuser, not `BYPASSRLS`, not the owner
//! (or a member of the owner role) of any tenant table, no `TEMPORARY` on the
//! database, no `CREATE` on an audited schema or one on its `search_path`.
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

use crate::DbError;
use tenancy_core::rls::TENANT_SETTING;

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
    /// No policy binds the table to the sealed tenant
    /// (`tenant_id = (SELECT tenancy.tenant())`, for ALL commands with
    /// USING and WITH CHECK, or per command).
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
    /// A permissive policy other than the exact tenant predicate: it is
    /// OR-ed with the tenant policy and can widen access.
    WideningPolicy {
        /// Schema-qualified table.
        table: String,
        /// The policy.
        policy: String,
    },
    /// A policy trusts the raw `app.tenant_id` setting (the policy shape
    /// before the sealed binding): SQL inside a tenant transaction can
    /// change that setting and read another tenant's rows.
    UnsealedPolicy {
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
    /// A tenant policy of the right shape applies only to other roles: for
    /// the connecting role it is not there.
    PolicyForOtherRoles {
        /// Schema-qualified table.
        table: String,
        /// The policy.
        policy: String,
        /// The connecting role.
        role: String,
    },
    /// Only restrictive policies bind the table to the tenant: restrictive
    /// policies narrow what permissive ones grant, and alone grant nothing.
    RestrictiveOnly {
        /// Schema-qualified table.
        table: String,
        /// The restrictive policy.
        policy: String,
    },
    /// The connecting role may create temporary tables: `pg_temp` is
    /// searched first and has no row-level security, so a temporary table
    /// can shadow a tenant table for the next transaction on the connection.
    RoleCanCreateTemp {
        /// The role.
        role: String,
        /// The database.
        database: String,
    },
    /// The connecting role may create objects in a schema (a function or
    /// operator it plants there can be resolved by other code).
    RoleCanCreateInSchema {
        /// The role.
        role: String,
        /// The schema.
        schema: String,
    },
    /// A partition of a tenant table has no forced row-level security of its
    /// own: queried directly, it ignores the parent's policies.
    UnprotectedPartition {
        /// The partitioned (parent) table.
        table: String,
        /// The partition.
        partition: String,
    },
    /// A view reads a tenant table with its owner's rights (no
    /// `security_invoker`), or a materialized view copies tenant rows out
    /// of row-level security.
    ViewOverTenantTable {
        /// The tenant table.
        table: String,
        /// The view (schema-qualified).
        view: String,
        /// Whether it is materialized.
        materialized: bool,
    },
    /// A `SECURITY DEFINER` function owned by a role that bypasses row-level
    /// security (superuser or `BYPASSRLS`) reads a tenant table, and the
    /// connecting role may call it.
    DefinerBypassesRls {
        /// The tenant table it names.
        table: String,
        /// The function (`schema.name(args)`).
        function: String,
        /// Its owner.
        owner: String,
    },
    /// A foreign key references a tenant table without pairing the tenant
    /// column: a row can point at another tenant's row (the check bypasses
    /// row-level security), and whether the insert fails tells the attacker
    /// that the row exists.
    ForeignKeyWithoutTenant {
        /// The referenced tenant table.
        table: String,
        /// The referencing table.
        referencing: String,
        /// The constraint.
        constraint: String,
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
                "{table}: no policy binds rows to the sealed tenant — CREATE POLICY tenant_isolation ON {table} AS PERMISSIVE FOR ALL USING ({p}) WITH CHECK ({p}) (tenancy_sqlx::rls::TenantTable)",
                p = tenancy_core::rls::tenant_predicate("tenant_id")
            ),
            Finding::MissingWithCheck { table, policy } => write!(
                f,
                "{table}: policy {policy} has no WITH CHECK, writes are not bound to the tenant"
            ),
            Finding::WideningPolicy { table, policy } => write!(
                f,
                "{table}: permissive policy {policy} is not exactly the tenant predicate and is OR-ed with it, widening access — DROP POLICY {policy} ON {table}, or make it RESTRICTIVE"
            ),
            Finding::UnsealedPolicy { table, policy } => write!(
                f,
                "{table}: policy {policy} trusts the raw {TENANT_SETTING} setting, which SQL inside a tenant transaction can change — re-apply tenancy_sqlx::rls::TenantTable to recreate it on {p}",
                p = tenancy_core::rls::tenant_predicate("tenant_id")
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
            Finding::PolicyForOtherRoles {
                table,
                policy,
                role,
            } => write!(
                f,
                "{table}: policy {policy} applies to other roles, not to {role}, which is left without a tenant policy — ALTER POLICY {policy} ON {table} TO PUBLIC"
            ),
            Finding::RestrictiveOnly { table, policy } => write!(
                f,
                "{table}: policy {policy} is RESTRICTIVE and no permissive tenant policy exists, so it grants nothing — DROP POLICY {policy} ON {table} and re-apply tenancy_sqlx::rls::TenantTable"
            ),
            Finding::RoleCanCreateTemp { role, database } => write!(
                f,
                "role {role} may create temporary tables in {database}, which shadow tenant tables without row-level security — REVOKE TEMPORARY ON DATABASE {database} FROM PUBLIC, {role}"
            ),
            Finding::RoleCanCreateInSchema { role, schema } => write!(
                f,
                "role {role} may create objects in schema {schema} — REVOKE CREATE ON SCHEMA {schema} FROM PUBLIC, {role}"
            ),
            Finding::UnprotectedPartition { table, partition } => write!(
                f,
                "{table}: partition {partition} has no forced tenant policy of its own and can be queried directly — apply TenantTable to {partition} too"
            ),
            Finding::ViewOverTenantTable {
                table,
                view,
                materialized: false,
            } => write!(
                f,
                "{table}: view {view} reads it with its owner's rights — ALTER VIEW {view} SET (security_invoker = true)"
            ),
            Finding::ViewOverTenantTable {
                table,
                view,
                materialized: true,
            } => write!(
                f,
                "{table}: materialized view {view} holds its rows outside row-level security — DROP MATERIALIZED VIEW {view}, or REVOKE SELECT on it from the application role"
            ),
            Finding::DefinerBypassesRls {
                table,
                function,
                owner,
            } => write!(
                f,
                "{table}: SECURITY DEFINER function {function} is owned by {owner}, which bypasses row-level security — ALTER FUNCTION {function} OWNER TO a role without BYPASSRLS, or REVOKE EXECUTE from the application role"
            ),
            Finding::ForeignKeyWithoutTenant {
                table,
                referencing,
                constraint,
            } => write!(
                f,
                "{table}: foreign key {constraint} of {referencing} leaves out tenant_id, so a row may point at another tenant's row and the error tells whether it exists — make it FOREIGN KEY (tenant_id, …) REFERENCES {table} (tenant_id, …)"
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
    /// Whether the policy applies to the connecting role.
    applies: bool,
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
        let (database, temp): (String, bool) = sqlx::query_as(
            "SELECT current_database()::text, has_database_privilege(current_database(), 'TEMPORARY')",
        )
        .fetch_one(&mut *conn)
        .await?;
        if temp {
            findings.push(Finding::RoleCanCreateTemp {
                role: role.clone(),
                database,
            });
        }
        // The audited schemas and those on the role's search_path: where a
        // planted object would be found by name.
        let creatable: Vec<String> = sqlx::query_scalar(
            "SELECT nspname::text FROM pg_namespace \
             WHERE has_schema_privilege(oid, 'CREATE') \
               AND (nspname = ANY($1) OR nspname = ANY(current_schemas(false))) \
             ORDER BY 1",
        )
        .bind(&schemas)
        .fetch_all(&mut *conn)
        .await?;
        for schema in creatable {
            findings.push(Finding::RoleCanCreateInSchema {
                role: role.clone(),
                schema,
            });
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
            WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition AND n.nspname = ANY($1)
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
                       pg_get_expr(polwithcheck, polrelid) AS check_expr,
                       (0::oid = ANY (polroles)
                        OR EXISTS (SELECT 1 FROM unnest(polroles) r
                                   WHERE pg_has_role(current_user, r, 'USAGE'))) AS applies
                FROM pg_policy WHERE polrelid = $1::regclass ORDER BY polname
                "#,
            )
            .bind(&t.qualified)
            .fetch_all(&mut *conn)
            .await?;
            let exact = sealed_expr(&self.column);
            let is_exact = |e: &Option<String>| e.as_deref() == Some(exact.as_str());
            let unsealed = |e: &Option<String>| {
                e.as_deref()
                    .is_some_and(|e| e.contains(&format!("current_setting('{TENANT_SETTING}'")))
            };
            let mut has_tenant_policy = false;
            let mut restrictive = Vec::new();
            for p in &policies {
                if unsealed(&p.using_expr) || unsealed(&p.check_expr) {
                    findings.push(Finding::UnsealedPolicy {
                        table: table.clone(),
                        policy: p.name.clone(),
                    });
                    continue;
                }
                if !p.permissive {
                    // Restrictive policies are AND-ed: they can only narrow.
                    if is_exact(&p.using_expr) || is_exact(&p.check_expr) {
                        restrictive.push(p.name.clone());
                    }
                    continue;
                }
                // Every expression the command uses must be the predicate.
                let exact_policy = match p.cmd.as_str() {
                    "*" | "w" => {
                        is_exact(&p.using_expr)
                            && (p.check_expr.is_none() || is_exact(&p.check_expr))
                    }
                    "r" | "d" => is_exact(&p.using_expr) && p.check_expr.is_none(),
                    "a" => is_exact(&p.check_expr) && p.using_expr.is_none(),
                    _ => false,
                };
                if !exact_policy {
                    findings.push(Finding::WideningPolicy {
                        table: table.clone(),
                        policy: p.name.clone(),
                    });
                    continue;
                }
                // A tenant policy for other roles leaves this one without.
                if p.applies {
                    has_tenant_policy = true;
                } else {
                    findings.push(Finding::PolicyForOtherRoles {
                        table: table.clone(),
                        policy: p.name.clone(),
                        role: role.clone(),
                    });
                }
                if matches!(p.cmd.as_str(), "*" | "w") && p.check_expr.is_none() {
                    findings.push(Finding::MissingWithCheck {
                        table: table.clone(),
                        policy: p.name.clone(),
                    });
                }
            }
            if !has_tenant_policy {
                match restrictive.first() {
                    Some(policy) => findings.push(Finding::RestrictiveOnly {
                        table: table.clone(),
                        policy: policy.clone(),
                    }),
                    None => findings.push(Finding::NoTenantPolicy {
                        table: table.clone(),
                    }),
                }
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
            self.dependents(conn, &table, &mut findings).await?;
            examined.push(table);
        }
        Ok(AuditReport {
            role,
            tables: examined,
            findings,
        })
    }

    /// Partitions, views, definer functions and foreign keys that reach `table`.
    async fn dependents(
        &self,
        conn: &mut PgConnection,
        table: &str,
        findings: &mut Vec<Finding>,
    ) -> Result<(), DbError> {
        // Every partition, at any depth, needs forced RLS and the tenant
        // policy of its own: a direct query ignores the parent's.
        let partitions: Vec<(String, bool, bool, i64)> = sqlx::query_as(
            r#"
            WITH RECURSIVE parts(oid) AS (
                SELECT inhrelid FROM pg_inherits WHERE inhparent = $1::regclass
                UNION ALL
                SELECT i.inhrelid FROM pg_inherits i JOIN parts p ON i.inhparent = p.oid
            )
            SELECT format('%I.%I', n.nspname, c.relname), c.relrowsecurity, c.relforcerowsecurity,
                   (SELECT count(*) FROM pg_policy pol WHERE pol.polrelid = c.oid
                      AND pol.polpermissive AND pol.polcmd = '*'
                      AND pg_get_expr(pol.polqual, pol.polrelid) = $2
                      AND pg_get_expr(pol.polwithcheck, pol.polrelid) = $2)
            FROM parts JOIN pg_class c ON c.oid = parts.oid
            JOIN pg_namespace n ON n.oid = c.relnamespace
            ORDER BY 1
            "#,
        )
        .bind(table)
        .bind(sealed_expr(&self.column))
        .fetch_all(&mut *conn)
        .await?;
        for (partition, rls, forced, policies) in partitions {
            if !(rls && forced && policies > 0) {
                findings.push(Finding::UnprotectedPartition {
                    table: table.to_owned(),
                    partition,
                });
            }
        }
        // Views (any schema) whose rewrite rule reads the table.
        let views: Vec<(String, bool, bool)> = sqlx::query_as(
            r#"
            SELECT DISTINCT format('%I.%I', n.nspname, v.relname), v.relkind = 'm',
                   coalesce(array_to_string(v.reloptions, ',') ~* 'security_invoker=(true|on|1|yes)', false)
            FROM pg_depend d
            JOIN pg_rewrite r ON r.oid = d.objid AND d.classid = 'pg_rewrite'::regclass
            JOIN pg_class v ON v.oid = r.ev_class
            JOIN pg_namespace n ON n.oid = v.relnamespace
            WHERE d.refclassid = 'pg_class'::regclass AND d.refobjid = $1::regclass
              AND v.oid <> $1::regclass AND v.relkind IN ('v', 'm')
            ORDER BY 1
            "#,
        )
        .bind(table)
        .fetch_all(&mut *conn)
        .await?;
        for (view, materialized, invoker) in views {
            if materialized || !invoker {
                findings.push(Finding::ViewOverTenantTable {
                    table: table.to_owned(),
                    view,
                    materialized,
                });
            }
        }
        // SECURITY DEFINER functions the role may call, owned by a role that
        // bypasses RLS, whose body names the table.
        // The body names the table, and the schema (or the function lives
        // in that schema, or sets a search_path naming it).
        let unquoted = unquote(table);
        let (schema, name) = unquoted.split_once('.').unwrap_or(("public", &unquoted));
        let definers: Vec<(String, String)> = sqlx::query_as(
            r#"
            SELECT p.oid::regprocedure::text, r.rolname::text
            FROM pg_proc p JOIN pg_roles r ON r.oid = p.proowner
            JOIN pg_namespace n ON n.oid = p.pronamespace
            WHERE p.prosecdef AND (r.rolsuper OR r.rolbypassrls)
              AND has_function_privilege(p.oid, 'EXECUTE')
              AND p.prosrc ~* ('\m' || $1 || '\M')
              AND (n.nspname = $3 OR p.prosrc ~* ('\m' || $2 || '\M')
                   OR array_to_string(p.proconfig, ',') ~* ('\m' || $2 || '\M'))
            ORDER BY 1
            "#,
        )
        .bind(regex_escape(name))
        .bind(regex_escape(schema))
        .bind(schema)
        .fetch_all(&mut *conn)
        .await?;
        for (function, owner) in definers {
            findings.push(Finding::DefinerBypassesRls {
                table: table.to_owned(),
                function,
                owner,
            });
        }
        // Foreign keys (from any table) into this one that do not pair the
        // tenant column with the tenant column.
        let keys: Vec<(String, String)> = sqlx::query_as(
            r#"
            SELECT format('%I.%I', n.nspname, r.relname), quote_ident(c.conname)
            FROM pg_constraint c
            JOIN pg_class r ON r.oid = c.conrelid
            JOIN pg_namespace n ON n.oid = r.relnamespace
            WHERE c.contype = 'f' AND c.confrelid = $1::regclass
              AND NOT EXISTS (
                SELECT 1 FROM unnest(c.conkey, c.confkey) AS k(fk, pk)
                JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.fk
                JOIN pg_attribute b ON b.attrelid = c.confrelid AND b.attnum = k.pk
                WHERE a.attname = $2 AND b.attname = $2)
            ORDER BY 1, 2
            "#,
        )
        .bind(table)
        .bind(&self.column)
        .fetch_all(&mut *conn)
        .await?;
        for (referencing, constraint) in keys {
            findings.push(Finding::ForeignKeyWithoutTenant {
                table: table.to_owned(),
                referencing,
                constraint,
            });
        }
        Ok(())
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

/// The tenant predicate as PostgreSQL prints a policy expression back
/// (`pg_get_expr`) for a policy made by [`tenancy_core::rls::TenantTable`].
fn sealed_expr(column: &str) -> String {
    format!(
        "({} = ( SELECT tenancy.tenant() AS tenant))",
        pg_ident(column)
    )
}

/// An identifier as PostgreSQL prints it: bare when it is lower case,
/// quoted otherwise.
fn pg_ident(ident: &str) -> String {
    let bare = ident
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
        && ident
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if bare {
        ident.to_owned()
    } else {
        tenancy_core::rls::quote_ident(ident)
    }
}

/// Escapes regular-expression metacharacters (for a table name in `~*`).
fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if !c.is_ascii_alphanumeric() && c != '_' {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// `"a"."b"` → `a.b` for comparing with configured names.
fn unquote(qualified: &str) -> String {
    qualified.replace('"', "")
}
