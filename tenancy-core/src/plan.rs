//! Plans as data: limits per resource and feature defaults, per-tenant
//! overrides, and plan changes.
//!
//! The library ships no tiers. A [`PlanCatalog`] is loaded from JSON (or TOML
//! with the `toml` feature) and validated as a whole; a tenant's
//! [`Entitlements`] are its plan with its overrides applied, computed once
//! and swapped in one step when the plan changes.
//!
//! ```
//! use tenancy_core::plan::{Overrides, PlanCatalog};
//!
//! let catalog = PlanCatalog::from_json(r#"{
//!   "plans": [
//!     { "id": "free", "name": "Free",
//!       "limits": { "users": { "stock": 5 }, "api_calls": { "rate": { "per_minute": 60, "per_hour": 1000 } } },
//!       "features": { "advanced_analytics": false } },
//!     { "id": "professional", "name": "Professional",
//!       "limits": { "users": { "stock": 50 }, "api_calls": { "rate": { "per_hour": 20000 } } },
//!       "features": { "advanced_analytics": true } }
//!   ]
//! }"#)?;
//!
//! let mut overrides = Overrides::default();
//! overrides.set("limits.users", serde_json::json!(500));
//! overrides.set("features.advanced_analytics", serde_json::json!(true));
//! let e = catalog.entitlements(&"free".into(), &overrides)?;
//! assert_eq!(e.stock_limit("users"), Some(500));
//! assert_eq!(e.feature("advanced_analytics"), Some(&true.into()));
//!
//! let mut typo = Overrides::default();
//! typo.set("limits.userz", serde_json::json!(500));
//! assert!(catalog.entitlements(&"free".into(), &typo).is_err()); // never ignored
//! # Ok::<(), tenancy_core::plan::PlanError>(())
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{PlanId, TenantId};

/// The name of a metered resource (`users`, `api_calls`, `storage_bytes`).
///
/// Resources whose name ends in `_bytes` are storage: exceeding them maps to
/// HTTP 413 rather than 403.
pub type ResourceKey = Arc<str>;

/// The name of a feature flag (`advanced_analytics`).
pub type FlagKey = Arc<str>;

impl From<&str> for PlanId {
    fn from(s: &str) -> Self {
        PlanId::new(s)
    }
}

/// The windows of a rate limit, each optional.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateSpec {
    /// Allowed per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_second: Option<u64>,
    /// Allowed per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_minute: Option<u64>,
    /// Allowed per hour.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_hour: Option<u64>,
    /// Allowed per day.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_day: Option<u64>,
}

impl RateSpec {
    /// `(limit, period)` for every window that is set, shortest first.
    pub fn windows(&self) -> Vec<(u64, Duration)> {
        [
            (self.per_second, 1),
            (self.per_minute, 60),
            (self.per_hour, 3600),
            (self.per_day, 86_400),
        ]
        .into_iter()
        .filter_map(|(l, secs)| l.map(|l| (l, Duration::from_secs(secs))))
        .collect()
    }

    fn window_mut(&mut self, name: &str) -> Option<&mut Option<u64>> {
        match name {
            "per_second" => Some(&mut self.per_second),
            "per_minute" => Some(&mut self.per_minute),
            "per_hour" => Some(&mut self.per_hour),
            "per_day" => Some(&mut self.per_day),
            _ => None,
        }
    }
}

/// Usage per calendar month (in the tenant's time zone): `limit` included,
/// then up to `overage` more accepted and billed as overage, then refused.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MonthlySpec {
    /// Included in the plan each month.
    pub limit: u64,
    /// Accepted beyond `limit` (soft limit); 0 makes `limit` hard.
    #[serde(default)]
    pub overage: u64,
}

impl MonthlySpec {
    /// The most accepted in a month: `limit + overage`.
    pub fn cap(&self) -> u64 {
        self.limit.saturating_add(self.overage)
    }
}

