//! Tenant lifecycle transitions, hooks, trial expiry; provisioning pipelines
//! with failures injected at every step and resumed.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::{Duration, Utc};
use tenancy_core::audit::MemorySink;
use tenancy_core::crypto::keys::{InMemoryKeyStore, KeyStore, Keyring, LocalKeyProvider};
use tenancy_core::lifecycle::{
    Lifecycle, LifecycleError, LifecycleHooks, Transition, next_status, status_name,
};
use tenancy_core::provision::{
    ActivateStep, CreateKeysStep, CreateRecordStep, FnStep, InMemoryProvisioningLog, Pipeline,
    ProvisionError, ProvisionStep, ProvisioningLog, StepStatus,
};
use tenancy_core::store::{InMemoryTenantStore, TenantStore};
use tenancy_core::{Tenant, TenantId, TenantStatus};

fn statuses() -> Vec<TenantStatus> {
    let now = Utc::now();
    vec![
        TenantStatus::Trial {
            ends_at: now + Duration::days(7),
        },
        TenantStatus::Active,
        TenantStatus::Suspended {
            reason: "unpaid".into(),
        },
        TenantStatus::Offboarding {
            purge_after: now + Duration::days(30),
        },
        TenantStatus::Offboarding {
            purge_after: now - Duration::days(1),
        },
        TenantStatus::Deleted,
    ]
}

fn transitions() -> Vec<Transition> {
    vec![
        Transition::Activate,
        Transition::Suspend {
            reason: "abuse".into(),
        },
        Transition::Resume,
        Transition::Offboard {
            grace: Duration::days(30),
        },
        Transition::Restore,
        Transition::Purge,
    ]
}

#[test]
fn the_transition_table() {
    // Rows: statuses() in order (offboarding within grace, then after grace).
    // Columns: transitions() in order. Some(to) or None (invalid).
    let expected: [[Option<&str>; 6]; 6] = [
        //      activate        suspend            resume          offboard              restore         purge
        [
            Some("active"),
            Some("suspended"),
            None,
            Some("offboarding"),
            None,
            None,
        ], // trial
        [
            None,
            Some("suspended"),
            None,
            Some("offboarding"),
            None,
            None,
        ], // active
        [None, None, Some("active"), Some("offboarding"), None, None], // suspended
        [None, None, None, None, Some("active"), None],                // offboarding, in grace
        [None, None, None, None, None, Some("deleted")],               // offboarding, grace over
        [None, None, None, None, None, None],                          // deleted
    ];
    let now = Utc::now();
    for (i, from) in statuses().iter().enumerate() {
        for (j, t) in transitions().iter().enumerate() {
            let got = next_status(from, t, now).ok();
            assert_eq!(
                got.as_ref().map(status_name),
                expected[i][j],
                "{} --{}-->",
                status_name(from),
                t.name()
            );
        }
    }
    // The refusals are typed.
    let within = &statuses()[3];
    assert!(matches!(
        next_status(within, &Transition::Purge, now),
        Err(LifecycleError::GracePeriod { .. })
    ));
    assert!(matches!(
        next_status(&TenantStatus::Deleted, &Transition::Resume, now),
        Err(LifecycleError::InvalidTransition {
            from: "deleted",
            transition: "resume"
        })
    ));
    assert!(matches!(
        next_status(
            &TenantStatus::Active,
            &Transition::Suspend { reason: " ".into() },
            now
        ),
        Err(LifecycleError::Invalid(_))
    ));
    assert!(matches!(
        next_status(
            &TenantStatus::Active,
            &Transition::Offboard {
                grace: Duration::days(-1)
            },
            now
        ),
        Err(LifecycleError::Invalid(_))
    ));
}

#[derive(Default)]
struct Recorder(Mutex<Vec<String>>);

#[async_trait]
impl LifecycleHooks for Recorder {
    async fn on_created(&self, t: &Tenant) -> Result<(), String> {
        self.0.lock().unwrap().push(format!("created:{}", t.slug));
        Ok(())
    }
    async fn on_activated(&self, _t: &Tenant) -> Result<(), String> {
        self.0.lock().unwrap().push("activated".into());
        Ok(())
    }
    async fn on_suspended(&self, _t: &Tenant) -> Result<(), String> {
        self.0.lock().unwrap().push("suspended".into());
        Ok(())
    }
    async fn on_offboarding(&self, _t: &Tenant) -> Result<(), String> {
        self.0.lock().unwrap().push("offboarding".into());
        Ok(())
    }
    async fn on_deleted(&self, _t: &Tenant) -> Result<(), String> {
        self.0.lock().unwrap().push("deleted".into());
        Ok(())
    }
}

