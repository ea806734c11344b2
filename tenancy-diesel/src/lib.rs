#![doc = include_str!("../README.md")]
//!
//! # Features
//! - `r2d2` (default): [`TenantPool`] over `diesel::r2d2` (`PgConnection`,
//!   links libpq).
//! - `async`: [`AsyncTenantPool`] over diesel-async's deadpool pool
//!   (`AsyncPgConnection`, pure Rust, no libpq).
#![forbid(unsafe_code)]

#[cfg(feature = "async")]
mod asynchronous;
pub mod dsl;
mod error;
pub mod rls;
#[cfg(feature = "r2d2")]
mod sync;

#[cfg(feature = "async")]
pub use asynchronous::{AsyncPgPool, AsyncTenantPool, TxFn};
#[cfg(feature = "async")]
pub use diesel_async;
pub use error::Error;
#[cfg(feature = "r2d2")]
pub use sync::{PgPool, TenantPool};

/// Whether `e` means the server connection is gone (worth one retry of
/// `BEGIN` on another pooled connection).
#[cfg(any(feature = "r2d2", feature = "async"))]
fn is_closed_connection(e: &diesel::result::Error) -> bool {
    matches!(
        e,
        diesel::result::Error::DatabaseError(
            diesel::result::DatabaseErrorKind::ClosedConnection,
            _
        ) | diesel::result::Error::BrokenTransactionManager
    )
}
