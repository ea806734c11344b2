//! The system schema (`tenancy.tenants`, `tenancy.tenant_domains`,
//! `tenancy.memberships`) as sqlx migrations shipped inside this crate.
//!
//! The migrations run with `search_path = tenancy`, so their ledger
//! (`tenancy._sqlx_migrations`) never mixes with your application's own
//! sqlx migrations in `public`.

use sqlx::migrate::Migrator;
use sqlx::{Executor, PgConnection};

use crate::DbError;
use crate::rls::quote_ident;
use tenancy_core::rls::SealKey;

/// Grants run in one transaction holding the migration lock: concurrent
/// GRANTs on the same schema would fail with "tuple concurrently updated".
const LOCKED: &str = "BEGIN; SELECT pg_advisory_xact_lock(hashtext('tenancy.migrate')); ";

/// The embedded system-schema migrations.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// Applies the system schema. Connect as the schema owner.
///
/// Use a dedicated connection: `search_path` is changed for the duration of
/// the call and reset before it returns, even on error.
///
/// ```no_run
/// # async fn example() -> Result<(), tenancy_sqlx::DbError> {
/// use sqlx::Connection;
/// let mut owner = sqlx::PgConnection::connect("postgres://owner@localhost/app").await?;
/// tenancy_sqlx::migrate::run(&mut owner).await?;
/// tenancy_sqlx::migrate::grant_system_read(&mut owner, "app").await?;
/// # Ok(()) }
/// ```
pub async fn run(conn: &mut PgConnection) -> Result<(), DbError> {
    // Serialise concurrent runs (several instances starting at once) before
    // anything is created; sqlx's own lock is only taken inside the migrator.
    conn.execute("SELECT pg_advisory_lock(hashtext('tenancy.migrate'))")
        .await?;
    let result = async {
        conn.execute("CREATE SCHEMA IF NOT EXISTS tenancy; SET search_path TO tenancy")
            .await?;
        // The sealed binding first: the migrations' policies call tenancy.tenant().
        sqlx::raw_sql(tenancy_core::rls::SEAL_SQL)
            .execute(&mut *conn)
            .await?;
        MIGRATOR.run_direct(&mut *conn).await?;
        Ok::<_, DbError>(())
    }
    .await;
    let reset = conn
        .execute("RESET search_path; SELECT pg_advisory_unlock(hashtext('tenancy.migrate'))")
        .await;
    result?;
    reset?;
    Ok(())
}

/// Installs only the sealed binding ([`tenancy_core::rls::SEAL_SQL`]) and
/// makes `key` its seal key — for a database that must accept the same
/// proofs as another one (a tenant database or its template, served through
/// [`crate::DatabaseRouter`] by the same [`crate::TenantDb`]). Connect as
/// the owner of that database's tenant tables.
pub async fn install_seal(conn: &mut PgConnection, key: &SealKey) -> Result<(), DbError> {
    sqlx::raw_sql(tenancy_core::rls::SEAL_SQL)
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "INSERT INTO tenancy.seal_key (id, key, ipad, opad) VALUES (true, $1, '', '') \
         ON CONFLICT (id) DO UPDATE SET key = EXCLUDED.key",
    )
    .bind(key.expose_bytes().as_slice())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Reads the database's seal key (generated when the sealed binding was
/// installed). Connect as the owner: the application role cannot read it.
/// Give it to [`crate::TenantDb::new`]; keep it like a password.
///
/// ```no_run
/// # async fn example() -> Result<(), tenancy_sqlx::DbError> {
/// use sqlx::Connection;
/// let mut owner = sqlx::PgConnection::connect("postgres://owner@localhost/app").await?;
/// tenancy_sqlx::migrate::run(&mut owner).await?;
/// let seal = tenancy_sqlx::migrate::seal_key(&mut owner).await?;
/// let db = tenancy_sqlx::TenantDb::connect("postgres://app@localhost/app", seal).await?;
/// # Ok(()) }
/// ```
pub async fn seal_key(conn: &mut PgConnection) -> Result<SealKey, DbError> {
    let bytes: Vec<u8> = sqlx::query_scalar("SELECT key FROM tenancy.seal_key WHERE id")
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| {
            DbError::Seal("no seal key in tenancy.seal_key: run migrate::run first".into())
        })?;
    SealKey::from_slice(&bytes).map_err(|e| DbError::InvalidData {
        what: "tenancy.seal_key.key",
        reason: e.to_string(),
    })
}

/// Lets `role` — the request-serving application role — read the system
/// schema (what `PgTenantStore` and `PgMembershipStore` need to resolve
/// tenants and memberships) and keep its tenants' quota state (those tables
/// are tenant rows under row-level security).
pub async fn grant_system_read(conn: &mut PgConnection, role: &str) -> Result<(), DbError> {
    let role = quote_ident(role);
    conn.execute(
        format!(
            "{LOCKED}GRANT USAGE ON SCHEMA tenancy TO {role}; \
             GRANT SELECT ON tenancy.tenants, tenancy.tenant_domains, tenancy.memberships TO {role}; \
             GRANT SELECT, INSERT, UPDATE ON tenancy.quota_usage, tenancy.quota_rate, \
                   tenancy.quota_records, tenancy.quota_thresholds, tenancy.tenant_keys, \
                   tenancy.monthly_usage TO {role}; \
             GRANT SELECT, INSERT, UPDATE, DELETE ON tenancy.tenant_settings TO {role}; \
             GRANT SELECT, INSERT ON tenancy.audit_log TO {role}; \
             GRANT SELECT ON tenancy.audit_checkpoints TO {role}; \
             GRANT INSERT (id, tenant_id, channel, topic, payload) ON tenancy.outbox TO {role}; \
             GRANT SELECT, INSERT, UPDATE, DELETE ON tenancy.invitations TO {role}; \
             GRANT SELECT, INSERT, UPDATE, DELETE ON tenancy.signin_attempts TO {role}; \
             GRANT SELECT ON tenancy.session_epochs TO {role}; \
             GRANT EXECUTE ON FUNCTION tenancy.bump_session_epoch(text) TO {role}; COMMIT"
        )
        .as_str(),
    )
    .await?;
    Ok(())
}

/// Lets `role` also create and change tenants and memberships (an
/// operations or provisioning role — not the request-serving role).
pub async fn grant_system_write(conn: &mut PgConnection, role: &str) -> Result<(), DbError> {
    grant_system_read(conn, role).await?;
    let role = quote_ident(role);
    conn.execute(
        format!(
            "{LOCKED}GRANT INSERT, UPDATE, DELETE ON tenancy.tenants, tenancy.tenant_domains, \
             tenancy.memberships TO {role}; \
             GRANT SELECT, INSERT, UPDATE ON tenancy.provisioning_log TO {role}; COMMIT"
        )
        .as_str(),
    )
    .await?;
    Ok(())
}

/// Lets `role` delete tenant rows of the library's tables (settings, quota
/// state) — what [`crate::Deprovisioner::purge`] needs besides DELETE on the
/// application's own tenant tables. Row-level security still confines it to
/// the tenant of each transaction.
pub async fn grant_purge(conn: &mut PgConnection, role: &str) -> Result<(), DbError> {
    let role = quote_ident(role);
    conn.execute(
        format!(
            "{LOCKED}GRANT DELETE ON tenancy.tenant_settings, tenancy.quota_usage, tenancy.quota_rate, \
             tenancy.quota_records, tenancy.quota_thresholds, tenancy.monthly_usage TO {role}; COMMIT"
        )
        .as_str(),
    )
    .await?;
    Ok(())
}
