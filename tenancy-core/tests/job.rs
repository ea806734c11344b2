//! The job envelope reloads and gates its tenant before running.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use chrono::{Duration, Utc};
use tenancy_core::gate::Admission;
use tenancy_core::job::JobEnvelope;
use tenancy_core::store::{InMemoryTenantStore, TenantUpdate};
use tenancy_core::{
    Actor, Role, Tenant, TenantContext, TenantError, TenantId, TenantStatus, UserId, current,
};

fn setup(status: TenantStatus) -> (Tenant, InMemoryTenantStore) {
    let t = Tenant::new(TenantId::new_v4(), "acme".parse().unwrap(), "Acme");
    let store = InMemoryTenantStore::with_tenants([t.clone().with_status(status)]).unwrap();
    (t, store)
}

#[tokio::test]
async fn runs_inside_the_tenant_scope_with_fresh_tenant_data() {
    let (t, store) = setup(TenantStatus::Active);
    let user = UserId::new("ana");
    let ctx =
        TenantContext::new(t.clone()).with_actor(Actor::new(user.clone(), Role::Admin, vec![]));
    let envelope = JobEnvelope::new(&ctx, 7u32);
    assert_eq!(envelope.enqueued_by.as_ref(), Some(&user));
    let json = serde_json::to_value(&envelope).unwrap();
    assert_eq!(json["tenant_id"], t.id.to_string());
    let back: JobEnvelope<u32> = serde_json::from_value(json).unwrap();

    // Renamed after enqueueing: the job sees the current record.
    store
        .apply(t.id, &TenantUpdate::new().display_name("Acme Group"))
        .unwrap();
    let (name, in_scope, payload) = back
        .run(&store, |ctx, p| async move {
            let cur = current().unwrap();
            (
                ctx.tenant().display_name.clone(),
                cur.tenant_id() == ctx.tenant_id(),
                p,
            )
        })
        .await
        .unwrap();
    assert_eq!((name.as_str(), in_scope, payload), ("Acme Group", true, 7));
}

#[tokio::test]
async fn refuses_tenants_that_may_not_run_work() {
    let now = Utc::now();
    let cases = [
        (
            TenantStatus::Suspended {
                reason: "fraud".into(),
            },
            Admission::Serving,
            "tenant-suspended",
        ),
        (
            TenantStatus::Deleted,
            Admission::Serving,
            "tenant-not-found",
        ),
        (
            TenantStatus::Offboarding {
                purge_after: now + Duration::days(3),
            },
            Admission::Serving,
            "tenant-offboarding",
        ),
        (
            TenantStatus::Trial {
                ends_at: now - Duration::days(1),
            },
            Admission::Serving,
            "trial-expired",
        ),
        (
            TenantStatus::Suspended {
                reason: "fraud".into(),
            },
            Admission::Maintenance,
            "tenant-suspended",
        ),
        (
            TenantStatus::Deleted,
            Admission::Maintenance,
            "tenant-not-found",
        ),
    ];
    for (status, admission, code) in cases {
        let (t, store) = setup(status.clone());
        let ran = Arc::new(AtomicBool::new(false));
        let flag = ran.clone();
        let err = JobEnvelope::new(&TenantContext::new(t), ())
            .run_for(&store, admission, |_, _| async move {
                flag.store(true, Ordering::SeqCst);
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), code, "{status:?} {admission:?}");
        assert!(
            !ran.load(Ordering::SeqCst),
            "job must not run for {status:?}"
        );
    }
}

#[tokio::test]
async fn maintenance_jobs_run_for_offboarding_tenants() {
    let (t, store) = setup(TenantStatus::Offboarding {
        purge_after: Utc::now() + Duration::days(30),
    });
    let ran = JobEnvelope::new(&TenantContext::new(t), "export")
        .run_for(&store, Admission::Maintenance, |ctx, p| async move {
            (ctx.slug().to_string(), p)
        })
        .await
        .unwrap();
    assert_eq!(ran, ("acme".to_owned(), "export"));
}

#[tokio::test]
async fn unknown_tenant_is_not_found() {
    let store = InMemoryTenantStore::new();
    let ghost = Tenant::new(TenantId::new_v4(), "ghost".parse().unwrap(), "Ghost");
    let err = JobEnvelope::new(&TenantContext::new(ghost), ())
        .run(&store, |_, _| async {})
        .await
        .unwrap_err();
    assert!(matches!(err, TenantError::NotFound));
}