/// A limit on one resource.
///
/// In JSON/TOML: `{ "stock": 50 }`, `{ "rate": { "per_hour": 1000 } }`,
/// `{ "concurrency": 4 }`, `{ "monthly": { "limit": 10000, "overage": 2000 } }`
/// or `"unlimited"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Limit {
    /// Things that exist (users, policies, bytes stored): at most this many.
    Stock(u64),
    /// Events over time (API calls): at most `limit` per window.
    Rate(RateSpec),
    /// Things in progress (requests, sessions): at most this many at once.
    Concurrency(u32),
    /// Consumption per calendar month (SMS sent, documents generated),
    /// with an optional overage allowance (`quota::monthly`).
    Monthly(MonthlySpec),
    /// No limit.
    Unlimited,
}

impl Limit {
    fn kind(&self) -> Option<ResourceKind> {
        match self {
            Limit::Stock(_) => Some(ResourceKind::Stock),
            Limit::Rate(_) => Some(ResourceKind::Rate),
            Limit::Concurrency(_) => Some(ResourceKind::Concurrency),
            Limit::Monthly(_) => Some(ResourceKind::Monthly),
            Limit::Unlimited => None,
        }
    }
}

/// The three kinds of metered resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResourceKind {
    /// Things that exist.
    Stock,
    /// Events over time.
    Rate,
    /// Things in progress.
    Concurrency,
    /// Consumption per calendar month.
    Monthly,
}

impl fmt::Display for ResourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ResourceKind::Stock => "stock",
            ResourceKind::Rate => "rate",
            ResourceKind::Concurrency => "concurrency",
            ResourceKind::Monthly => "monthly",
        })
    }
}

/// A feature flag's value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum FlagValue {
    /// On or off.
    Bool(bool),
    /// A number variant.
    Int(i64),
    /// A string variant.
    Str(Arc<str>),
}

impl FlagValue {
    /// The value as a boolean, if it is one.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            FlagValue::Bool(b) => Some(*b),
            _ => None,
        }
    }

    fn type_name(&self) -> &'static str {
        match self {
            FlagValue::Bool(_) => "a boolean",
            FlagValue::Int(_) => "an integer",
            FlagValue::Str(_) => "a string",
        }
    }

    fn same_type(&self, other: &FlagValue) -> bool {
        std::mem::discriminant(self) == std::mem::discriminant(other)
    }
}

impl From<bool> for FlagValue {
    fn from(b: bool) -> Self {
        FlagValue::Bool(b)
    }
}

/// A plan: limits and feature defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Plan {
    /// Stable id (`"professional"`).
    pub id: PlanId,
    /// Name shown to people.
    pub name: String,
    /// Limits by resource.
    #[serde(default)]
    pub limits: BTreeMap<ResourceKey, Limit>,
    /// Feature defaults by flag.
    #[serde(default)]
    pub features: BTreeMap<FlagKey, FlagValue>,
}

/// Why plans, overrides or a plan change were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PlanError {
    /// The catalog text could not be parsed.
    #[error("cannot read plan catalog ({format}): {message}")]
    Parse {
        /// `"json"` or `"toml"`.
        format: &'static str,
        /// The parser's message, with position.
        message: String,
    },
    /// Two plans have the same id.
    #[error("plan {0} is defined twice")]
    DuplicatePlan(PlanId),
    /// A resource is a different kind in two plans.
    #[error("resource {resource} is {first} in one plan and {second} in plan {plan}")]
    KindMismatch {
        /// The resource.
        resource: ResourceKey,
        /// Its kind in the first plan that defines it.
        first: ResourceKind,
        /// Its kind in `plan`.
        second: ResourceKind,
        /// The plan that disagrees.
        plan: PlanId,
    },
    /// A flag has a different type in two plans.
    #[error("feature {flag} has a different type in plan {plan}")]
    FlagTypeMismatch {
        /// The flag.
        flag: FlagKey,
        /// The plan that disagrees.
        plan: PlanId,
    },
    /// No plan with this id.
    #[error("unknown plan {0}")]
    UnknownPlan(PlanId),
    /// An override names something no plan defines.
    #[error(
        "unknown override key {0:?}: use limits.<resource>[.<window>] or features.<flag> of a known resource or flag"
    )]
    UnknownKey(String),
    /// An override has the wrong type.
    #[error("override {path:?} must be {expected}")]
    WrongType {
        /// The override's path.
        path: String,
        /// What was expected.
        expected: &'static str,
    },
    /// A downgrade would put current usage over the new limit and the policy refuses it.
    #[error("cannot move to plan {plan}: {resource} is at {used}, the plan allows {limit}")]
    DowngradeBelowUsage {
        /// The target plan.
        plan: PlanId,
        /// The resource.
        resource: ResourceKey,
        /// Current usage.
        used: u64,
        /// The new limit.
        limit: u64,
    },
}

