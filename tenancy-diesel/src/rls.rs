//! Row-level security for diesel-managed schemas.
//!
//! The statements are [`tenancy_core::rls`]'s, the same tenancy-sqlx
//! applies, so tenancy-sqlx's isolation audit passes on a schema made with
//! them. Run them from a diesel migration (`up.sql` can hold
//! [`TenantTable::ddl`]'s output) or at set-up with `apply` (feature
//! `r2d2`) or `apply_async` (feature `async`). The policies call
//! `tenancy.tenant()`: install [`SEAL_SQL`] first (as the owner), and give
//! the pool the key it generated (`SELECT encode(key, 'hex') FROM
//! tenancy.seal_key`, read as the owner).
//!
//! ```no_run
//! use diesel::Connection;
//! use tenancy_diesel::rls::{TenantTable, apply};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut owner = diesel::PgConnection::establish("postgres://owner@localhost/app")?;
//! apply(&mut owner, &TenantTable::new("customers").index_on(["id"]).grant_to("app"))?;
//! # Ok(()) }
//! ```

pub use tenancy_core::rls::{
    POLICY_NAME, SEAL_SQL, SealKey, TENANT_SETTING, TenantTable, quote_ident, tenant_predicate,
};

/// Applies `table`'s DDL on `conn` (connected as the table owner) in one
/// transaction.
#[cfg(feature = "r2d2")]
pub fn apply(
    conn: &mut diesel::pg::PgConnection,
    table: &TenantTable,
) -> Result<(), diesel::result::Error> {
    use diesel::Connection;
    use diesel::connection::SimpleConnection;
    conn.transaction(|conn| conn.batch_execute(&table.ddl()))
}

/// [`apply`] on an async connection.
#[cfg(feature = "async")]
pub async fn apply_async(
    conn: &mut diesel_async::AsyncPgConnection,
    table: &TenantTable,
) -> Result<(), diesel::result::Error> {
    use diesel_async::{AsyncConnection, SimpleAsyncConnection};
    let ddl = table.ddl();
    conn.transaction(async |conn| conn.batch_execute(&ddl).await)
        .await
}
