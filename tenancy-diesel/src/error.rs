use tenancy_core::TenantMismatch;

/// What went wrong in a tenant-scoped diesel operation.
///
/// Closures given to `transaction_for` return any error type `E` that
/// implements `From<Error>`; `Error` itself converts from diesel's errors,
/// so `?` works on queries inside the closure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No connection could be checked out of the pool.
    #[error(
        "could not get a database connection from the pool: {0}; check the database URL, that the server is up and the pool size"
    )]
    Pool(String),
    /// The tenant transaction could not be opened (`BEGIN; CALL
    /// tenancy.seal(...)`); the connection was discarded.
    #[error(
        "could not open the tenant transaction: {0}; the connection was discarded — retry the operation, \
         and if tenancy.seal refused it, check the seal key and that rls::SEAL_SQL is installed"
    )]
    Begin(#[source] diesel::result::Error),
    /// A query, the commit or the rollback failed.
    #[error("database error: {0}")]
    Database(#[from] diesel::result::Error),
    /// A row to be written belongs to another tenant (write guard).
    #[error("{0}; refusing to write another tenant's row")]
    Mismatch(#[from] TenantMismatch),
}

impl Error {
    /// The HTTP status this error should become: 403 for a write-guard
    /// mismatch, 503 when no connection was available, 500 otherwise.
    ///
    /// ```
    /// use tenancy_diesel::Error;
    ///
    /// assert_eq!(Error::Pool("timed out".into()).status(), 503);
    /// ```
    pub fn status(&self) -> u16 {
        match self {
            Self::Mismatch(_) => 403,
            Self::Pool(_) => 503,
            Self::Begin(_) | Self::Database(_) => 500,
        }
    }
}
