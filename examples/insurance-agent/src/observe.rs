//! Observability: Prometheus metrics at `GET /metrics`, liveness at
//! `GET /health/live`, readiness at `GET /health/ready` (every tenant's own
//! data path probed), a tenant admin's view of their tenant at
//! `GET /health/tenant`, and the pipeline's refusals audited through a
//! bounded queue.
//!
//! | series | kind | labels |
//! |---|---|---|
//! | `tenancy_requests_total` | counter | `tenant`, `status` class |
//! | `tenancy_request_duration_seconds` | histogram | `tenant` |
//! | `tenancy_quota_refusals_total` | counter | `tenant`, `resource` |
//! | `tenancy_usage`, `tenancy_usage_ratio` | gauge | `tenant`, `resource` |
//! | `tenancy_pool_open` | gauge | `placement` (pools open) |
//! | `tenancy_pool_connections`, `tenancy_pool_idle_connections` | gauge | `placement` |
//! | `tenancy_audit_queue_depth` | gauge | — (refusals waiting to be written) |
//! | `tenancy_audit_queue_failed_total` | gauge | — |
//!
//! Tenant labels are capped ([`TENANT_LABELS`]; further tenants are
//! `tenant="other"`). `/metrics` answers loopback clients, or anyone with
//! `Authorization: Bearer $INSURANCE_METRICS_TOKEN` when that is set.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use axum::Json;
use axum::extract::{ConnectInfo, State};
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tenancy_core::TenantContext;
use tenancy_core::audit::{AuditError, AuditEvent, AuditQueue, AuditSink};
use tenancy_core::health::{KeyProbe, Status, TenantHealth};
use tenancy_core::telemetry::TenantMetrics;

use crate::api::{ApiError, AppState, Caller};
use crate::data::Data;

/// Distinct `tenant` label values before further tenants are `other`.
pub const TENANT_LABELS: usize = 1_000;

/// Latency buckets of `tenancy_request_duration_seconds`, in seconds.
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// How long one tenant's probes may take before it counts as unhealthy.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The process's Prometheus recorder (installed once: the `metrics` facade
/// has one global recorder).
pub fn prometheus() -> Result<PrometheusHandle, crate::app::Error> {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("tenancy_request_duration_seconds".into()),
            &LATENCY_BUCKETS,
        )?
        .install_recorder()
        .or_else(|e| {
            // Another thread installed it first.
            HANDLE.get().cloned().ok_or(e)
        })?;
    Ok(HANDLE.get_or_init(|| handle).clone())
}

/// What the server observes with.
#[derive(Clone)]
pub struct Observer {
    /// Renders `/metrics`.
    pub prometheus: PrometheusHandle,
    /// Per-tenant series with the label cap.
    pub tenants: Arc<TenantMetrics>,
    /// The pipeline's refusals, on their way to the tenants' audit logs.
    pub audit: Arc<AuditQueue>,
    /// The bearer token `/metrics` asks remote clients for.
    pub token: Option<Arc<str>>,
}

impl std::fmt::Debug for Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Observer").finish_non_exhaustive()
    }
}

impl Observer {
    /// The recorder, the label cap, and a queue of 10 000 refusals writing
    /// into `data`'s audit logs.
    pub fn new(data: &Data, token: Option<String>) -> Result<Self, crate::app::Error> {
        Ok(Self {
            prometheus: prometheus()?,
            tenants: Arc::new(TenantMetrics::new(TENANT_LABELS)),
            audit: Arc::new(AuditQueue::spawn(
                Arc::new(TenantLogSink { data: data.clone() }),
                10_000,
            )),
            token: token.filter(|t| !t.is_empty()).map(Into::into),
        })
    }
}

/// Writes an event into its tenant's own audit log, in a transaction of
/// its own (the one door: `Data::begin_write`).
struct TenantLogSink {
    data: Data,
}

