//! [`DbError`]: what can go wrong in the data layer.

use tenancy_core::{TenantError, TenantMismatch};

use crate::audit::AuditReport;

/// An error from `tenancy-sqlx`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DbError {
    /// The database or driver failed.
    #[error("database error: {0}")]
    Sqlx(#[from] sqlx::Error),
    /// A migration failed.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// An entity of another tenant was about to be written (write guard).
    #[error(transparent)]
    Mismatch(#[from] TenantMismatch),
    /// A pooled connection carried a tenant setting outside a transaction.
    /// The connection was discarded; this indicates session-level
    /// `SET app.tenant_id` somewhere in application code.
    #[error(
        "a pooled connection carried tenant setting {found:?} outside a transaction: \
         never SET app.tenant_id at session level; use TenantDb::begin"
    )]
    LeakedSetting {
        /// The value found.
        found: String,
    },
    /// The isolation audit found problems and strict mode refused to start.
    #[error("isolation audit failed:\n{0}")]
    Audit(Box<AuditReport>),
    /// A stored value could not be turned into a core type.
    #[error("invalid stored data in {what}: {reason}")]
    InvalidData {
        /// Which value.
        what: &'static str,
        /// Why it is invalid.
        reason: String,
    },
    /// A tenant migration is invalid, was edited after being applied, or
    /// failed in a tenant's schema (which was left at its previous version).
    #[error("tenant migration {version}: {reason}")]
    TenantMigration {
        /// The migration's version (0 when the list itself is invalid).
        version: i64,
        /// What went wrong and what to do.
        reason: String,
    },
    /// The tenant's placement cannot be served here (an unchecked schema
    /// name, or a model this database handle does not route).
    #[error("tenant {tenant} cannot be opened: {reason}")]
    Placement {
        /// The tenant.
        tenant: tenancy_core::TenantId,
        /// Why.
        reason: String,
    },
    /// The tenant's placement changed (it was moved) after its context was
    /// loaded; the transaction was refused before touching the old place.
    /// Reload the tenant and retry. HTTP: 503 with a short `Retry-After`.
    #[error(
        "tenant {tenant} was moved to another placement while this request was in flight: \
         reload the tenant and retry"
    )]
    TenantMoved {
        /// The tenant.
        tenant: tenancy_core::TenantId,
    },
    /// Moving a tenant failed verification or could not proceed; the
    /// placement was not switched.
    #[error("tenant move: {0}")]
    Relocation(String),
    /// The database refused to seal the tenant transaction: the seal key is
    /// not this database's, the proof is stale (clock skew), the sealed
    /// binding is not installed, or something other than the library tried
    /// to seal. Nothing was read or written. HTTP: 500.
    #[error("tenant transaction not sealed: {0}")]
    Seal(String),
    /// A cross-tenant capability was requested without a reason.
    #[error("cross-tenant access needs a non-empty reason for the audit trail")]
    MissingReason,
    /// A lifecycle step of (de)provisioning was refused or failed.
    #[error("lifecycle: {0}")]
    Lifecycle(String),
    /// An audit event that must accompany the operation could not be
    /// recorded; the operation did not proceed past this point.
    #[error("audit event not recorded: {0}")]
    AuditLog(String),
    /// Writing an export file failed.
    #[error("export failed: {0}")]
    Export(String),
    /// A write would break a uniqueness rule (slug, domain, id).
    #[error("conflict: {0}")]
    Conflict(String),
    /// Archiving the audit log failed (see the message); nothing was pruned.
    #[error(transparent)]
    Archive(#[from] tenancy_core::audit::archive::ArchiveError),
}

impl DbError {
    /// The HTTP status a web handler should answer with: 403 for a write
    /// guard mismatch, 409 for a conflict, 503 for a tenant that moved while
    /// the request was in flight or a database that is unavailable
    /// ([`DbError::is_unavailable`]; retry shortly), 500 otherwise.
    ///
    /// ```
    /// let e = tenancy_sqlx::DbError::TenantMoved { tenant: tenancy_core::TenantId::new_v4() };
    /// assert_eq!(e.status(), 503);
    /// ```
    pub fn status(&self) -> u16 {
        match self {
            DbError::Mismatch(_) => 403,
            DbError::Conflict(_) => 409,
            DbError::TenantMoved { .. } => 503,
            e if e.is_unavailable() => 503,
            _ => 500,
        }
    }

    /// Whether the database could not be reached or dropped the work
    /// (connection refused or lost, pool exhausted or closed, server shutting
    /// down or not accepting connections yet, too many connections): the
    /// same request may succeed a moment later. Web handlers answer 503
    /// with `Retry-After`. A transaction that failed this way did not commit.
    ///
    /// ```
    /// let e = tenancy_sqlx::DbError::Sqlx(sqlx::Error::PoolTimedOut);
    /// assert!(e.is_unavailable());
    /// assert_eq!(e.status(), 503);
    /// ```
    pub fn is_unavailable(&self) -> bool {
        let DbError::Sqlx(e) = self else {
            return false;
        };
        match e {
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => true,
            sqlx::Error::Database(d) => d.code().is_some_and(|code| {
                // 08: connection exception; 57P01-03: admin/crash shutdown,
                // cannot connect now; 53300: too many connections.
                code.starts_with("08") || matches!(&*code, "57P01" | "57P02" | "57P03" | "53300")
            }),
            _ => false,
        }
    }
}

impl From<DbError> for TenantError {
    /// Mismatches keep their meaning (403); everything else is a store failure (500).
    fn from(e: DbError) -> Self {
        match e {
            DbError::Mismatch(m) => TenantError::Mismatch(m),
            other => TenantError::Store(tenancy_core::StoreError::new(other)),
        }
    }
}
