//! Versioned, field-level changes to tenant records ([`TenantUpdate`]).
//!
//! Every tenant record carries a [`Tenant::version`] that each store bumps on
//! every write. A change names only the fields it touches and is applied by
//! the store to the record *as stored*, atomically, so two requests changing
//! different fields (a plan change and a settings patch) both persist. A
//! change that must not apply to a record it has not seen says so with
//! [`TenantUpdate::expect_version`]: if anyone wrote the record since, the
//! store refuses with [`WriteError::Conflict`] (HTTP 409, `tenant.conflict`)
//! instead of overwriting. Status changes only through
//! [`Lifecycle`](crate::lifecycle::Lifecycle) transitions, which apply only
//! while the stored status is still the one the transition started from.

use chrono::{DateTime, SubsecRound, Utc};

use super::UniqueViolation;
use crate::plan::Overrides;
use crate::{
    DomainName, Placement, PlanId, StoreError, Tenant, TenantId, TenantSlug, TenantStatus,
};

/// One field-level change to a tenant record.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum TenantChange {
    /// Sets the slug (unique among tenants).
    Slug(TenantSlug),
    /// Sets the display name.
    DisplayName(String),
    /// Merges a JSON merge patch ([RFC 7386]) into the settings: keys set to
    /// `null` are removed, objects merge recursively, anything else replaces.
    ///
    /// [RFC 7386]: https://www.rfc-editor.org/rfc/rfc7386
    SettingsPatch(serde_json::Value),
    /// Sets (or clears) the plan.
    Plan(Option<PlanId>),
    /// A precondition: the update applies only while the plan is still this
    /// one (a plan change decided from the plan the caller saw — a downgrade
    /// checked against usage — must not apply on top of another plan
    /// change; a settings change in between does not matter).
    ExpectPlan(Option<PlanId>),
    /// Replaces the per-tenant plan overrides.
    PlanOverrides(Overrides),
    /// Adds a custom domain (no-op if the tenant has it already).
    AddDomain(DomainName),
    /// Removes a custom domain (no-op if the tenant does not have it).
    RemoveDomain(DomainName),
    /// Sets where the tenant's data lives.
    Placement(Placement),
    /// A lifecycle transition; made by [`Lifecycle`](crate::lifecycle::Lifecycle) only.
    Status(StatusChange),
}

/// A status change from one status to another. Only
/// [`Lifecycle`](crate::lifecycle::Lifecycle) makes them, after checking the
/// transition; the store applies one only while the stored status is still
/// [`StatusChange::from`].
#[derive(Debug, Clone, PartialEq)]
pub struct StatusChange {
    from: TenantStatus,
    to: TenantStatus,
}

impl StatusChange {
    pub(crate) fn new(from: &TenantStatus, to: &TenantStatus) -> Self {
        Self {
            from: at_micros(from),
            to: at_micros(to),
        }
    }

    /// The status the transition starts from.
    pub fn from(&self) -> &TenantStatus {
        &self.from
    }

    /// The status it sets.
    pub fn to(&self) -> &TenantStatus {
        &self.to
    }
}

/// A set of changes to one tenant record, applied atomically by
/// [`TenantWriter::update`](super::TenantWriter::update).
///
/// ```
/// use tenancy_core::store::{InMemoryTenantStore, TenantStore, TenantUpdate, TenantWriter, WriteError};
/// use tenancy_core::{PlanId, Tenant, TenantId};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let store = InMemoryTenantStore::new();
/// let id = TenantId::new_v4();
/// store.create(&Tenant::new(id, "acme".parse()?, "Acme")).await?;
/// let read = store.by_id(id).await?.ok_or("missing")?;
///
/// // Two writers that both read version 1 and change different fields:
/// store.update(id, &TenantUpdate::new().plan(Some(PlanId::new("pro")))).await?;
/// store.update(id, &TenantUpdate::new().settings_patch(serde_json::json!({ "theme": "dark" }))).await?;
/// let now = store.by_id(id).await?.ok_or("missing")?;
/// assert_eq!(now.plan, Some(PlanId::new("pro")));
/// assert_eq!(now.settings["theme"], "dark");
/// assert_eq!(now.version, read.version + 2);
///
/// // A writer that insists on the version it read is refused, not applied.
/// let stale = TenantUpdate::new().expect_version(read.version).display_name("Acme Ltd");
/// assert!(matches!(store.update(id, &stale).await, Err(WriteError::Conflict { .. })));
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TenantUpdate {
    expected_version: Option<u64>,
    changes: Vec<TenantChange>,
    emitted: Vec<crate::outbox::OutboxMessage>,
}

