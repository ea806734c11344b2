//! Maintenance mode per tenant: while the tenant setting `maintenance` is
//! set (and its `until`, if any, is ahead), the request pipeline answers the
//! tenant's requests `503` with `Retry-After` (problem `tenant-maintenance`),
//! except for operators ([`crate::pipeline::RequestPipeline::maintenance_bypass`];
//! impersonated sessions — an operator acting as a user — always pass).
//!
//! ```json
//! { "maintenance": { "until": "2026-12-07T12:00:00Z", "message": "Moving to a new region" } }
//! ```
//!
//! A setting that cannot be read keeps the tenant closed (fail closed).
//!
//! ```
//! use chrono::{Duration, Utc};
//! use tenancy_core::maintenance::Maintenance;
//! use tenancy_core::{Tenant, TenantId};
//!
//! let now = Utc::now();
//! let window = Maintenance::until(now + Duration::minutes(10)).with_message("Upgrading");
//! let mut t = Tenant::new(TenantId::new_v4(), "acme".parse()?, "Acme");
//! window.apply_to(&mut t.settings);
//!
//! let m = Maintenance::of(&t)?.expect("set");
//! assert!(m.in_effect_at(now));
//! assert_eq!(m.retry_after(now), 600);
//! assert!(!m.in_effect_at(now + Duration::minutes(11)));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::time::Duration as StdDuration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::Tenant;

/// The tenant setting holding the maintenance window.
pub const MAINTENANCE_SETTING: &str = "maintenance";

/// `Retry-After` when the window has no end: five minutes.
pub const OPEN_ENDED_RETRY: StdDuration = StdDuration::from_secs(300);

/// A tenant's maintenance window.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Maintenance {
    /// When it is expected to end: after it the tenant serves again by
    /// itself. `None`: until the setting is removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<DateTime<Utc>>,
    /// What clients are told (the problem's `detail`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl Maintenance {
    /// A window without an end.
    pub fn open_ended() -> Self {
        Self::default()
    }

    /// A window ending at `until`.
    pub fn until(until: DateTime<Utc>) -> Self {
        Self {
            until: Some(until),
            message: None,
        }
    }

    /// With the message clients see.
    pub fn with_message(mut self, message: impl Into<String>) -> Self {
        self.message = Some(message.into());
        self
    }

    /// The window in `tenant`'s settings: `Ok(None)` when absent (or
    /// `null`), an error when the setting is malformed.
    pub fn of(tenant: &Tenant) -> Result<Option<Self>, serde_json::Error> {
        match tenant.settings.get(MAINTENANCE_SETTING) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(v) => serde_json::from_value(v.clone()).map(Some),
        }
    }

    /// Writes the window into a tenant's `settings` object (replacing a
    /// non-object settings value).
    pub fn apply_to(&self, settings: &mut serde_json::Value) {
        if !settings.is_object() {
            *settings = serde_json::Value::Object(serde_json::Map::new());
        }
        if let (Some(map), Ok(value)) = (settings.as_object_mut(), serde_json::to_value(self)) {
            map.insert(MAINTENANCE_SETTING.to_owned(), value);
        }
    }

    /// Removes any window from a tenant's `settings`.
    pub fn lift(settings: &mut serde_json::Value) {
        if let Some(map) = settings.as_object_mut() {
            map.remove(MAINTENANCE_SETTING);
        }
    }

    /// Whether the window is open at `now`.
    pub fn in_effect_at(&self, now: DateTime<Utc>) -> bool {
        self.until.is_none_or(|u| now < u)
    }

    /// Seconds until the window ends (at least 1), or
    /// [`OPEN_ENDED_RETRY`] when it has no end.
    pub fn retry_after(&self, now: DateTime<Utc>) -> u64 {
        match self.until {
            Some(u) => {
                let left = (u - now).to_std().unwrap_or_default();
                crate::problem::secs_up(left).max(1)
            }
            None => OPEN_ENDED_RETRY.as_secs(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TenantId;

    #[test]
    fn malformed_and_absent_settings() {
        let mut t = Tenant::new(TenantId::new_v4(), "acme".parse().unwrap(), "Acme");
        assert_eq!(Maintenance::of(&t).unwrap(), None);
        t.settings = serde_json::json!({"maintenance": {"until": "soon"}});
        assert!(Maintenance::of(&t).is_err());
        t.settings = serde_json::json!({"maintenance": {"unknown": 1}});
        assert!(Maintenance::of(&t).is_err());
        t.settings = serde_json::json!({"maintenance": {}});
        let m = Maintenance::of(&t).unwrap().unwrap();
        assert!(m.in_effect_at(Utc::now()));
        assert_eq!(m.retry_after(Utc::now()), 300);
        Maintenance::lift(&mut t.settings);
        assert_eq!(Maintenance::of(&t).unwrap(), None);
    }
}
