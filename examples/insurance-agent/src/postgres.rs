//! The application's schema on PostgreSQL (row-level isolation): the same
//! tables as a tenant file, shared by every tenant, each with `tenant_id`
//! leading its keys and a forced row-level security policy
//! (`tenancy_core::rls::TenantTable`), plus the `users` table of the
//! control plane (no tenant column: accounts span tenants).
//!
//! Types follow the SQLite schema so the same queries and row types work on
//! both (`crate::on!`): ids `uuid`, money and counts `bigint`, dates `date`,
//! instants `timestamptz`, flags `boolean`, lists `jsonb`.

use tenancy_core::rls::{TenantTable, quote_ident};

/// The tables that carry tenant data, parents first.
pub use crate::data::TENANT_TABLES;

/// DDL creating the application's tables in `schema` at the latest version
/// and isolating them for `app_role` (run as the tables' owner, after
/// `tenancy_sqlx::migrate::run`).
pub fn schema_sql(schema: &str, app_role: &str) -> Vec<String> {
    let mut out = base_sql(schema, app_role);
    for v in 2..=SCHEMA_VERSION {
        out.extend(upgrade_sql(schema, v));
    }
    out
}

/// What version `version` (2 and later) changes, in `schema`.
pub fn upgrade_sql(schema: &str, version: i32) -> Vec<String> {
    let s = quote_ident(schema);
    match version {
        2 => vec![format!(
            "ALTER TABLE {s}.payments ADD COLUMN IF NOT EXISTS confirmed_by text, \
             ADD COLUMN IF NOT EXISTS confirmed_at timestamptz, \
             ADD COLUMN IF NOT EXISTS refunded_by text, \
             ADD COLUMN IF NOT EXISTS refunded_at timestamptz"
        )],
        3 => vec![format!(
            "ALTER TABLE {s}.customers ADD COLUMN IF NOT EXISTS erased_at timestamptz"
        )],
        _ => Vec::new(),
    }
}

/// Version 1 of the schema.
fn base_sql(schema: &str, app_role: &str) -> Vec<String> {
    let s = quote_ident(schema);
    let mut out = vec![
        format!(
            "CREATE TABLE {s}.agents (
                tenant_id uuid NOT NULL, id uuid NOT NULL, user_id text, agent_code text NOT NULL,
                name text NOT NULL, licence_number text NOT NULL, licence_expiry date NOT NULL,
                experience_years bigint NOT NULL DEFAULT 0 CHECK (experience_years >= 0),
                business_name text, regions jsonb NOT NULL DEFAULT '[]', manager_id uuid,
                compliance_status text NOT NULL DEFAULT 'pending', active boolean NOT NULL DEFAULT true,
                created_at timestamptz NOT NULL,
                PRIMARY KEY (tenant_id, id), UNIQUE (tenant_id, agent_code),
                FOREIGN KEY (tenant_id, manager_id) REFERENCES {s}.agents (tenant_id, id))"
        ),
        format!("CREATE UNIQUE INDEX ON {s}.agents (tenant_id, user_id) WHERE user_id IS NOT NULL"),
        format!(
            "CREATE TABLE {s}.customers (
                tenant_id uuid NOT NULL, id uuid NOT NULL, agent_id uuid NOT NULL,
                first_name text NOT NULL, last_name text NOT NULL, date_of_birth date, email text,
                customer_type text NOT NULL, risk_profile text NOT NULL DEFAULT 'medium',
                lifecycle_stage text NOT NULL DEFAULT 'prospect',
                engagement_score bigint NOT NULL DEFAULT 0 CHECK (engagement_score BETWEEN 0 AND 100),
                kyc_status text NOT NULL DEFAULT 'pending', shared boolean NOT NULL DEFAULT false,
                active boolean NOT NULL DEFAULT true, created_at timestamptz NOT NULL,
                phone_enc text, phone_index bytea, pan_enc text, pan_index bytea, aadhaar_enc text,
                bank_account_enc text, medical_history_enc text,
                PRIMARY KEY (tenant_id, id),
                FOREIGN KEY (tenant_id, agent_id) REFERENCES {s}.agents (tenant_id, id))"
        ),
        format!("CREATE INDEX ON {s}.customers (tenant_id, pan_index)"),
        format!("CREATE INDEX ON {s}.customers (tenant_id, phone_index)"),
        format!(
            "CREATE TABLE {s}.policies (
                tenant_id uuid NOT NULL, id uuid NOT NULL, policy_number text NOT NULL,
                product text NOT NULL, customer_id uuid NOT NULL, agent_id uuid NOT NULL,
                sum_assured_minor bigint NOT NULL CHECK (sum_assured_minor > 0),
                premium_minor bigint NOT NULL CHECK (premium_minor > 0),
                currency text NOT NULL DEFAULT 'INR', premium_frequency text NOT NULL,
                issue_date date, commencement_date date, maturity_date date, next_due_date date,
                status text NOT NULL DEFAULT 'quoted', riders jsonb NOT NULL DEFAULT '[]',
                shared boolean NOT NULL DEFAULT false, active boolean NOT NULL DEFAULT true,
                created_at timestamptz NOT NULL,
                PRIMARY KEY (tenant_id, id), UNIQUE (tenant_id, policy_number),
                FOREIGN KEY (tenant_id, customer_id) REFERENCES {s}.customers (tenant_id, id),
                FOREIGN KEY (tenant_id, agent_id) REFERENCES {s}.agents (tenant_id, id))"
        ),
        format!(
            "CREATE TABLE {s}.payments (
                tenant_id uuid NOT NULL, id uuid NOT NULL, policy_id uuid NOT NULL,
                amount_minor bigint NOT NULL CHECK (amount_minor > 0), currency text NOT NULL DEFAULT 'INR',
                due_date date NOT NULL, paid_date date, method text,
                status text NOT NULL DEFAULT 'pending', transaction_ref text,
                created_at timestamptz NOT NULL,
                PRIMARY KEY (tenant_id, id), UNIQUE (tenant_id, transaction_ref),
                FOREIGN KEY (tenant_id, policy_id) REFERENCES {s}.policies (tenant_id, id))"
        ),
        format!(
            "CREATE TABLE {s}.commissions (
                tenant_id uuid NOT NULL, id uuid NOT NULL, payment_id uuid NOT NULL,
                policy_id uuid NOT NULL, agent_id uuid NOT NULL, kind text NOT NULL,
                rate_bp bigint NOT NULL CHECK (rate_bp BETWEEN 0 AND 10000),
                amount_minor bigint NOT NULL CHECK (amount_minor >= 0),
                currency text NOT NULL DEFAULT 'INR', status text NOT NULL DEFAULT 'pending',
                created_at timestamptz NOT NULL,
                PRIMARY KEY (tenant_id, id), UNIQUE (tenant_id, payment_id, kind),
                FOREIGN KEY (tenant_id, payment_id) REFERENCES {s}.payments (tenant_id, id))"
        ),
        format!(
            "CREATE TABLE {s}.users (
                id text PRIMARY KEY, email text NOT NULL UNIQUE, name text NOT NULL,
                password_hash text NOT NULL, created_at timestamptz NOT NULL)"
        ),
        user_totp_sql(schema),
    ];
    for t in TENANT_TABLES {
        out.push(tenant_table(schema, t, app_role).ddl());
    }
    out.extend(grants_sql(schema, app_role));
    out
}

