//! Per-tenant metrics with a cardinality guard, and tenant health checks.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::sync::Arc;
use std::time::Duration;

use tenancy_core::crypto::keys::{InMemoryKeyStore, Keyring, LocalKeyProvider};
use tenancy_core::health::{FnProbe, KeyProbe, QuotaHeadroomProbe, Status, TenantHealth};
use tenancy_core::{Tenant, TenantId};

#[cfg(feature = "metrics")]
#[test]
fn metrics_are_labelled_by_tenant_up_to_the_cardinality_limit() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    use tenancy_core::telemetry::{OTHER, TenantMetrics};

    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let tenants: Vec<TenantId> = (0..5).map(|_| TenantId::new_v4()).collect();
    let m = TenantMetrics::new(3);
    metrics::with_local_recorder(&recorder, || {
        for (i, t) in tenants.iter().enumerate() {
            for _ in 0..=i {
                m.request(*t, 200);
            }
            m.request(*t, 429);
            m.quota_refused(*t, "api_calls");
            m.usage(*t, "customers", 45, Some(50));
        }
    });
    assert_eq!(m.labelled(), 3);
    let mut requests = std::collections::BTreeMap::new();
    let mut ratio = None;
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let labels: std::collections::BTreeMap<String, String> = key
            .key()
            .labels()
            .map(|l| (l.key().to_owned(), l.value().to_owned()))
            .collect();
        match (key.key().name(), value) {
            ("tenancy_requests_total", DebugValue::Counter(n)) if labels["status"] == "2xx" => {
                requests.insert(labels["tenant"].clone(), n);
            }
            ("tenancy_usage_ratio", DebugValue::Gauge(g))
                if labels["tenant"] == tenants[0].to_string() =>
            {
                ratio = Some(g.into_inner());
            }
            _ => {}
        }
    }
    // Three tenants with their own label, the other two folded into "other"
    // (4 + 5 successful requests).
    assert_eq!(requests.len(), 4, "{requests:?}");
    assert_eq!(requests[&tenants[0].to_string()], 1);
    assert_eq!(requests[&tenants[2].to_string()], 3);
    assert_eq!(requests[OTHER], 9);
    assert_eq!(ratio, Some(0.9));
    // Forgetting a tenant frees its slot.
    m.forget(tenants[0]);
    assert_eq!(m.label(tenants[4]), tenants[4].to_string());
    assert_eq!(m.label(TenantId::new_v4()), OTHER);
}

fn keyring() -> Arc<Keyring> {
    Arc::new(Keyring::new(
        Arc::new(LocalKeyProvider::new(
            LocalKeyProvider::master_from_base64("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8")
                .unwrap(),
        )),
        Arc::new(InMemoryKeyStore::default()),
    ))
}

#[tokio::test]
async fn health_reports_the_worst_probe_and_every_detail() {
    let keys = keyring();
    let tenant = Tenant::new(TenantId::new_v4(), "acme".parse().unwrap(), "Acme");
    let usage = |headroom: u64| {
        move |_t: TenantId| async move {
            Ok(vec![
                ("customers".to_string(), 100 - headroom, 100),
                ("agents".to_string(), 1, 10),
            ])
        }
    };
    let healthy = TenantHealth::new(Duration::from_secs(1))
        .probe(KeyProbe::new(keys.clone()))
        .probe(QuotaHeadroomProbe::new(usage(50), 0.9));
    let r = healthy.check(&tenant).await;
    assert_eq!(r.status, Status::Healthy, "{r:?}");
    assert_eq!(
        r.probes.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
        vec!["keys", "quota"]
    );
    assert_eq!(r.probes[1].detail, "customers 50/100, agents 1/10");

    let tight =
        TenantHealth::new(Duration::from_secs(1)).probe(QuotaHeadroomProbe::new(usage(5), 0.9));
    assert_eq!(tight.check(&tenant).await.status, Status::Degraded);
    let full =
        TenantHealth::new(Duration::from_secs(1)).probe(QuotaHeadroomProbe::new(usage(0), 0.9));
    assert_eq!(full.check(&tenant).await.status, Status::Unhealthy);

    keys.shred(tenant.id).await.unwrap();
    let r = healthy.check(&tenant).await;
    assert_eq!(r.status, Status::Unhealthy);
    assert_eq!(r.probes[0].status, Status::Unhealthy);

    let slow = TenantHealth::new(Duration::from_millis(20)).probe(FnProbe::new(
        "database",
        |_t: Tenant| async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok("late".to_string())
        },
    ));
    let r = slow.check(&tenant).await;
    assert_eq!(r.status, Status::Unhealthy);
    assert!(r.probes[0].detail.contains("no answer within 20 ms"));
}

#[cfg(feature = "metrics")]
#[tokio::test(flavor = "current_thread")]
async fn the_pipeline_counts_responses_and_rate_refusals_per_tenant() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    use tenancy_core::RequestMeta;
    use tenancy_core::pipeline::RequestPipeline;
    use tenancy_core::plan::PlanCatalog;
    use tenancy_core::quota::MemoryQuota;
    use tenancy_core::resolve::{HeaderStrategy, ResolverChain, SimpleRequest};
    use tenancy_core::store::InMemoryTenantStore;
    use tenancy_core::telemetry::TenantMetrics;

    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let acme = Tenant::new(TenantId::new_v4(), "acme".parse().unwrap(), "Acme")
        .with_plan(tenancy_core::PlanId::new("small"));
    let catalog = PlanCatalog::from_json(
        r#"{"plans": [{"id": "small", "name": "Small",
            "limits": {"api_calls": {"rate": {"per_minute": 2}}}}]}"#,
    )
    .unwrap();
    let pipeline = RequestPipeline::new(
        ResolverChain::new().with(HeaderStrategy::tenant_id()),
        Arc::new(InMemoryTenantStore::with_tenants([acme.clone()]).unwrap()),
    )
    .with_plans(Arc::new(catalog))
    .with_rate_limit(Arc::new(MemoryQuota::new()), "api_calls")
    .with_metrics(Arc::new(TenantMetrics::new(10)));
    let req = SimpleRequest::new("/").with_header("x-tenant-id", acme.id.to_string());
    let mut statuses = Vec::new();
    for _ in 0..3 {
        // What an adapter does: admit, then report the response status.
        let status = match pipeline.admit(&req, None, RequestMeta::default()).await {
            Ok(_) => 200,
            Err(r) => r.problem().status,
        };
        pipeline.record_response(Some(acme.id), status);
        statuses.push(status);
    }
    assert_eq!(statuses, [200, 200, 429]);
    let mut seen = std::collections::BTreeMap::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let labels: Vec<String> = key
            .key()
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        if let DebugValue::Counter(n) = value {
            seen.insert(format!("{} {}", key.key().name(), labels.join(",")), n);
        }
    }
    let t = acme.id;
    assert_eq!(
        seen[&format!("tenancy_requests_total tenant={t},status=2xx")],
        2
    );
    assert_eq!(
        seen[&format!("tenancy_requests_total tenant={t},status=4xx")],
        1
    );
    assert_eq!(
        seen[&format!("tenancy_quota_refusals_total tenant={t},resource=api_calls")],
        1
    );
}
