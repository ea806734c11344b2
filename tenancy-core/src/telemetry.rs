//! Per-tenant metrics through the [`metrics`](https://docs.rs/metrics)
//! facade (feature `metrics`), with a cardinality guard.
//!
//! A label per tenant is what makes a dashboard useful and what sinks a
//! time-series database once there are tens of thousands of tenants.
//! [`TenantMetrics`] gives the first `max_tenants` tenants it sees their own
//! `tenant` label and folds every other one into `tenant="other"`; forget
//! offboarded tenants with [`TenantMetrics::forget`] to free their slot.
//!
//! | metric | kind | labels |
//! |---|---|---|
//! | `tenancy_requests_total` | counter | `tenant`, `status` (`2xx`, `4xx`, …) |
//! | `tenancy_request_duration_seconds` | histogram | `tenant` (admitted requests, admission to response) |
//! | `tenancy_quota_refusals_total` | counter | `tenant`, `resource` |
//! | `tenancy_usage` | gauge | `tenant`, `resource` |
//! | `tenancy_usage_ratio` | gauge | `tenant`, `resource` (used ÷ limit) |
//!
//! Install any `metrics` recorder (e.g. `metrics-exporter-prometheus`);
//! without one, these calls do nothing.
//!
//! ```
//! use tenancy_core::telemetry::TenantMetrics;
//! use tenancy_core::TenantId;
//!
//! let metrics = TenantMetrics::new(1_000);
//! let tenant = TenantId::new_v4();
//! metrics.request(tenant, 200);
//! metrics.quota_refused(tenant, "api_calls");
//! metrics.usage(tenant, "customers", 420, Some(500));
//! assert_eq!(metrics.label(tenant), tenant.to_string());
//! ```

use std::collections::HashSet;
use std::sync::{Mutex, PoisonError};

use crate::TenantId;

/// The label value for tenants beyond the cardinality limit.
pub const OTHER: &str = "other";

/// Records per-tenant metrics with a cap on distinct tenant labels.
#[derive(Debug)]
pub struct TenantMetrics {
    max_tenants: usize,
    labelled: Mutex<HashSet<TenantId>>,
}

impl TenantMetrics {
    /// At most `max_tenants` distinct `tenant` label values (plus `other`).
    pub fn new(max_tenants: usize) -> Self {
        Self {
            max_tenants,
            labelled: Mutex::new(HashSet::new()),
        }
    }

    /// The `tenant` label value for `tenant`: its id while there is room,
    /// otherwise [`OTHER`].
    pub fn label(&self, tenant: TenantId) -> String {
        let mut set = self.labelled.lock().unwrap_or_else(PoisonError::into_inner);
        if set.contains(&tenant) {
            return tenant.to_string();
        }
        if set.len() < self.max_tenants {
            set.insert(tenant);
            return tenant.to_string();
        }
        OTHER.to_owned()
    }

    /// Frees the label slot of a tenant (after offboarding).
    pub fn forget(&self, tenant: TenantId) {
        self.labelled
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&tenant);
    }

    /// How many tenants have their own label.
    pub fn labelled(&self) -> usize {
        self.labelled
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Counts a request of `tenant` that ended with HTTP `status`.
    pub fn request(&self, tenant: TenantId, status: u16) {
        let class = match status {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        ::metrics::counter!("tenancy_requests_total", "tenant" => self.label(tenant), "status" => class)
            .increment(1);
    }

    /// Records how long an admitted request of `tenant` took.
    pub fn latency(&self, tenant: TenantId, elapsed: std::time::Duration) {
        ::metrics::histogram!("tenancy_request_duration_seconds", "tenant" => self.label(tenant))
            .record(elapsed.as_secs_f64());
    }

    /// Counts a quota refusal of `tenant` for `resource`.
    pub fn quota_refused(&self, tenant: TenantId, resource: &str) {
        ::metrics::counter!(
            "tenancy_quota_refusals_total",
            "tenant" => self.label(tenant),
            "resource" => resource.to_owned()
        )
        .increment(1);
    }

    /// Sets the usage of `resource` by `tenant`, and its ratio to `limit`.
    pub fn usage(&self, tenant: TenantId, resource: &str, used: u64, limit: Option<u64>) {
        let label = self.label(tenant);
        #[allow(clippy::cast_precision_loss)] // gauges are f64; usage far below 2^52
        let used = used as f64;
        ::metrics::gauge!("tenancy_usage", "tenant" => label.clone(), "resource" => resource.to_owned())
            .set(used);
        if let Some(limit) = limit.filter(|l| *l > 0) {
            #[allow(clippy::cast_precision_loss)]
            let ratio = used / limit as f64;
            ::metrics::gauge!("tenancy_usage_ratio", "tenant" => label, "resource" => resource.to_owned())
                .set(ratio);
        }
    }
}
