//! Feature flags: evaluation order, reasons, rollout distribution.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::sync::Arc;

use proptest::prelude::*;
use tenancy_core::flags::{FlagDefinition, FlagEngine, FlagError, Reason, rollout_bucket};
use tenancy_core::plan::{FlagValue, Overrides, PlanCatalog};
use tenancy_core::{PlanId, Tenant, TenantContext, TenantId};

fn tenant(slug: &str) -> Tenant {
    Tenant::new(TenantId::new_v4(), slug.parse().unwrap(), slug)
}

#[test]
fn evaluation_order_table() {
    let catalog = PlanCatalog::from_json(
        r#"{"plans": [{"id": "pro", "name": "Pro", "features": {"analytics": true}},
                      {"id": "free", "name": "Free", "features": {"analytics": false}}]}"#,
    )
    .unwrap();
    let pro = catalog
        .entitlements(&"pro".into(), &Overrides::default())
        .unwrap();
    let free = catalog
        .entitlements(&"free".into(), &Overrides::default())
        .unwrap();
    let parent = tenant("parent");
    let child = tenant("child").with_parent(parent.id);

    struct Case {
        name: &'static str,
        kill: bool,
        own: Option<bool>,
        parent: Option<bool>,
        plan: Option<bool>, // Some(true) = pro, Some(false) = free
        rollout: Option<u8>,
        want: (bool, &'static str),
    }
    let cases = [
        Case {
            name: "kill switch beats everything",
            kill: true,
            own: Some(true),
            parent: Some(true),
            plan: Some(true),
            rollout: Some(100),
            want: (false, "kill"),
        },
        Case {
            name: "tenant override beats parent",
            kill: false,
            own: Some(false),
            parent: Some(true),
            plan: Some(true),
            rollout: Some(100),
            want: (false, "tenant"),
        },
        Case {
            name: "parent override beats plan",
            kill: false,
            own: None,
            parent: Some(true),
            plan: Some(false),
            rollout: None,
            want: (true, "parent"),
        },
        Case {
            name: "plan default beats rollout",
            kill: false,
            own: None,
            parent: None,
            plan: Some(false),
            rollout: Some(100),
            want: (false, "plan"),
        },
        Case {
            name: "plan default on",
            kill: false,
            own: None,
            parent: None,
            plan: Some(true),
            rollout: None,
            want: (true, "plan"),
        },
        Case {
            name: "rollout 100% when no plan says",
            kill: false,
            own: None,
            parent: None,
            plan: None,
            rollout: Some(100),
            want: (true, "rollout"),
        },
        Case {
            name: "rollout 0% falls to default",
            kill: false,
            own: None,
            parent: None,
            plan: None,
            rollout: Some(0),
            want: (false, "default"),
        },
        Case {
            name: "default off",
            kill: false,
            own: None,
            parent: None,
            plan: None,
            rollout: None,
            want: (false, "default"),
        },
    ];
    for c in cases {
        let mut def = FlagDefinition::boolean("analytics");
        if let Some(p) = c.rollout {
            def = def.rollout(p);
        }
        let engine = FlagEngine::new([def]);
        engine.set_kill_switch("analytics", c.kill).unwrap();
        if let Some(v) = c.own {
            engine
                .set_tenant_override(child.id, "analytics", v.into())
                .unwrap();
        }
        if let Some(v) = c.parent {
            engine
                .set_tenant_override(parent.id, "analytics", v.into())
                .unwrap();
        }
        let ent = c.plan.map(|p| if p { &pro } else { &free });
        let got = engine.evaluate("analytics", &child, &[parent.id], ent);
        let reason = match got.reason {
            Reason::KillSwitch => "kill",
            Reason::TenantOverride => "tenant",
            Reason::ParentOverride(id) => {
                assert_eq!(id, parent.id);
                "parent"
            }
            Reason::PlanDefault(ref p) => {
                assert_eq!(*p, ent.unwrap().plan);
                "plan"
            }
            Reason::Rollout { .. } => "rollout",
            Reason::Default => "default",
            _ => "other",
        };
        assert_eq!((got.value.as_bool().unwrap(), reason), c.want, "{}", c.name);
    }
}