#[tokio::test]
async fn hooks_and_audit_events_follow_every_change() {
    let store = Arc::new(InMemoryTenantStore::new());
    let hooks = Arc::new(Recorder::default());
    let audit = Arc::new(MemorySink::default());
    let lc = Lifecycle::new(store.clone())
        .with_hooks(hooks.clone())
        .with_audit(audit.clone());
    let now = Utc::now();
    let t = Tenant::new(TenantId::new_v4(), "acme".parse().unwrap(), "Acme").with_status(
        TenantStatus::Trial {
            ends_at: now + Duration::days(1),
        },
    );
    let t = lc.create(t, "signup").await.unwrap();
    let t = lc.apply(&t, Transition::Activate, "billing").await.unwrap();
    let t = lc
        .apply(
            &t,
            Transition::Suspend {
                reason: "unpaid".into(),
            },
            "billing",
        )
        .await
        .unwrap();
    let t = lc.apply(&t, Transition::Resume, "billing").await.unwrap();
    let t = lc
        .apply(
            &t,
            Transition::Offboard {
                grace: Duration::days(30),
            },
            "ops",
        )
        .await
        .unwrap();
    let t = lc
        .apply_at(&t, Transition::Purge, "ops", now + Duration::days(31))
        .await
        .unwrap();
    assert_eq!(t.status, TenantStatus::Deleted);
    assert_eq!(
        store.by_id(t.id).await.unwrap().unwrap().status,
        TenantStatus::Deleted,
        "saved"
    );
    assert_eq!(
        *hooks.0.lock().unwrap(),
        vec![
            "created:acme",
            "activated",
            "suspended",
            "activated",
            "offboarding",
            "deleted"
        ]
    );
    let actions: Vec<String> = audit.events().into_iter().map(|e| e.action).collect();
    assert_eq!(
        actions,
        vec![
            "tenant.created",
            "tenant.activate",
            "tenant.suspend",
            "tenant.resume",
            "tenant.offboard",
            "tenant.purge"
        ]
    );
    assert_eq!(audit.events()[2].details["from"], "active");
    assert_eq!(audit.events()[2].details["to"], "suspended");

    // An invalid transition changes nothing.
    assert!(lc.apply(&t, Transition::Resume, "ops").await.is_err());
    assert_eq!(audit.events().len(), 6);
}

#[tokio::test]
async fn ended_trials_are_suspended() {
    let store = Arc::new(InMemoryTenantStore::new());
    let lc = Lifecycle::new(store.clone());
    let now = Utc::now();
    let ended = Tenant::new(TenantId::new_v4(), "ended".parse().unwrap(), "E").with_status(
        TenantStatus::Trial {
            ends_at: now - Duration::hours(1),
        },
    );
    let running = Tenant::new(TenantId::new_v4(), "running".parse().unwrap(), "R").with_status(
        TenantStatus::Trial {
            ends_at: now + Duration::hours(1),
        },
    );
    let active = Tenant::new(TenantId::new_v4(), "paid".parse().unwrap(), "P");
    for t in [&ended, &running, &active] {
        lc.create(t.clone(), "test").await.unwrap();
    }
    let all = [ended.id, running.id, active.id];
    let mut tenants = Vec::new();
    for id in all {
        tenants.push(store.by_id(id).await.unwrap().unwrap());
    }
    let suspended = lc.expire_trials(tenants, now).await.unwrap();
    assert_eq!(
        suspended.iter().map(|t| t.id).collect::<Vec<_>>(),
        vec![ended.id]
    );
    assert_eq!(
        store.by_id(ended.id).await.unwrap().unwrap().status,
        TenantStatus::Suspended {
            reason: "trial expired".into()
        }
    );
    assert!(matches!(
        store.by_id(running.id).await.unwrap().unwrap().status,
        TenantStatus::Trial { .. }
    ));
}

/// A step that fails while `fail` is set, counting its runs.
struct Flaky {
    name: &'static str,
    fail: Arc<Mutex<Option<&'static str>>>,
    runs: AtomicUsize,
}

#[async_trait]
impl ProvisionStep for Flaky {
    fn name(&self) -> &str {
        self.name
    }
    async fn run(&self, _t: &Tenant) -> Result<(), String> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        if *self.fail.lock().unwrap() == Some(self.name) {
            return Err(format!("{} is down", self.name));
        }
        Ok(())
    }
}

const STEPS: [&str; 7] = [
    "validate",
    "create_record",
    "allocate_storage",
    "apply_plan",
    "create_keys",
    "seed",
    "activate",
];

