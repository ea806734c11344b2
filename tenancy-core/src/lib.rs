#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_auto_cfg))]

pub mod audit;
mod authorize;
pub mod backup;
pub mod cache;
pub mod client;
mod context;
pub mod crypto;
pub mod destruction;
mod domain;
mod error;
pub mod flags;
pub mod gate;
pub mod health;
mod id;
pub mod identity;
pub mod invite;
pub mod job;
pub mod lifecycle;
pub mod maintenance;
mod membership;
#[cfg(feature = "oidc")]
pub mod oidc;
pub mod outbox;
pub mod ownership;
mod permission;
pub mod pipeline;
pub mod plan;
pub mod problem;
pub mod provision;
pub mod quota;
pub mod resolve;
pub mod rls;
mod scoped;
pub mod session;
pub mod settings;
pub mod signin;
pub mod store;
#[cfg(feature = "metrics")]
pub mod telemetry;
mod tenant;
pub mod webhook;

pub use authorize::{Actor, Authorizer, HierarchyRule, authorize};
pub use context::{
    InTenant, RequestMeta, TenantContext, TenantFutureExt, current, scope, scope_sync, spawn,
    spawn_current, try_current,
};
pub use domain::{DomainName, HostError, MAX_DOMAIN_LEN};
pub use error::{Result, StoreError, TenantError};
pub use id::{MAX_SLUG_LEN, MAX_TENANT_ID_LEN, SlugError, TenantId, TenantIdError, TenantSlug};
pub use membership::{
    InMemoryMembershipStore, Membership, MembershipStatus, MembershipStore, MembershipWriter,
    UserId,
};
pub use permission::{Permission, PermissionError, Role, RolePermissions};
pub use scoped::{TenantMismatch, TenantScoped};
pub use tenant::{Placement, PlacementError, PlanId, Tenant, TenantKind, TenantStatus};

/// The workspace README's example, compiled and run as a doc test so that it
/// stays true to the code.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct WorkspaceReadme;