fn tenant_table(schema: &str, table: &str, app_role: &str) -> TenantTable {
    TenantTable::new(table)
        .schema(schema)
        .index_on(["id"])
        .grant_to(app_role)
}

/// The TOTP enrolments of accounts (added after schema version 1: created
/// if missing on every start). `last_step` is the time step of the last code
/// accepted (-1 while the enrolment is unconfirmed): a code is never
/// accepted twice.
pub fn user_totp_sql(schema: &str) -> String {
    let s = quote_ident(schema);
    format!(
        "CREATE TABLE IF NOT EXISTS {s}.user_totp (
            user_id text PRIMARY KEY REFERENCES {s}.users (id) ON DELETE CASCADE,
            secret bytea NOT NULL, last_step bigint NOT NULL DEFAULT -1)"
    )
}

/// What `app_role` is granted on the application's tables in `schema`
/// (idempotent; part of [`schema_sql`], and repeated by [`apply_schema`] on
/// every start so the application role may change between runs).
pub fn grants_sql(schema: &str, app_role: &str) -> Vec<String> {
    let (s, role) = (quote_ident(schema), quote_ident(app_role));
    let mut out = vec![
        format!("GRANT USAGE ON SCHEMA {s} TO {role}"),
        format!("GRANT SELECT, INSERT, UPDATE ON {s}.users TO {role}"),
        format!("GRANT SELECT, INSERT, UPDATE ON {s}.user_totp TO {role}"),
    ];
    for t in TENANT_TABLES {
        out.extend(
            tenant_table(schema, t, app_role)
                .statements()
                .into_iter()
                .filter(|stmt| stmt.starts_with("GRANT")),
        );
    }
    out
}

/// The application schema's version: 1 is the base schema, each later
/// version one step of [`upgrade_sql`].
pub const SCHEMA_VERSION: i32 = 3;

/// Applies the system schema (`tenancy_sqlx::migrate`) and the application
/// schema in `public` — as the owner, serialised between instances starting
/// at once, each version once (ledger `public.app_schema_versions`) — and
/// grants `app_role` what it needs on every run ([`grants_sql`]), so the
/// application role may change between runs. Returns whether anything new
/// was applied.
pub async fn apply_schema(
    owner: &sqlx::PgPool,
    app_role: &str,
) -> Result<bool, tenancy_sqlx::DbError> {
    let mut conn = owner.acquire().await?;
    tenancy_sqlx::migrate::run(&mut conn).await?;
    tenancy_sqlx::migrate::grant_system_read(&mut conn, app_role).await?;
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('insurance-agent.schema'))")
        .execute(&mut *tx)
        .await?;
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS public.app_schema_versions (
            version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())",
    )
    .execute(&mut *tx)
    .await?;
    let current: Option<i32> =
        sqlx::query_scalar("SELECT max(version) FROM public.app_schema_versions")
            .fetch_one(&mut *tx)
            .await?;
    let current = current.unwrap_or(0);
    let applied = current < SCHEMA_VERSION;
    for version in (current + 1)..=SCHEMA_VERSION {
        let statements = if version == 1 {
            base_sql("public", app_role)
        } else {
            upgrade_sql("public", version)
        };
        for stmt in statements {
            sqlx::raw_sql(&stmt).execute(&mut *tx).await?;
        }
        sqlx::query("INSERT INTO public.app_schema_versions (version) VALUES ($1)")
            .bind(version)
            .execute(&mut *tx)
            .await?;
    }
    sqlx::raw_sql(&user_totp_sql("public"))
        .execute(&mut *tx)
        .await?;
    for stmt in grants_sql("public", app_role) {
        sqlx::raw_sql(&stmt).execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(applied)
}
