//! Row-level security DDL for tenant tables.
//!
//! The statements come from [`tenancy_core::rls`] (shared with every
//! PostgreSQL data path); [`ApplyTenantTable::apply`] runs them with sqlx.
//! They produce the shape [`crate::audit`] checks for:
//!
//! 1. `tenant_id` is `NOT NULL`;
//! 2. row-level security is enabled **and forced** (so the owner is bound too);
//! 3. one policy for **all** commands with both `USING` and `WITH CHECK` on
//!    `tenant_id = (SELECT tenancy.tenant())` — the sealed tenant (see
//!    [`tenancy_core::rls`]), never the raw setting;
//! 4. `SELECT, INSERT, UPDATE, DELETE` for the application role, nothing more;
//! 5. an index leading with `tenant_id`.
//!
//! With no tenant set, the predicate is `tenant_id = NULL`: no row is
//! visible and no row can be written. Isolation fails closed.
//!
//! ```no_run
//! use tenancy_sqlx::rls::{ApplyTenantTable, TenantTable};
//!
//! # async fn f(conn: &mut sqlx::PgConnection) -> Result<(), tenancy_sqlx::DbError> {
//! TenantTable::new("policies").index_on(["id"]).grant_to("app").apply(conn).await?;
//! # Ok(()) }
//! ```

use async_trait::async_trait;
use sqlx::PgConnection;
pub use tenancy_core::rls::{POLICY_NAME, TenantTable, quote_ident, tenant_predicate};

use crate::DbError;

/// Runs a [`TenantTable`]'s DDL with sqlx.
#[async_trait]
pub trait ApplyTenantTable {
    /// Applies the DDL on `conn` (connected as the table owner), in one transaction.
    async fn apply(&self, conn: &mut PgConnection) -> Result<(), DbError>;

    /// Converts an existing single-tenant table in place, in one
    /// transaction: its rows go to `existing_rows_belong_to`; see
    /// [`TenantTable::conversion_statements`] for the steps.
    async fn convert_from_single_tenant(
        &self,
        conn: &mut PgConnection,
        existing_rows_belong_to: tenancy_core::TenantId,
    ) -> Result<(), DbError>;
}

#[async_trait]
impl ApplyTenantTable for TenantTable {
    async fn apply(&self, conn: &mut PgConnection) -> Result<(), DbError> {
        run_in_tx(conn, self.statements()).await
    }

    async fn convert_from_single_tenant(
        &self,
        conn: &mut PgConnection,
        existing_rows_belong_to: tenancy_core::TenantId,
    ) -> Result<(), DbError> {
        run_in_tx(conn, self.conversion_statements(existing_rows_belong_to)).await
    }
}

async fn run_in_tx(conn: &mut PgConnection, statements: Vec<String>) -> Result<(), DbError> {
    use sqlx::Connection;
    let mut tx = conn.begin().await?;
    for statement in statements {
        sqlx::query(&statement).execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(())
}
