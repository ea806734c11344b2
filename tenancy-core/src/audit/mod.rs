//! Audit events: who did what to which resource of which tenant, with
//! compliance flags, tamper-evident hash chains and sinks that never drop
//! an event silently.
//!
//! - [`AuditEvent`]: tenant, actor (user or system), action, resource,
//!   details, client address and agent, time, and the [`ComplianceFlags`]
//!   that [`ComplianceRules`] compute (PII access, financial data, bulk
//!   export, high risk).
//! - [`AuditSink`]: where events go — [`TracingSink`], [`MemorySink`], the
//!   PostgreSQL sink in tenancy-sqlx — and [`AuditQueue`], a bounded queue
//!   in front of any sink with backpressure and a drop counter.
//! - [`chain`]: the per-tenant hash chain and its verification.
//!
//! ```
//! use tenancy_core::audit::{Action, AuditEvent, ComplianceRules};
//! use tenancy_core::TenantId;
//!
//! let rules = ComplianceRules::default()
//!     .pii_field("customers.pan")
//!     .financial_resource("payments")
//!     .bulk_threshold(1_000);
//! let event = AuditEvent::system(TenantId::new_v4(), "nightly-export", Action::EXPORT, "customers")
//!     .with_fields(["customers.name", "customers.pan"])
//!     .with_record_count(5_000)
//!     .classify(&rules);
//! assert!(event.flags.pii && event.flags.bulk_export && event.flags.high_risk);
//! assert!(!event.flags.financial);
//! ```

use std::collections::BTreeSet;
use std::net::IpAddr;

use async_trait::async_trait;
use chrono::{DateTime, SubsecRound, Utc};
use serde::{Deserialize, Serialize};

use crate::{TenantContext, TenantId};

pub mod archive;
pub mod chain;
mod queue;

pub use queue::{AuditQueue, QueueStats};

/// Conventional action names. Any non-empty string is accepted; these are
/// the ones [`ComplianceRules`] understand by default.
#[derive(Debug, Clone, Copy)]
pub struct Action;

impl Action {
    /// Reading records.
    pub const READ: &'static str = "read";
    /// Exporting records out of the system.
    pub const EXPORT: &'static str = "export";
    /// Creating a record.
    pub const CREATE: &'static str = "create";
    /// Changing a record.
    pub const UPDATE: &'static str = "update";
    /// Deleting a record (soft or hard).
    pub const DELETE: &'static str = "delete";
    /// Deleting many records at once.
    pub const BULK_DELETE: &'static str = "bulk_delete";
    /// Signing in.
    pub const LOGIN: &'static str = "login";
    /// A sign-in refused: wrong credentials, or throttled.
    pub const LOGIN_FAILED: &'static str = "login_failed";
    /// A session ended (sign-out, or revoked by an administrator).
    pub const LOGOUT: &'static str = "logout";
    /// A refused sign-in or a refused request.
    pub const DENIED: &'static str = "denied";
}

/// Who acted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "id", rename_all = "snake_case")]
#[non_exhaustive]
pub enum AuditActor {
    /// A user, by id.
    User(String),
    /// The system: a job, a worker, the library itself (e.g. `keyring`).
    System(String),
}

impl AuditActor {
    /// `"user"` or `"system"`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::User(_) => "user",
            Self::System(_) => "system",
        }
    }

    /// The user id or system component name.
    pub fn id(&self) -> &str {
        match self {
            Self::User(id) | Self::System(id) => id,
        }
    }
}

/// Compliance classification of an event.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ComplianceFlags {
    /// A read or export touching a configured PII field.
    pub pii: bool,
    /// The resource holds financial data.
    pub financial: bool,
    /// An export of more records than the bulk threshold.
    pub bulk_export: bool,
    /// A delete, a bulk delete, a sensitive modification, or PII in bulk.
    pub high_risk: bool,
}

impl ComplianceFlags {
    /// The names of the set flags, in a fixed order (`pii`, `financial`,
    /// `bulk_export`, `high_risk`), as stored.
    pub fn names(&self) -> Vec<&'static str> {
        [
            (self.pii, "pii"),
            (self.financial, "financial"),
            (self.bulk_export, "bulk_export"),
            (self.high_risk, "high_risk"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect()
    }

    /// Flags from their stored names (unknown names are ignored).
    pub fn from_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Self {
        let mut f = Self::default();
        for n in names {
            match n {
                "pii" => f.pii = true,
                "financial" => f.financial = true,
                "bulk_export" => f.bulk_export = true,
                "high_risk" => f.high_risk = true,
                _ => {}
            }
        }
        f
    }
}

/// The rules that compute [`ComplianceFlags`].
///
/// - **pii**: action is a read or an export and a touched field is a PII field;
/// - **financial**: the resource type is a financial resource;
/// - **bulk_export**: an export of more than `bulk_threshold` records;
/// - **high_risk**: a delete or bulk delete; an update touching a sensitive
///   field (PII fields are sensitive); any action on more than
///   `bulk_threshold` records of a destructive kind; or PII together with bulk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComplianceRules {
    pii_fields: BTreeSet<String>,
    sensitive_fields: BTreeSet<String>,
    financial_resources: BTreeSet<String>,
    read_actions: BTreeSet<String>,
    export_actions: BTreeSet<String>,
    delete_actions: BTreeSet<String>,
    bulk_threshold: u64,
}