/// Per-tenant overrides by dotted path: `limits.users = 500`,
/// `limits.api_calls.per_hour = 50000`, `limits.exports = "unlimited"`,
/// `features.advanced_analytics = true`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Overrides(BTreeMap<String, serde_json::Value>);

impl Overrides {
    /// Sets one override (validated when entitlements are computed).
    pub fn set(&mut self, path: impl Into<String>, value: serde_json::Value) -> &mut Self {
        self.0.insert(path.into(), value);
        self
    }

    /// Whether there are no overrides.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// What a tenant may use: its plan's limits and features with its overrides
/// applied. Immutable; replaced as a whole when the plan changes.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Entitlements {
    /// The plan these come from.
    pub plan: PlanId,
    /// Effective limits.
    pub limits: BTreeMap<ResourceKey, Limit>,
    /// Effective feature defaults.
    pub features: BTreeMap<FlagKey, FlagValue>,
}

/// Whether `new` allows more than `old` in any respect. Limits of
/// different kinds are not comparable: a change of kind counts as more
/// (the conservative answer, so billing confirms it).
fn allows_more(new: &Limit, old: &Limit) -> bool {
    match (new, old) {
        (Limit::Unlimited, Limit::Unlimited) => false,
        (Limit::Unlimited, _) => true,
        (_, Limit::Unlimited) => false,
        (Limit::Stock(a), Limit::Stock(b)) => a > b,
        (Limit::Concurrency(a), Limit::Concurrency(b)) => a > b,
        (Limit::Monthly(a), Limit::Monthly(b)) => {
            a.limit > b.limit
                || a.limit.saturating_add(a.overage) > b.limit.saturating_add(b.overage)
        }
        (Limit::Rate(a), Limit::Rate(b)) => {
            // Window by window: a window the old plan had and the new one
            // drops, or raises, allows more. A rate with no window limits
            // nothing.
            let windows = |r: &RateSpec| [r.per_second, r.per_minute, r.per_hour, r.per_day];
            let (wa, wb) = (windows(a), windows(b));
            if wa.iter().all(Option::is_none) {
                return wb.iter().any(Option::is_some);
            }
            wb.iter().zip(wa.iter()).any(|(old, new)| match (old, new) {
                (Some(_), None) => true,
                (Some(o), Some(n)) => n > o,
                _ => false,
            })
        }
        _ => true,
    }
}

