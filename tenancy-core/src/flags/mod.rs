//! Per-tenant feature flags.
//!
//! Evaluation order, first match wins:
//!
//! 1. **kill switch** — the flag is globally off (an incident lever);
//! 2. **tenant override** — set for this tenant;
//! 3. **parent override** — set for the nearest ancestor (hierarchy);
//! 4. **plan default** — from the tenant's [`Entitlements`];
//! 5. **rollout** — a deterministic percentage of tenants, by a stable hash
//!    of the flag key and tenant id (the same tenant always lands in the
//!    same bucket, so raising the percentage only ever adds tenants);
//! 6. **default** — the flag's declared default (off for boolean flags).
//!
//! Every evaluation carries its [`Reason`]. A [`FlagSnapshot`] holds every
//! flag evaluated once for a tenant; it travels in the
//! [`TenantContext`](crate::TenantContext), so checking a flag on the
//! request path is a map lookup, not I/O.
//!
//! ```
//! use tenancy_core::flags::{FlagEngine, FlagDefinition, Reason};
//! use tenancy_core::{Tenant, TenantId};
//!
//! let engine = FlagEngine::new([
//!     FlagDefinition::boolean("new_dashboard").rollout(25),
//!     FlagDefinition::boolean("bulk_export"),
//! ]);
//! let acme = Tenant::new(TenantId::new_v4(), "acme".parse()?, "Acme");
//! engine.set_tenant_override(acme.id, "bulk_export", true.into())?;
//!
//! let snapshot = engine.snapshot(&acme, &[], None);
//! assert!(snapshot.enabled("bulk_export"));
//! assert_eq!(snapshot.get("bulk_export").map(|e| &e.reason), Some(&Reason::TenantOverride));
//! assert!(!snapshot.enabled("no_such_flag")); // unknown flags are off
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#[cfg(feature = "openfeature")]
mod openfeature;
#[cfg(feature = "openfeature")]
pub use openfeature::TenancyFlagProvider;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, PoisonError, RwLock};

use crate::TenantId;
use crate::plan::{Entitlements, FlagKey, FlagValue};
use crate::{PlanId, Tenant};

/// A declared flag.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct FlagDefinition {
    /// The flag's key.
    pub key: FlagKey,
    /// The value when nothing else applies.
    pub default: FlagValue,
    /// The value for tenants inside the rollout (with `rollout_percent`).
    pub rollout_value: FlagValue,
    /// Share of tenants, 0–100, that get `rollout_value`; `None` for no rollout.
    pub rollout_percent: Option<u8>,
}

impl FlagDefinition {
    /// A boolean flag, off by default.
    pub fn boolean(key: &str) -> Self {
        Self {
            key: key.into(),
            default: FlagValue::Bool(false),
            rollout_value: FlagValue::Bool(true),
            rollout_percent: None,
        }
    }

    /// A flag with a non-boolean default (a string or number variant).
    pub fn variant(key: &str, default: FlagValue) -> Self {
        Self {
            key: key.into(),
            rollout_value: default.clone(),
            default,
            rollout_percent: None,
        }
    }

    /// Turns the flag on (or to `rollout_value`) for `percent` of tenants.
    pub fn rollout(mut self, percent: u8) -> Self {
        self.rollout_percent = Some(percent.min(100));
        self
    }

    /// The value rolled-out tenants get (for variant flags).
    pub fn rollout_value(mut self, value: FlagValue) -> Self {
        self.rollout_value = value;
        self
    }
}

/// Why a flag has its value.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reason {
    /// The global kill switch is on.
    KillSwitch,
    /// Set for this tenant.
    TenantOverride,
    /// Set for this ancestor.
    ParentOverride(TenantId),
    /// The plan's default.
    PlanDefault(PlanId),
    /// Inside the rollout percentage (bucket 0–9999 below `percent` × 100).
    Rollout {
        /// The rollout percentage.
        percent: u8,
        /// This tenant's bucket.
        bucket: u16,
    },
    /// The flag's default (including outside a rollout).
    Default,
    /// No such flag is declared; the value is `false`.
    Unknown,
}