impl TenantUpdate {
    /// No changes yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies only if the stored record is still at `version` (the
    /// [`Tenant::version`] the caller read); otherwise the store refuses
    /// with [`WriteError::Conflict`].
    pub fn expect_version(mut self, version: u64) -> Self {
        self.expected_version = Some(version);
        self
    }

    /// Adds a change.
    pub fn change(mut self, change: TenantChange) -> Self {
        self.changes.push(change);
        self
    }

    /// Sets the slug.
    pub fn slug(self, slug: TenantSlug) -> Self {
        self.change(TenantChange::Slug(slug))
    }

    /// Sets the display name.
    pub fn display_name(self, name: impl Into<String>) -> Self {
        self.change(TenantChange::DisplayName(name.into()))
    }

    /// Merges `patch` into the settings (RFC 7386).
    pub fn settings_patch(self, patch: serde_json::Value) -> Self {
        self.change(TenantChange::SettingsPatch(patch))
    }

    /// Sets (or clears) the plan.
    pub fn plan(self, plan: Option<PlanId>) -> Self {
        self.change(TenantChange::Plan(plan))
    }

    /// Applies only while the plan is still `plan` ([`TenantChange::ExpectPlan`]).
    pub fn expect_plan(self, plan: Option<PlanId>) -> Self {
        self.change(TenantChange::ExpectPlan(plan))
    }

    /// Replaces the plan overrides.
    pub fn plan_overrides(self, overrides: Overrides) -> Self {
        self.change(TenantChange::PlanOverrides(overrides))
    }

    /// Adds a custom domain.
    pub fn add_domain(self, domain: DomainName) -> Self {
        self.change(TenantChange::AddDomain(domain))
    }

    /// Removes a custom domain.
    pub fn remove_domain(self, domain: DomainName) -> Self {
        self.change(TenantChange::RemoveDomain(domain))
    }

    /// Sets the placement.
    pub fn placement(self, placement: Placement) -> Self {
        self.change(TenantChange::Placement(placement))
    }

    /// The version the update insists on, if any.
    pub fn expected_version(&self) -> Option<u64> {
        self.expected_version
    }

    /// The changes, in order.
    pub fn changes(&self) -> &[TenantChange] {
        &self.changes
    }

    /// Writes `message` to the store's [outbox](crate::outbox) in the same
    /// transaction as the change: it exists if and only if the change was
    /// applied (a refused or failed update leaves no message).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use tenancy_core::outbox::OutboxMessage;
    /// use tenancy_core::store::{InMemoryTenantStore, TenantUpdate, TenantWriter};
    /// use tenancy_core::{PlanId, Tenant, TenantId};
    ///
    /// let store = InMemoryTenantStore::new();
    /// let id = TenantId::new_v4();
    /// store.create(&Tenant::new(id, "acme".parse()?, "Acme")).await?;
    /// let changed = OutboxMessage::new(id, "billing", "plan.changed", serde_json::json!({"to": "pro"}));
    /// store.update(id, &TenantUpdate::new().plan(Some(PlanId::new("pro"))).emit(changed)).await?;
    /// assert_eq!(store.outbox().messages().len(), 1);
    /// # Ok(()) }
    /// ```
    pub fn emit(mut self, message: crate::outbox::OutboxMessage) -> Self {
        self.emitted.push(message);
        self
    }

    /// The messages to write with the change.
    pub fn emitted(&self) -> &[crate::outbox::OutboxMessage] {
        &self.emitted
    }

    /// Whether the update changes any domain (stores re-index domains only then).
    pub fn touches_domains(&self) -> bool {
        self.changes.iter().any(|c| {
            matches!(
                c,
                TenantChange::AddDomain(_) | TenantChange::RemoveDomain(_)
            )
        })
    }