impl Entitlements {
    /// Whether these entitlements grant anything `other` does not: a
    /// resource metered more generously (or only here), or a feature on
    /// here and off (or absent) there. A move from `other` to `self` is
    /// then an upgrade — one a billing system should confirm.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use tenancy_core::plan::{Overrides, PlanCatalog};
    /// use tenancy_core::PlanId;
    /// let catalog = PlanCatalog::from_json(r#"{"plans": [
    ///     {"id": "free", "name": "Free", "limits": {"users": {"stock": 3}}},
    ///     {"id": "pro", "name": "Pro", "limits": {"users": {"stock": 25}}}
    /// ]}"#)?;
    /// let free = catalog.entitlements(&PlanId::new("free"), &Overrides::default())?;
    /// let pro = catalog.entitlements(&PlanId::new("pro"), &Overrides::default())?;
    /// assert!(pro.grants_more_than(&free));
    /// assert!(!free.grants_more_than(&pro));
    /// # Ok(()) }
    /// ```
    pub fn grants_more_than(&self, other: &Entitlements) -> bool {
        let more_limit = self.limits.iter().any(|(r, l)| match other.limits.get(r) {
            None => true,
            Some(o) => allows_more(l, o),
        });
        // A feature on here and off there, a larger number, or any other
        // difference of value (a string variant) counts as more.
        let more_feature = self
            .features
            .iter()
            .any(|(f, v)| match (v, other.features.get(f)) {
                (FlagValue::Bool(a), Some(FlagValue::Bool(b))) => *a && !*b,
                (FlagValue::Bool(a), None) => *a,
                (FlagValue::Int(a), Some(FlagValue::Int(b))) => a > b,
                (v, Some(o)) => v != o,
                (_, None) => true,
            });
        more_limit || more_feature
    }

    /// The limit on `resource`; `None` when the plan does not meter it
    /// (treat as not allowed — see [`crate::quota`]).
    pub fn limit(&self, resource: &str) -> Option<&Limit> {
        self.limits.get(resource)
    }

    /// The stock limit on `resource`, if it is a stock resource.
    pub fn stock_limit(&self, resource: &str) -> Option<u64> {
        match self.limits.get(resource) {
            Some(Limit::Stock(n)) => Some(*n),
            _ => None,
        }
    }

    /// The plan's value for a feature.
    pub fn feature(&self, flag: &str) -> Option<&FlagValue> {
        self.features.get(flag)
    }
}

/// A resource that is over its new limit after a plan change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverLimit {
    /// The resource.
    pub resource: ResourceKey,
    /// Usage at the time of the change.
    pub used: u64,
    /// The new limit.
    pub limit: u64,
}

/// What happens when a plan change would put usage over a new stock limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum DowngradePolicy {
    /// Refuse the change with [`PlanError::DowngradeBelowUsage`].
    #[default]
    Refuse,
    /// Accept it; the tenant keeps what it has, but new consumption of an
    /// over-limit resource is refused until usage falls below the limit.
    MarkOverLimit,
}

/// A plan change that was applied (emit it to the audit log).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct PlanChanged {
    /// The tenant.
    pub tenant: TenantId,
    /// The previous plan.
    pub old: Option<PlanId>,
    /// The new plan.
    pub new: PlanId,
    /// Resources left over their new limit ([`DowngradePolicy::MarkOverLimit`]).
    pub over_limit: Vec<OverLimit>,
}

impl PlanChanged {
    /// The audit event of this change (`plan.changed`, resource `tenant`),
    /// by `actor`, with old and new plan and any resource left over its
    /// new limit. Record it in the same transaction as the change.
    pub fn audit_event(&self, actor: &crate::audit::AuditActor) -> crate::audit::AuditEvent {
        let over: Vec<serde_json::Value> = self
            .over_limit
            .iter()
            .map(
                |o| serde_json::json!({"resource": &*o.resource, "used": o.used, "limit": o.limit}),
            )
            .collect();
        let details = serde_json::json!({
            "from": self.old.as_ref().map(PlanId::as_str),
            "to": self.new.as_str(),
            "over_limit": over,
        });
        let event = match actor {
            crate::audit::AuditActor::User(u) => {
                crate::audit::AuditEvent::user(self.tenant, u, "plan.changed", "tenant")
            }
            other => {
                crate::audit::AuditEvent::system(self.tenant, other.id(), "plan.changed", "tenant")
            }
        };
        event.with_resource_id(self.tenant).with_details(details)
    }
}

/// Every plan an application offers, validated together.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PlanCatalog {
    plans: BTreeMap<PlanId, Plan>,
    kinds: BTreeMap<ResourceKey, ResourceKind>,
    flags: BTreeMap<FlagKey, FlagValue>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogFile {
    plans: Vec<Plan>,
}