#[tokio::test]
async fn a_failure_at_each_step_resumes_from_that_step() {
    for failing in STEPS {
        let fail = Arc::new(Mutex::new(Some(failing)));
        let steps: Vec<Arc<Flaky>> = STEPS
            .iter()
            .map(|n| {
                Arc::new(Flaky {
                    name: n,
                    fail: fail.clone(),
                    runs: AtomicUsize::new(0),
                })
            })
            .collect();
        let log = Arc::new(InMemoryProvisioningLog::default());
        let pipeline = steps
            .iter()
            .fold(Pipeline::new(log.clone()), |p, s| p.step_arc(s.clone()));
        let tenant = Tenant::new(TenantId::new_v4(), "acme".parse().unwrap(), "Acme");

        let err = pipeline.run(&tenant).await.unwrap_err();
        assert!(
            matches!(&err, ProvisionError::StepFailed { step, .. } if step == failing),
            "{err}"
        );
        let recorded = log.steps(tenant.id).await.unwrap();
        let failed = recorded.iter().find(|r| r.step == failing).unwrap();
        assert_eq!((failed.status, failed.attempts), (StepStatus::Failed, 1));
        assert_eq!(
            failed.error.as_deref(),
            Some(format!("{failing} is down").as_str())
        );
        let k = STEPS.iter().position(|s| *s == failing).unwrap();
        assert_eq!(recorded.len(), k + 1, "nothing after the failed step ran");

        *fail.lock().unwrap() = None;
        let report = pipeline.run(&tenant).await.unwrap();
        assert!(report.is_complete());
        assert_eq!(report.ran, STEPS[k..].to_vec(), "resumed at {failing}");
        for (i, s) in steps.iter().enumerate() {
            let want = if i == k { 2 } else { 1 };
            assert_eq!(
                s.runs.load(Ordering::SeqCst),
                want,
                "{} with {failing} failing",
                s.name
            );
        }
        assert_eq!(
            report
                .steps
                .iter()
                .find(|r| r.step == failing)
                .unwrap()
                .attempts,
            2
        );
        // A third run has nothing to do.
        assert!(pipeline.run(&tenant).await.unwrap().ran.is_empty());
    }
}

#[tokio::test]
async fn the_library_steps_create_the_record_keys_and_activate() {
    let store = Arc::new(InMemoryTenantStore::new());
    let audit = Arc::new(MemorySink::default());
    let lc = Lifecycle::new(store.clone()).with_audit(audit.clone());
    let key_store = Arc::new(InMemoryKeyStore::default());
    let keys = Arc::new(Keyring::new(
        Arc::new(LocalKeyProvider::new(
            LocalKeyProvider::master_from_base64("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8")
                .unwrap(),
        )),
        key_store.clone(),
    ));
    let pipeline = Pipeline::new(Arc::new(InMemoryProvisioningLog::default()))
        .step(FnStep::new("validate", |t: Tenant| async move {
            if t.display_name.trim().is_empty() {
                Err("display name required".to_string())
            } else {
                Ok(())
            }
        }))
        .step(CreateRecordStep::new(lc.clone(), store.clone()))
        .step(CreateKeysStep::new(keys.clone()))
        .step(ActivateStep::new(lc.clone(), store.clone(), true));
    let t = Tenant::new(TenantId::new_v4(), "acme".parse().unwrap(), "Acme").with_status(
        TenantStatus::Trial {
            ends_at: Utc::now() + Duration::days(14),
        },
    );
    pipeline.run(&t).await.unwrap();
    assert_eq!(
        store.by_id(t.id).await.unwrap().unwrap().status,
        TenantStatus::Active
    );
    assert_eq!(
        key_store.keys(t.id).await.unwrap().len(),
        2,
        "data key v1 and the index root"
    );

    // Running the same steps for the same tenant again is harmless (idempotent).
    let again = Pipeline::new(Arc::new(InMemoryProvisioningLog::default()))
        .step(CreateRecordStep::new(lc.clone(), store.clone()))
        .step(CreateKeysStep::new(keys.clone()))
        .step(ActivateStep::new(lc, store.clone(), true));
    again.run(&t).await.unwrap();
    assert_eq!(key_store.keys(t.id).await.unwrap().len(), 2);
    let created = audit
        .events()
        .iter()
        .filter(|e| e.action == "tenant.created")
        .count();
    assert_eq!(created, 1);

    let bad = Tenant::new(TenantId::new_v4(), "nameless".parse().unwrap(), " ");
    assert!(pipeline.run(&bad).await.is_err());
    assert!(
        store.by_id(bad.id).await.unwrap().is_none(),
        "stopped before creating the record"
    );
}

#[tokio::test]
async fn key_rotation_and_destruction_are_audited() {
    let audit = Arc::new(MemorySink::default());
    let keys = Keyring::new(
        Arc::new(LocalKeyProvider::new(
            LocalKeyProvider::master_from_base64("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8")
                .unwrap(),
        )),
        Arc::new(InMemoryKeyStore::default()),
    )
    .with_audit(audit.clone());
    let t = TenantId::new_v4();
    keys.encrypt(t, b"c", b"v").await.unwrap();
    keys.rotate(t).await.unwrap();
    keys.rotate_kek(t).await.unwrap();
    keys.shred(t).await.unwrap();
    let events = audit.events();
    let actions: Vec<&str> = events.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions,
        vec!["key.rotated", "kek.rotated", "keys.destroyed"]
    );
    assert!(
        events
            .iter()
            .all(|e| e.tenant == t && e.actor.id() == "keyring")
    );
    assert_eq!(events[0].details["version"], 2);
}