/// A flag's value and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evaluation {
    /// The value.
    pub value: FlagValue,
    /// Why.
    pub reason: Reason,
}

/// Why a flag write was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FlagError {
    /// No flag with this key is declared.
    #[error("unknown feature flag {0:?}")]
    UnknownFlag(String),
    /// The value's type differs from the flag's default.
    #[error("feature flag {0:?} takes values of the same type as its default")]
    WrongType(String),
}

/// Declared flags, kill switches and overrides, held in memory.
#[derive(Debug, Default)]
pub struct FlagEngine {
    definitions: BTreeMap<FlagKey, FlagDefinition>,
    state: RwLock<State>,
    /// Bumped on every change of kill switches or overrides.
    generation: std::sync::atomic::AtomicU64,
}

#[derive(Debug, Default)]
struct State {
    killed: HashSet<FlagKey>,
    overrides: HashMap<TenantId, HashMap<FlagKey, FlagValue>>,
}

/// The stable rollout bucket (0–9999) of a tenant for a flag: FNV-1a 64 over
/// `flag key ‖ 0x00 ‖ tenant id bytes`, modulo 10 000. Stable across
/// versions and platforms; changing it would reshuffle every rollout.
pub fn rollout_bucket(flag: &str, tenant: TenantId) -> u16 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = OFFSET;
    for b in flag
        .as_bytes()
        .iter()
        .chain(&[0u8])
        .chain(tenant.as_uuid().as_bytes())
    {
        h ^= u64::from(*b);
        h = h.wrapping_mul(PRIME);
    }
    // Fold the high bits in: FNV's low bits alone are weakly mixed.
    h ^= h >> 32;
    (h % 10_000) as u16
}