impl PlanCatalog {
    /// Builds and validates a catalog.
    pub fn new(plans: impl IntoIterator<Item = Plan>) -> Result<Self, PlanError> {
        let mut catalog = PlanCatalog::default();
        for plan in plans {
            for (resource, limit) in &plan.limits {
                if let Some(kind) = limit.kind() {
                    match catalog.kinds.get(resource) {
                        Some(first) if *first != kind => {
                            return Err(PlanError::KindMismatch {
                                resource: resource.clone(),
                                first: *first,
                                second: kind,
                                plan: plan.id.clone(),
                            });
                        }
                        _ => {
                            catalog.kinds.insert(resource.clone(), kind);
                        }
                    }
                }
            }
            for (flag, value) in &plan.features {
                match catalog.flags.get(flag) {
                    Some(first) if !first.same_type(value) => {
                        return Err(PlanError::FlagTypeMismatch {
                            flag: flag.clone(),
                            plan: plan.id.clone(),
                        });
                    }
                    _ => {
                        catalog.flags.insert(flag.clone(), value.clone());
                    }
                }
            }
            if catalog.plans.contains_key(&plan.id) {
                return Err(PlanError::DuplicatePlan(plan.id));
            }
            catalog.plans.insert(plan.id.clone(), plan);
        }
        Ok(catalog)
    }

    /// Reads `{ "plans": [ ... ] }`.
    pub fn from_json(text: &str) -> Result<Self, PlanError> {
        let file: CatalogFile = serde_json::from_str(text).map_err(|e| PlanError::Parse {
            format: "json",
            message: e.to_string(),
        })?;
        Self::new(file.plans)
    }

    /// Reads `[[plans]]` tables (feature `toml`).
    #[cfg(feature = "toml")]
    pub fn from_toml(text: &str) -> Result<Self, PlanError> {
        let file: CatalogFile = toml::from_str(text).map_err(|e| PlanError::Parse {
            format: "toml",
            message: e.to_string(),
        })?;
        Self::new(file.plans)
    }

    /// The plan with `id`.
    pub fn plan(&self, id: &PlanId) -> Result<&Plan, PlanError> {
        self.plans
            .get(id)
            .ok_or_else(|| PlanError::UnknownPlan(id.clone()))
    }

    /// Every plan, by id.
    pub fn plans(&self) -> impl Iterator<Item = &Plan> {
        self.plans.values()
    }

    /// The kind of `resource`, if any plan meters it.
    pub fn resource_kind(&self, resource: &str) -> Option<ResourceKind> {
        self.kinds.get(resource).copied()
    }

    /// A tenant's entitlements from its record: its plan and its overrides.
    /// `Ok(None)` for a tenant without a plan.
    pub fn entitlements_of(
        &self,
        tenant: &crate::Tenant,
    ) -> Result<Option<Entitlements>, PlanError> {
        tenant
            .plan
            .as_ref()
            .map(|p| self.entitlements(p, &tenant.plan_overrides))
            .transpose()
    }

    /// A tenant's entitlements: `plan` with `overrides` applied and checked.
    pub fn entitlements(
        &self,
        plan: &PlanId,
        overrides: &Overrides,
    ) -> Result<Entitlements, PlanError> {
        let base = self.plan(plan)?;
        let mut e = Entitlements {
            plan: plan.clone(),
            limits: base.limits.clone(),
            features: base.features.clone(),
        };
        for (path, value) in &overrides.0 {
            self.apply(&mut e, path, value)?;
        }
        Ok(e)
    }

