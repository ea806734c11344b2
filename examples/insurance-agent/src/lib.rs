//! # insurance-agent
//!
//! The reference application of tenancy-rs: a multi-tenant back end for
//! insurance providers, independent agents and agent networks, built the way
//! the library means to be used.
//!
//! - Tenants are resolved from the session token by the tenancy pipeline
//!   (`tenancy-axum`), which also checks their status, the caller's
//!   membership, the plan and the hourly API quota.
//! - Tenant data is reached only through [`data::Data::begin`] (one SQLite
//!   file per tenant by default).
//! - Inside a tenant, agents see their own customers, managers their team's,
//!   tenant admins everything; shared records are read-only to others.
//!
//! Run it with `cargo run -p insurance-agent`; see the README.
#![forbid(unsafe_code)]

pub mod api;
pub mod app;
pub mod auth;
pub mod backup;
pub mod billing;
pub mod data;
pub mod domain;
pub mod drain;
pub mod id;
pub mod observe;
pub mod ops;
pub mod postgres;
pub mod seed;
pub mod sensitive;
pub mod server;
pub mod subject;
pub mod validate;