#[async_trait]
impl AuditSink for TenantLogSink {
    async fn record(&self, event: AuditEvent) -> Result<(), AuditError> {
        let sink = |e: &dyn std::fmt::Display| AuditError::Sink(e.to_string());
        let tenant = self
            .data
            .tenant(event.tenant)
            .await
            .map_err(|e| sink(&e))?
            .ok_or_else(|| AuditError::Sink(format!("no tenant {}", event.tenant)))?;
        let ctx = TenantContext::new(tenant);
        let mut tx = self.data.begin_write(&ctx).await.map_err(|e| sink(&e))?;
        self.data
            .audit()
            .append(&mut tx, event)
            .await
            .map_err(|e| sink(&e))?;
        tx.commit().await.map_err(|e| sink(&e))
    }
}

/// Quota thresholds (80 / 95 / 100 % of a monthly limit) as audit events
/// in the tenant's own log (`quota.threshold` of the resource), through the
/// observer's queue; a full queue is counted, never blocks the request.
pub struct AuditedThresholds(pub Arc<AuditQueue>);

impl tenancy_core::quota::QuotaEvents for AuditedThresholds {
    fn threshold_crossed(&self, e: &tenancy_core::quota::ThresholdCrossed) {
        let event = AuditEvent::system(e.tenant, "quota", "quota.threshold", e.resource.as_ref())
            .with_details(serde_json::json!({
                "resource": e.resource.to_string(),
                "percent": e.percent,
                "used": e.used,
                "limit": e.limit,
                "period_start": e.period_start,
            }));
        if let Err(err) = self.0.try_record(event) {
            tracing::warn!(tenant.id = %e.tenant, error = %err, "quota threshold not audited");
        }
    }
}

/// `GET /metrics`: Prometheus text format.
#[utoipa::path(get, path = "/metrics", responses(
    (status = 200, description = "Prometheus text exposition format", content_type = "text/plain"),
    (status = 403, description = "Not loopback and no valid `INSURANCE_METRICS_TOKEN` bearer token")))]
pub async fn metrics(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: http::HeaderMap,
) -> Response {
    let observer = &state.observer;
    let presented = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let allowed = match (&observer.token, presented) {
        (Some(token), Some(p)) => constant_time_eq(token.as_bytes(), p.as_bytes()),
        (Some(_), None) => peer.ip().is_loopback(),
        (None, _) => peer.ip().is_loopback(),
    };
    if !allowed {
        return ApiError::forbidden(
            "metrics are served to loopback clients, or with the bearer token in \
             INSURANCE_METRICS_TOKEN",
        )
        .into_response();
    }
    for pool in state.data.pool_stats() {
        let placement = pool.placement;
        ::metrics::gauge!("tenancy_pool_open", "placement" => placement).set(pool.pools as f64);
        if let Some((size, idle)) = pool.connections {
            ::metrics::gauge!("tenancy_pool_connections", "placement" => placement)
                .set(f64::from(size));
            ::metrics::gauge!("tenancy_pool_idle_connections", "placement" => placement)
                .set(idle as f64);
        }
    }
    let queue = observer.audit.stats();
    let depth = queue
        .enqueued
        .saturating_sub(queue.recorded)
        .saturating_sub(queue.failed);
    ::metrics::gauge!("tenancy_audit_queue_depth").set(depth as f64);
    ::metrics::gauge!("tenancy_audit_queue_failed_total").set(queue.failed as f64);
    // Messages waiting for their webhook (none configured, or failing).
    for channel in [crate::billing::BILLING, crate::billing::ALERTS] {
        match state.data.outbox(channel).pending(channel).await {
            Ok(n) => {
                ::metrics::gauge!("tenancy_outbox_pending", "channel" => channel).set(n as f64);
            }
            Err(e) => tracing::warn!(channel, error = %e, "outbox not counted"),
        }
    }
    observer.prometheus.run_upkeep();
    (
        [(
            http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        observer.prometheus.render(),
    )
        .into_response()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `GET /health/live`: the process is up and answering.
#[utoipa::path(get, path = "/health/live", responses((status = 200, description = "Alive")))]
pub async fn live() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "live" }))
}