    /// The record after this update, computed from `current` as stored:
    /// checks the expected version and every status precondition, applies
    /// the changes in order, bumps the version and stamps `updated_at`.
    /// Stores call it inside their atomic section and then write the result
    /// only if the stored version is still `current.version`.
    pub fn apply_to(&self, current: &Tenant, now: DateTime<Utc>) -> Result<Tenant, WriteError> {
        if let Some(expected) = self.expected_version
            && expected != current.version
        {
            return Err(WriteError::Conflict {
                id: current.id,
                expected,
                actual: current.version,
            });
        }
        let mut next = current.clone();
        for change in &self.changes {
            match change {
                TenantChange::Slug(slug) => next.slug = slug.clone(),
                TenantChange::DisplayName(name) => next.display_name.clone_from(name),
                TenantChange::SettingsPatch(patch) => {
                    if !patch.is_object() {
                        return Err(WriteError::Invalid {
                            id: current.id,
                            reason: "a settings patch must be a JSON object".to_owned(),
                        });
                    }
                    merge_patch(&mut next.settings, patch);
                }
                TenantChange::Plan(plan) => next.plan.clone_from(plan),
                TenantChange::ExpectPlan(plan) => {
                    if next.plan != *plan {
                        return Err(WriteError::FieldChanged {
                            id: current.id,
                            field: "plan",
                        });
                    }
                }
                TenantChange::PlanOverrides(o) => next.plan_overrides = o.clone(),
                TenantChange::AddDomain(d) => {
                    if !next.domains.contains(d) {
                        next.domains.push(d.clone());
                    }
                }
                TenantChange::RemoveDomain(d) => next.domains.retain(|x| x != d),
                TenantChange::Placement(p) => next.placement = p.clone(),
                TenantChange::Status(s) => {
                    if at_micros(&next.status) != s.from {
                        return Err(WriteError::StatusChanged {
                            id: current.id,
                            expected: crate::lifecycle::status_name(&s.from),
                            actual: crate::lifecycle::status_name(&next.status),
                        });
                    }
                    next.status = s.to.clone();
                }
            }
        }
        next.version = current.version.saturating_add(1);
        next.updated_at = now.trunc_subsecs(6);
        Ok(next)
    }
}

/// `status` with its timestamps at microsecond precision, the finest a
/// store keeps (PostgreSQL `timestamptz`): a status read back from a store
/// compares equal to the one written.
fn at_micros(status: &TenantStatus) -> TenantStatus {
    match status {
        TenantStatus::Trial { ends_at } => TenantStatus::Trial {
            ends_at: ends_at.trunc_subsecs(6),
        },
        TenantStatus::Offboarding { purge_after } => TenantStatus::Offboarding {
            purge_after: purge_after.trunc_subsecs(6),
        },
        other => other.clone(),
    }
}

/// RFC 7386 JSON merge patch.
fn merge_patch(target: &mut serde_json::Value, patch: &serde_json::Value) {
    let serde_json::Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = serde_json::Value::Object(serde_json::Map::new());
    }
    if let serde_json::Value::Object(map) = target {
        for (k, v) in patch {
            if v.is_null() {
                map.remove(k);
            } else {
                merge_patch(map.entry(k.clone()).or_insert(serde_json::Value::Null), v);
            }
        }
    }
}