impl Default for ComplianceRules {
    fn default() -> Self {
        let set = |xs: &[&str]| xs.iter().map(|s| (*s).to_owned()).collect();
        Self {
            pii_fields: BTreeSet::new(),
            sensitive_fields: BTreeSet::new(),
            financial_resources: BTreeSet::new(),
            read_actions: set(&[Action::READ]),
            export_actions: set(&[Action::EXPORT]),
            delete_actions: set(&[Action::DELETE, Action::BULK_DELETE]),
            bulk_threshold: 1_000,
        }
    }
}

impl ComplianceRules {
    /// Marks `table.column` (or any field name the application uses) as PII.
    pub fn pii_field(mut self, field: impl Into<String>) -> Self {
        self.pii_fields.insert(field.into());
        self
    }

    /// Marks a field whose modification is high risk (e.g. `agents.licence_no`).
    pub fn sensitive_field(mut self, field: impl Into<String>) -> Self {
        self.sensitive_fields.insert(field.into());
        self
    }

    /// Marks a resource type as financial (e.g. `payments`).
    pub fn financial_resource(mut self, resource: impl Into<String>) -> Self {
        self.financial_resources.insert(resource.into());
        self
    }

    /// Counts another action name as a read (default: `read`).
    pub fn read_action(mut self, action: impl Into<String>) -> Self {
        self.read_actions.insert(action.into());
        self
    }

    /// Counts another action name as an export (default: `export`).
    pub fn export_action(mut self, action: impl Into<String>) -> Self {
        self.export_actions.insert(action.into());
        self
    }

    /// Counts another action name as a delete (default: `delete`, `bulk_delete`).
    pub fn delete_action(mut self, action: impl Into<String>) -> Self {
        self.delete_actions.insert(action.into());
        self
    }

    /// More records than this in one event is "bulk" (default 1 000).
    pub fn bulk_threshold(mut self, n: u64) -> Self {
        self.bulk_threshold = n;
        self
    }

    /// The flags of `event` under these rules.
    pub fn flags(&self, event: &AuditEvent) -> ComplianceFlags {
        let action = event.action.as_str();
        let reads = self.read_actions.contains(action);
        let exports = self.export_actions.contains(action);
        let deletes = self.delete_actions.contains(action);
        let touches = |set: &BTreeSet<String>| event.fields.iter().any(|f| set.contains(f));
        let bulk = event.record_count.is_some_and(|n| n > self.bulk_threshold);
        let pii = (reads || exports) && touches(&self.pii_fields);
        let sensitive_change = action == Action::UPDATE
            && (touches(&self.sensitive_fields) || touches(&self.pii_fields));
        ComplianceFlags {
            pii,
            financial: self.financial_resources.contains(&event.resource_type),
            bulk_export: exports && bulk,
            high_risk: deletes || sensitive_change || (pii && bulk),
        }
    }
}

/// One audit event. Build with [`AuditEvent::user`], [`AuditEvent::system`]
/// or [`AuditEvent::from_context`], then the `with_*` methods and
/// [`AuditEvent::classify`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct AuditEvent {
    /// The tenant the event belongs to.
    pub tenant: TenantId,
    /// Who acted.
    pub actor: AuditActor,
    /// What was done (see [`Action`] for conventional names).
    pub action: String,
    /// The kind of resource (usually the table).
    pub resource_type: String,
    /// The resource's id, when it is one record.
    pub resource_id: Option<String>,
    /// Fields touched (`table.column`), for PII classification.
    pub fields: Vec<String>,
    /// How many records the action covered, when more than one.
    pub record_count: Option<u64>,
    /// Free-form details.
    pub details: serde_json::Value,
    /// The client address.
    pub ip: Option<IpAddr>,
    /// The client's user agent.
    pub user_agent: Option<String>,
    /// When (microsecond precision, as PostgreSQL keeps it).
    pub at: DateTime<Utc>,
    /// Compliance flags (set by [`AuditEvent::classify`]).
    pub flags: ComplianceFlags,
}

impl AuditEvent {
    fn new(tenant: TenantId, actor: AuditActor, action: &str, resource_type: &str) -> Self {
        Self {
            tenant,
            actor,
            action: action.to_owned(),
            resource_type: resource_type.to_owned(),
            resource_id: None,
            fields: Vec::new(),
            record_count: None,
            details: serde_json::Value::Null,
            ip: None,
            user_agent: None,
            at: Utc::now().trunc_subsecs(6),
            flags: ComplianceFlags::default(),
        }
    }

    /// An event by a user.
    pub fn user(tenant: TenantId, user: &str, action: &str, resource_type: &str) -> Self {
        Self::new(
            tenant,
            AuditActor::User(user.to_owned()),
            action,
            resource_type,
        )
    }

