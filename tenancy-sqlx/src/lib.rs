#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

pub mod audit;
mod audit_log;
pub mod backup;
mod db;
mod error;
mod health;
mod invite;
mod keys;
pub mod migrate;
#[cfg(feature = "calendar")]
mod monthly;
mod notify;
pub mod outbox;
mod privileged;
mod provision;
mod quota;
pub mod relocate;
pub mod rls;
mod route;
mod session;
mod settings;
mod signin;
#[cfg(feature = "sqlite")]
pub mod sqlite;
mod store;
pub mod tenant_migrate;

pub use audit_log::{ActivityLine, ArchiveRun, AuditPage, AuditQuery, PgAuditLog};
pub use db::{PoolHygiene, TENANT_SETTING, TenantDb, TenantTx};
pub use error::DbError;
pub use health::DatabaseProbe;
pub use invite::PgInvitationStore;
pub use keys::PgKeyStore;
#[cfg(feature = "calendar")]
pub use monthly::PgMonthlyUsage;
pub use notify::{
    InvalidationListener, KEY_CHANGED_CHANNEL, KeyInvalidationListener, TENANT_CHANGED_CHANNEL,
};
pub use outbox::PgOutbox;
pub use privileged::{CrossTenantAccess, PrivilegedDb};
pub use provision::{Deprovisioner, ExportReport, PgProvisioningLog, PurgeReport};
pub use quota::PgRateLimiter;
pub use route::DatabaseRouter;
pub use session::PgSessionEpochs;
pub use settings::PgSettingsStore;
pub use signin::PgAttempts;
pub use store::{PgMembershipStore, PgTenantStore};
pub use tenancy_core::rls::SealKey;