    fn apply(
        &self,
        e: &mut Entitlements,
        path: &str,
        value: &serde_json::Value,
    ) -> Result<(), PlanError> {
        let wrong = |expected| PlanError::WrongType {
            path: path.to_owned(),
            expected,
        };
        let unknown = || PlanError::UnknownKey(path.to_owned());
        let mut parts = path.split('.');
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some("features"), Some(flag), None, None) => {
                let default = self.flags.get(flag).ok_or_else(unknown)?;
                let v: FlagValue = serde_json::from_value(value.clone())
                    .map_err(|_| wrong(default.type_name()))?;
                if !v.same_type(default) {
                    return Err(wrong(default.type_name()));
                }
                e.features.insert(flag.into(), v);
                Ok(())
            }
            (Some("limits"), Some(resource), window, None) => {
                let kind = self.kinds.get(resource).copied().ok_or_else(unknown)?;
                let unlimited = value.as_str() == Some("unlimited");
                match (kind, window) {
                    (_, None) if unlimited => {
                        e.limits.insert(resource.into(), Limit::Unlimited);
                    }
                    (ResourceKind::Stock, None) => {
                        let n = value
                            .as_u64()
                            .ok_or_else(|| wrong("a non-negative integer or \"unlimited\""))?;
                        e.limits.insert(resource.into(), Limit::Stock(n));
                    }
                    (ResourceKind::Concurrency, None) => {
                        let n = value
                            .as_u64()
                            .and_then(|n| u32::try_from(n).ok())
                            .ok_or_else(|| {
                                wrong("a non-negative 32-bit integer or \"unlimited\"")
                            })?;
                        e.limits.insert(resource.into(), Limit::Concurrency(n));
                    }
                    (ResourceKind::Rate, None) => {
                        let spec: RateSpec = serde_json::from_value(value.clone())
                            .map_err(|_| wrong("a rate such as {\"per_hour\": 1000}"))?;
                        e.limits.insert(resource.into(), Limit::Rate(spec));
                    }
                    (ResourceKind::Monthly, None) => {
                        let spec: MonthlySpec =
                            serde_json::from_value(value.clone()).map_err(|_| {
                                wrong("a monthly limit such as {\"limit\": 1000, \"overage\": 200}")
                            })?;
                        e.limits.insert(resource.into(), Limit::Monthly(spec));
                    }
                    (ResourceKind::Rate, Some(w)) => {
                        let n = value
                            .as_u64()
                            .ok_or_else(|| wrong("a non-negative integer"))?;
                        let mut spec = match e.limits.get(resource) {
                            Some(Limit::Rate(s)) => *s,
                            _ => RateSpec::default(),
                        };
                        *spec.window_mut(w).ok_or_else(unknown)? = Some(n);
                        e.limits.insert(resource.into(), Limit::Rate(spec));
                    }
                    (_, Some(_)) => return Err(unknown()),
                }
                Ok(())
            }
            _ => Err(unknown()),
        }
    }

    /// Moves a tenant to `new_plan`, checking stock usage against the new
    /// limits under `policy`. `usage(resource)` returns current usage.
    ///
    /// Returns the new entitlements (swap them in as one value) and the event.
    pub fn change_plan(
        &self,
        tenant: TenantId,
        old: Option<&PlanId>,
        new_plan: &PlanId,
        overrides: &Overrides,
        usage: impl Fn(&str) -> u64,
        policy: DowngradePolicy,
    ) -> Result<(Entitlements, PlanChanged), PlanError> {
        let next = self.entitlements(new_plan, overrides)?;
        let mut over_limit = Vec::new();
        for (resource, limit) in &next.limits {
            if let Limit::Stock(max) = limit {
                let used = usage(resource);
                if used > *max {
                    if policy == DowngradePolicy::Refuse {
                        return Err(PlanError::DowngradeBelowUsage {
                            plan: new_plan.clone(),
                            resource: resource.clone(),
                            used,
                            limit: *max,
                        });
                    }
                    over_limit.push(OverLimit {
                        resource: resource.clone(),
                        used,
                        limit: *max,
                    });
                }
            }
        }
        let event = PlanChanged {
            tenant,
            old: old.cloned(),
            new: new_plan.clone(),
            over_limit,
        };
        tracing::info!(
            target: "tenancy::audit",
            event = "plan.changed",
            tenant = %tenant,
            old = ?event.old.as_ref().map(PlanId::as_str),
            new = %event.new,
            over_limit = event.over_limit.len(),
        );
        Ok((next, event))
    }
}