impl FlagEngine {
    /// An engine with these flags declared.
    pub fn new(definitions: impl IntoIterator<Item = FlagDefinition>) -> Self {
        Self {
            definitions: definitions
                .into_iter()
                .map(|d| (d.key.clone(), d))
                .collect(),
            state: RwLock::default(),
            generation: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Whether `flag` is declared.
    pub fn is_declared(&self, flag: &str) -> bool {
        self.definitions.contains_key(flag)
    }

    fn definition(&self, flag: &str) -> Result<&FlagDefinition, FlagError> {
        self.definitions
            .get(flag)
            .ok_or_else(|| FlagError::UnknownFlag(flag.to_owned()))
    }

    /// A counter that changes whenever a kill switch or override changes, so
    /// callers may cache a [`FlagSnapshot`] until it moves.
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    fn bump(&self) {
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// Turns the global kill switch of `flag` on or off.
    pub fn set_kill_switch(&self, flag: &str, killed: bool) -> Result<(), FlagError> {
        let key = self.definition(flag)?.key.clone();
        let mut s = self.state.write().unwrap_or_else(PoisonError::into_inner);
        if killed {
            s.killed.insert(key);
        } else {
            s.killed.remove(&key);
        }
        drop(s);
        self.bump();
        Ok(())
    }

    /// Sets `flag` for `tenant` (and, through the hierarchy, its descendants).
    pub fn set_tenant_override(
        &self,
        tenant: TenantId,
        flag: &str,
        value: FlagValue,
    ) -> Result<(), FlagError> {
        let def = self.definition(flag)?;
        if std::mem::discriminant(&def.default) != std::mem::discriminant(&value) {
            return Err(FlagError::WrongType(flag.to_owned()));
        }
        self.state
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .overrides
            .entry(tenant)
            .or_default()
            .insert(def.key.clone(), value);
        self.bump();
        Ok(())
    }

    /// Removes an override.
    pub fn clear_tenant_override(&self, tenant: TenantId, flag: &str) {
        if let Some(m) = self
            .state
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .overrides
            .get_mut(&tenant)
        {
            m.remove(flag);
        }
        self.bump();
    }

    /// Evaluates one flag. `ancestors` are the tenant's ancestors, nearest
    /// first; `entitlements` its plan entitlements, if plans are used.
    pub fn evaluate(
        &self,
        flag: &str,
        tenant: &Tenant,
        ancestors: &[TenantId],
        entitlements: Option<&Entitlements>,
    ) -> Evaluation {
        let Some(def) = self.definitions.get(flag) else {
            return Evaluation {
                value: FlagValue::Bool(false),
                reason: Reason::Unknown,
            };
        };
        let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
        Self::eval_def(def, &state, tenant, ancestors, entitlements)
    }

    fn eval_def(
        def: &FlagDefinition,
        state: &State,
        tenant: &Tenant,
        ancestors: &[TenantId],
        entitlements: Option<&Entitlements>,
    ) -> Evaluation {
        let off = || match &def.default {
            FlagValue::Bool(_) => FlagValue::Bool(false),
            other => other.clone(),
        };
        if state.killed.contains(&def.key) {
            return Evaluation {
                value: off(),
                reason: Reason::KillSwitch,
            };
        }
        let overridden = |t: &TenantId| state.overrides.get(t).and_then(|m| m.get(&def.key));
        if let Some(v) = overridden(&tenant.id) {
            return Evaluation {
                value: v.clone(),
                reason: Reason::TenantOverride,
            };
        }
        for a in ancestors {
            if let Some(v) = overridden(a) {
                return Evaluation {
                    value: v.clone(),
                    reason: Reason::ParentOverride(*a),
                };
            }
        }
        if let Some(e) = entitlements
            && let Some(v) = e.features.get(&def.key)
        {
            return Evaluation {
                value: v.clone(),
                reason: Reason::PlanDefault(e.plan.clone()),
            };
        }
        if let Some(percent) = def.rollout_percent {
            let bucket = rollout_bucket(&def.key, tenant.id);
            if bucket < u16::from(percent) * 100 {
                return Evaluation {
                    value: def.rollout_value.clone(),
                    reason: Reason::Rollout { percent, bucket },
                };
            }
        }
        Evaluation {
            value: def.default.clone(),
            reason: Reason::Default,
        }
    }

    /// Evaluates every declared flag for a tenant, once.
    pub fn snapshot(
        &self,
        tenant: &Tenant,
        ancestors: &[TenantId],
        entitlements: Option<&Entitlements>,
    ) -> FlagSnapshot {
        let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
        FlagSnapshot {
            values: Arc::new(
                self.definitions
                    .values()
                    .map(|d| {
                        (
                            d.key.clone(),
                            Self::eval_def(d, &state, tenant, ancestors, entitlements),
                        )
                    })
                    .collect(),
            ),
        }
    }
}

/// Every flag evaluated for one tenant at one moment. Cheap to clone.
#[derive(Debug, Clone, PartialEq)]
pub struct FlagSnapshot {
    values: Arc<HashMap<FlagKey, Evaluation>>,
}

impl Default for FlagSnapshot {
    /// The empty snapshot (every flag off), shared: no allocation.
    fn default() -> Self {
        static EMPTY: std::sync::OnceLock<Arc<HashMap<FlagKey, Evaluation>>> =
            std::sync::OnceLock::new();
        Self {
            values: EMPTY.get_or_init(|| Arc::new(HashMap::new())).clone(),
        }
    }
}

impl FlagSnapshot {
    /// Whether a boolean flag is on (unknown and non-boolean flags are off).
    pub fn enabled(&self, flag: &str) -> bool {
        self.values
            .get(flag)
            .and_then(|e| e.value.as_bool())
            .unwrap_or(false)
    }

    /// A flag's evaluation, with its reason.
    pub fn get(&self, flag: &str) -> Option<&Evaluation> {
        self.values.get(flag)
    }
}