#[test]
fn snapshot_travels_in_the_context() {
    let engine = FlagEngine::new([
        FlagDefinition::boolean("bulk_export"),
        FlagDefinition::variant("theme", FlagValue::Str("basic".into())),
    ]);
    let t = tenant("acme");
    engine
        .set_tenant_override(t.id, "bulk_export", true.into())
        .unwrap();
    engine
        .set_tenant_override(t.id, "theme", FlagValue::Str("dark".into()))
        .unwrap();
    let ctx = TenantContext::new(t.clone()).with_flags(engine.snapshot(&t, &[], None));
    assert!(ctx.feature_enabled("bulk_export"));
    assert!(ctx.require_feature("bulk_export").is_ok());
    assert_eq!(
        ctx.flags().get("theme").unwrap().value,
        FlagValue::Str("dark".into())
    );
    let err = ctx.require_feature("advanced_analytics").unwrap_err();
    assert_eq!((err.status(), err.code()), (403, "feature-not-in-plan"));
    // Changing the engine later does not change an existing snapshot.
    engine.set_kill_switch("bulk_export", true).unwrap();
    assert!(ctx.feature_enabled("bulk_export"));
    let unknown = engine.evaluate("nope", &t, &[], None);
    assert_eq!(unknown.reason, Reason::Unknown);
}

#[test]
fn flag_writes_are_validated() {
    let engine = FlagEngine::new([FlagDefinition::boolean("x")]);
    let t = TenantId::new_v4();
    assert!(matches!(
        engine.set_tenant_override(t, "y", true.into()),
        Err(FlagError::UnknownFlag(_))
    ));
    assert!(matches!(
        engine.set_tenant_override(t, "x", FlagValue::Int(1)),
        Err(FlagError::WrongType(_))
    ));
    assert!(engine.set_kill_switch("y", true).is_err());
}

#[test]
fn plan_defaults_need_no_declaration_in_the_plan_to_apply() {
    let engine = FlagEngine::new([FlagDefinition::boolean("analytics")]);
    let catalog = PlanCatalog::from_json(
        r#"{"plans": [{"id": "pro", "name": "Pro", "features": {"analytics": true}}]}"#,
    )
    .unwrap();
    let e = Arc::new(
        catalog
            .entitlements(&PlanId::new("pro"), &Overrides::default())
            .unwrap(),
    );
    let t = tenant("acme");
    assert!(engine.snapshot(&t, &[], Some(&e)).enabled("analytics"));
    assert!(!engine.snapshot(&t, &[], None).enabled("analytics"));
}

fn ids(seed: u64, n: usize) -> Vec<TenantId> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            let mut bytes = [0u8; 16];
            for chunk in bytes.chunks_mut(8) {
                // xorshift64*
                x ^= x >> 12;
                x ^= x << 25;
                x ^= x >> 27;
                chunk.copy_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
            }
            TenantId::from_uuid(uuid::Uuid::from_bytes(bytes)).unwrap()
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Over 10 000 tenants the rolled-out share is within ±2 points of the
    /// target, each tenant's bucket is stable, and raising the percentage
    /// only adds tenants.
    #[test]
    fn rollout_is_stable_and_accurate(percent in 0u8..=100, seed in any::<u64>(), flag in "[a-z_]{3,20}") {
        let tenants = ids(seed, 10_000);
        let on = |p: u8, t: TenantId| rollout_bucket(&flag, t) < u16::from(p) * 100;
        let count = tenants.iter().filter(|t| on(percent, **t)).count();
        let share = count as f64 / tenants.len() as f64 * 100.0;
        prop_assert!((share - f64::from(percent)).abs() <= 2.0, "{share} vs {percent}");
        for t in tenants.iter().take(200) {
            prop_assert_eq!(rollout_bucket(&flag, *t), rollout_bucket(&flag, *t));
            if on(percent, *t) {
                prop_assert!(on(percent.saturating_add(10).min(100), *t));
            }
        }
    }
}

#[test]
fn different_flags_roll_out_to_different_tenants() {
    let tenants = ids(7, 10_000);
    let a: Vec<bool> = tenants
        .iter()
        .map(|t| rollout_bucket("a_flag", *t) < 5000)
        .collect();
    let b: Vec<bool> = tenants
        .iter()
        .map(|t| rollout_bucket("b_flag", *t) < 5000)
        .collect();
    let same = a.iter().zip(&b).filter(|(x, y)| x == y).count();
    // Independent 50% rollouts agree on about half the tenants.
    assert!((4700..=5300).contains(&same), "{same}");
}