/// The probes of one tenant: its own data path (its SQLite file, or its
/// transaction on PostgreSQL through its placement) and its keys.
fn probes(data: &Data) -> TenantHealth {
    let health = TenantHealth::new(PROBE_TIMEOUT).probe(KeyProbe::new(data.keyring_shared()));
    data.database_probe(health)
}

/// `GET /health/ready`: the tenant registry answers and every serving
/// tenant's own data path and keys work. 503 when any does not; the body
/// counts tenants (which ones is logged, not published).
#[utoipa::path(get, path = "/health/ready", responses(
    (status = 200, description = "Ready"), (status = 503, description = "Not ready")))]
pub async fn ready(State(state): State<AppState>) -> Response {
    let tenants = match state.data.tenant_store().list().await {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(error = %e, "readiness: the tenant registry does not answer");
            return not_ready(serde_json::json!({ "registry": "unavailable" }));
        }
    };
    let health = probes(&state.data);
    let serving: Vec<_> = tenants
        .into_iter()
        .filter(|t| tenancy_core::gate::check(t, chrono::Utc::now()).is_ok())
        .collect();
    let mut healthy = 0usize;
    let mut unhealthy = 0usize;
    // Eight tenants at a time: readiness must not become the load.
    for chunk in serving.chunks(8) {
        let reports = futures_util::future::join_all(chunk.iter().map(|t| health.check(t))).await;
        for r in reports {
            if r.status == Status::Unhealthy {
                unhealthy += 1;
                let failed: Vec<String> = r
                    .probes
                    .iter()
                    .filter(|p| p.status == Status::Unhealthy)
                    .map(|p| format!("{}: {}", p.name, p.detail))
                    .collect();
                tracing::warn!(tenant.id = %r.tenant, probes = ?failed, "readiness: tenant unhealthy");
            } else {
                healthy += 1;
            }
        }
    }
    let body = serde_json::json!({
        "status": if unhealthy == 0 { "ready" } else { "not ready" },
        "tenants": { "healthy": healthy, "unhealthy": unhealthy },
    });
    if unhealthy == 0 {
        Json(body).into_response()
    } else {
        not_ready(body)
    }
}

fn not_ready(body: serde_json::Value) -> Response {
    (
        http::StatusCode::SERVICE_UNAVAILABLE,
        [(http::header::RETRY_AFTER, "5")],
        Json(body),
    )
        .into_response()
}

/// One probe's result.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ProbeView {
    /// `database` or `keys`.
    pub name: String,
    /// `healthy`, `degraded` or `unhealthy`.
    pub status: String,
    /// What it found.
    pub detail: String,
    /// How long it took, milliseconds.
    pub elapsed_ms: u64,
}

/// The caller's tenant's health.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct TenantHealthView {
    /// The worst status of its probes.
    pub status: String,
    /// Each probe.
    pub probes: Vec<ProbeView>,
}

fn status_name(s: Status) -> &'static str {
    match s {
        Status::Healthy => "healthy",
        Status::Degraded => "degraded",
        _ => "unhealthy",
    }
}

/// `GET /health/tenant`: the caller's tenant's probes (tenant admins).
#[utoipa::path(get, path = "/health/tenant",
    responses((status = 200, body = TenantHealthView), (status = 403)), security(("bearer" = [])))]
pub async fn tenant(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<TenantHealthView>, ApiError> {
    if caller.role != tenancy_core::Role::Admin {
        return Err(ApiError::forbidden(
            "only tenant admins see the tenant's health",
        ));
    }
    let report = probes(&state.data).check(caller.ctx.tenant()).await;
    Ok(Json(TenantHealthView {
        status: status_name(report.status).to_owned(),
        probes: report
            .probes
            .into_iter()
            .map(|p| ProbeView {
                name: p.name,
                status: status_name(p.status).to_owned(),
                detail: p.detail,
                elapsed_ms: u64::try_from(p.elapsed.as_millis()).unwrap_or(u64::MAX),
            })
            .collect(),
    }))
}