    /// An event by the system (a job, a worker, the library).
    pub fn system(tenant: TenantId, component: &str, action: &str, resource_type: &str) -> Self {
        Self::new(
            tenant,
            AuditActor::System(component.to_owned()),
            action,
            resource_type,
        )
    }

    /// An event in the current request: tenant, acting user (or `system:
    /// anonymous`), client address and agent come from `ctx`.
    pub fn from_context(ctx: &TenantContext, action: &str, resource_type: &str) -> Self {
        let actor = ctx.actor().map_or_else(
            || AuditActor::System("anonymous".to_owned()),
            |a| AuditActor::User(a.user_id.as_str().to_owned()),
        );
        let mut e = Self::new(ctx.tenant_id(), actor, action, resource_type);
        e.ip = ctx.request().ip;
        e.user_agent = ctx.request().user_agent.clone();
        if let Some(op) = ctx.actor().and_then(|a| a.impersonator.as_ref()) {
            e.details = serde_json::json!({ "impersonated_by": &**op });
        }
        e
    }

    /// Sets the resource id.
    pub fn with_resource_id(mut self, id: impl std::fmt::Display) -> Self {
        self.resource_id = Some(id.to_string());
        self
    }

    /// Sets the fields touched.
    pub fn with_fields<I, S>(mut self, fields: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.fields = fields.into_iter().map(Into::into).collect();
        self
    }

    /// Sets how many records the action covered.
    pub fn with_record_count(mut self, n: u64) -> Self {
        self.record_count = Some(n);
        self
    }

    /// Sets the details. Objects are merged into the details already there
    /// (so the `impersonated_by` of [`AuditEvent::from_context`] stays);
    /// anything else replaces them.
    pub fn with_details(mut self, details: serde_json::Value) -> Self {
        match (&mut self.details, details) {
            (serde_json::Value::Object(have), serde_json::Value::Object(more)) => {
                have.extend(more);
            }
            (slot, details) => *slot = details,
        }
        self
    }

    /// Sets the client address.
    pub fn with_ip(mut self, ip: IpAddr) -> Self {
        self.ip = Some(ip);
        self
    }

    /// Sets the user agent.
    pub fn with_user_agent(mut self, agent: impl Into<String>) -> Self {
        self.user_agent = Some(agent.into());
        self
    }

    /// Sets the time (truncated to microseconds).
    pub fn at(mut self, at: DateTime<Utc>) -> Self {
        self.at = at.trunc_subsecs(6);
        self
    }

    /// Computes the compliance flags under `rules`.
    pub fn classify(mut self, rules: &ComplianceRules) -> Self {
        self.flags = rules.flags(&self);
        self
    }

    /// Checks the event is well formed (non-empty action and resource type).
    pub fn validate(&self) -> Result<(), AuditError> {
        if self.action.trim().is_empty() || self.resource_type.trim().is_empty() {
            return Err(AuditError::Invalid(
                "action and resource_type must not be empty".into(),
            ));
        }
        if self.actor.id().trim().is_empty() {
            return Err(AuditError::Invalid("the actor id must not be empty".into()));
        }
        Ok(())
    }
}

/// Why recording or reading audit events failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// The event is malformed.
    #[error("invalid audit event: {0}")]
    Invalid(String),
    /// The queue is full and the caller asked not to wait. The event was NOT
    /// recorded (and was counted as dropped): retry, or use the waiting call.
    #[error("audit queue is full; the event was not recorded")]
    QueueFull,
    /// The queue's worker has stopped; the event was NOT recorded.
    #[error("audit queue is closed; the event was not recorded")]
    QueueClosed,
    /// The sink failed (details are logged).
    #[error("audit sink failed: {0}")]
    Sink(String),
}

/// Where audit events are recorded.
#[async_trait]
pub trait AuditSink: Send + Sync {
    /// Records one event. An `Ok` means it is durably recorded (as far as
    /// this sink goes); an error means it is not.
    async fn record(&self, event: AuditEvent) -> Result<(), AuditError>;
}

/// Records events as `tracing` events with target `tenancy::audit`.
#[derive(Debug, Clone, Copy, Default)]
pub struct TracingSink;

#[async_trait]
impl AuditSink for TracingSink {
    async fn record(&self, e: AuditEvent) -> Result<(), AuditError> {
        e.validate()?;
        tracing::info!(
            target: "tenancy::audit",
            action = %e.action,
            tenant.id = %e.tenant,
            actor.kind = e.actor.kind(),
            actor.id = e.actor.id(),
            resource.type = %e.resource_type,
            resource.id = e.resource_id.as_deref(),
            records = e.record_count,
            flags = ?e.flags.names(),
            "audit"
        );
        Ok(())
    }
}

/// Keeps events in memory (tests, examples).
#[derive(Debug, Default)]
pub struct MemorySink {
    events: std::sync::Mutex<Vec<AuditEvent>>,
}

impl MemorySink {
    /// Every event recorded so far.
    pub fn events(&self) -> Vec<AuditEvent> {
        self.events
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

#[async_trait]
impl AuditSink for MemorySink {
    async fn record(&self, e: AuditEvent) -> Result<(), AuditError> {
        e.validate()?;
        self.events
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(e);
        Ok(())
    }
}