/// Why a tenant write was refused.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    /// The record changed since the caller read it.
    #[error(
        "tenant {id} changed since it was read (version {expected} expected, {actual} stored): reload it and apply the change again"
    )]
    Conflict {
        /// The tenant.
        id: TenantId,
        /// The version the update insisted on.
        expected: u64,
        /// The version stored.
        actual: u64,
    },
    /// A lifecycle transition started from a status the tenant no longer has.
    #[error(
        "tenant {id} is {actual}, not {expected} as the transition assumed: reload it and decide again"
    )]
    StatusChanged {
        /// The tenant.
        id: TenantId,
        /// The status the transition started from.
        expected: &'static str,
        /// The status stored.
        actual: &'static str,
    },
    /// A field the update was decided from changed since the caller read it.
    #[error("tenant {id}'s {field} changed since it was read: reload it and decide again")]
    FieldChanged {
        /// The tenant.
        id: TenantId,
        /// The field.
        field: &'static str,
    },
    /// No tenant with this id.
    #[error("no tenant with id {0}")]
    NotFound(TenantId),
    /// The result would take another tenant's slug or domain.
    #[error(transparent)]
    Unique(#[from] UniqueViolation),
    /// The change is malformed.
    #[error("invalid change to tenant {id}: {reason}")]
    Invalid {
        /// The tenant.
        id: TenantId,
        /// What is wrong.
        reason: String,
    },
    /// The store's backend failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl WriteError {
    /// The HTTP status: 409 for conflicts (version, status, uniqueness), 404
    /// for a missing tenant, 422 for a malformed change, 500 for a backend
    /// failure.
    ///
    /// ```
    /// use tenancy_core::TenantId;
    /// use tenancy_core::store::WriteError;
    ///
    /// let e = WriteError::Conflict { id: TenantId::new_v4(), expected: 3, actual: 4 };
    /// assert_eq!((e.status(), e.code()), (409, "tenant.conflict"));
    /// ```
    pub fn status(&self) -> u16 {
        match self {
            Self::Conflict { .. }
            | Self::StatusChanged { .. }
            | Self::FieldChanged { .. }
            | Self::Unique(_) => 409,
            Self::NotFound(_) => 404,
            Self::Invalid { .. } => 422,
            Self::Store(_) => 500,
        }
    }

    /// A stable machine-readable code for problem documents.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Conflict { .. } | Self::StatusChanged { .. } | Self::FieldChanged { .. } => {
                "tenant.conflict"
            }
            Self::Unique(_) => "tenant.unique",
            Self::NotFound(_) => "tenant.not-found",
            Self::Invalid { .. } => "tenant.invalid-change",
            Self::Store(_) => "internal",
        }
    }

    /// Whether retrying the same update on a fresh read could succeed.
    pub fn is_conflict(&self) -> bool {
        matches!(
            self,
            Self::Conflict { .. } | Self::StatusChanged { .. } | Self::FieldChanged { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant() -> Tenant {
        let mut t = Tenant::new(TenantId::new_v4(), "acme".parse().unwrap(), "Acme");
        t.version = 4;
        t
    }

    #[test]
    fn merge_patch_follows_rfc_7386() {
        let mut t = tenant();
        t.settings = serde_json::json!({ "a": "b", "c": { "d": "e", "f": "g" } });
        let next = TenantUpdate::new()
            .settings_patch(serde_json::json!({ "a": "z", "c": { "f": null } }))
            .apply_to(&t, Utc::now())
            .unwrap();
        assert_eq!(
            next.settings,
            serde_json::json!({ "a": "z", "c": { "d": "e" } })
        );
        assert_eq!(next.version, 5);
    }

    #[test]
    fn a_stale_version_is_a_conflict() {
        let t = tenant();
        let e = TenantUpdate::new()
            .expect_version(3)
            .display_name("x")
            .apply_to(&t, Utc::now())
            .unwrap_err();
        assert!(matches!(
            e,
            WriteError::Conflict {
                expected: 3,
                actual: 4,
                ..
            }
        ));
        assert!(
            TenantUpdate::new()
                .expect_version(4)
                .display_name("x")
                .apply_to(&t, Utc::now())
                .is_ok()
        );
    }

    #[test]
    fn a_transition_from_another_status_is_refused() {
        let t = tenant().with_status(TenantStatus::Suspended {
            reason: "billing".into(),
        });
        let back_to_active = TenantUpdate::new().change(TenantChange::Status(StatusChange::new(
            &TenantStatus::Active,
            &TenantStatus::Active,
        )));
        assert!(matches!(
            back_to_active.apply_to(&t, Utc::now()),
            Err(WriteError::StatusChanged {
                expected: "active",
                actual: "suspended",
                ..
            })
        ));
    }

    #[test]
    fn a_settings_patch_must_be_an_object() {
        let e = TenantUpdate::new()
            .settings_patch(serde_json::json!([1]))
            .apply_to(&tenant(), Utc::now())
            .unwrap_err();
        assert_eq!(e.status(), 422);
    }
}
