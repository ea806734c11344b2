//! Plans as data, overrides, plan changes and downgrades.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::sync::Arc;

use serde_json::json;
use tenancy_core::plan::{
    DowngradePolicy, FlagValue, Limit, Overrides, PlanCatalog, PlanError, RateSpec,
};
use tenancy_core::quota::{MemoryQuota, QuotaError};
use tenancy_core::{PlanId, Tenant, TenantContext, TenantId};

const CATALOG: &str = r#"{
  "plans": [
    { "id": "free", "name": "Free",
      "limits": { "users": { "stock": 3 }, "storage_bytes": { "stock": 1000 },
                  "api_calls": { "rate": { "per_minute": 60, "per_hour": 1000 } },
                  "sessions": { "concurrency": 2 } },
      "features": { "advanced_analytics": false, "theme": "basic" } },
    { "id": "professional", "name": "Professional",
      "limits": { "users": { "stock": 50 }, "storage_bytes": { "stock": 100000 },
                  "api_calls": { "rate": { "per_hour": 20000 } },
                  "sessions": { "concurrency": 20 } },
      "features": { "advanced_analytics": true, "theme": "custom" } },
    { "id": "enterprise", "name": "Enterprise",
      "limits": { "users": "unlimited", "api_calls": "unlimited" },
      "features": { "advanced_analytics": true } }
  ]
}"#;

fn catalog() -> PlanCatalog {
    PlanCatalog::from_json(CATALOG).unwrap()
}

#[test]
fn catalog_loads_and_entitlements_follow_the_plan() {
    let c = catalog();
    let e = c
        .entitlements(&"professional".into(), &Overrides::default())
        .unwrap();
    assert_eq!(e.stock_limit("users"), Some(50));
    assert_eq!(
        e.limit("api_calls"),
        Some(&Limit::Rate(RateSpec {
            per_hour: Some(20000),
            ..RateSpec::default()
        }))
    );
    assert_eq!(e.feature("theme"), Some(&FlagValue::Str("custom".into())));
    let ent = c
        .entitlements(&"enterprise".into(), &Overrides::default())
        .unwrap();
    assert_eq!(ent.limit("users"), Some(&Limit::Unlimited));
    assert!(matches!(
        c.entitlements(&"gold".into(), &Overrides::default()),
        Err(PlanError::UnknownPlan(_))
    ));
}

#[cfg(feature = "toml")]
#[test]
fn catalog_loads_from_toml() {
    let c = PlanCatalog::from_toml(
        r#"
        [[plans]]
        id = "free"
        name = "Free"
        [plans.limits]
        users = { stock = 5 }
        api_calls = { rate = { per_minute = 60 } }
        exports = "unlimited"
        [plans.features]
        bulk_export = false
        "#,
    )
    .unwrap();
    let e = c
        .entitlements(&"free".into(), &Overrides::default())
        .unwrap();
    assert_eq!(e.stock_limit("users"), Some(5));
    assert_eq!(e.limit("exports"), Some(&Limit::Unlimited));
    let bad = PlanCatalog::from_toml("[[plans]]\nid = \"x\"\nname = \"X\"\nlimts = {}\n");
    assert!(matches!(bad, Err(PlanError::Parse { format: "toml", .. })));
}

#[test]
fn invalid_catalogs_are_refused_with_reasons() {
    let kind = PlanCatalog::from_json(
        r#"{"plans": [
          {"id": "a", "name": "A", "limits": {"users": {"stock": 1}}},
          {"id": "b", "name": "B", "limits": {"users": {"concurrency": 1}}}]}"#,
    );
    assert!(
        matches!(kind, Err(PlanError::KindMismatch { .. })),
        "{kind:?}"
    );
    let dup = PlanCatalog::from_json(
        r#"{"plans": [{"id": "a", "name": "A"}, {"id": "a", "name": "A2"}]}"#,
    );
    assert!(matches!(dup, Err(PlanError::DuplicatePlan(_))));
    let flag = PlanCatalog::from_json(
        r#"{"plans": [{"id": "a", "name": "A", "features": {"x": true}},
                      {"id": "b", "name": "B", "features": {"x": "on"}}]}"#,
    );
    assert!(matches!(flag, Err(PlanError::FlagTypeMismatch { .. })));
    for text in [
        r#"{"plans": [{"id": "a", "name": "A", "limitz": {}}]}"#,
        r#"{"plans": [{"id": "a", "name": "A", "limits": {"u": {"rate": {"per_fortnight": 1}}}}]}"#,
        r#"{"plans": [{"id": "a", "name": "A", "limits": {"u": {"stock": -1}}}]}"#,
        r#"not json"#,
    ] {
        assert!(
            matches!(PlanCatalog::from_json(text), Err(PlanError::Parse { .. })),
            "{text}"
        );
    }
}

#[test]
fn overrides_apply_by_dotted_path() {
    let c = catalog();
    let mut o = Overrides::default();
    o.set("limits.users", json!(500))
        .set("limits.api_calls.per_hour", json!(5000))
        .set("limits.sessions", json!("unlimited"))
        .set("features.advanced_analytics", json!(true))
        .set("features.theme", json!("custom"));
    let e = c.entitlements(&"free".into(), &o).unwrap();
    assert_eq!(e.stock_limit("users"), Some(500));
    assert_eq!(
        e.limit("api_calls"),
        Some(&Limit::Rate(RateSpec {
            per_minute: Some(60),
            per_hour: Some(5000),
            ..RateSpec::default()
        }))
    );
    assert_eq!(e.limit("sessions"), Some(&Limit::Unlimited));
    assert_eq!(
        e.feature("advanced_analytics"),
        Some(&FlagValue::Bool(true))
    );
}

#[test]
fn bad_overrides_are_typed_errors_never_ignored() {
    let c = catalog();
    let cases = [
        ("limits.userz", json!(5), "unknown"),
        ("features.no_such_flag", json!(true), "unknown"),
        ("limits.api_calls.per_fortnight", json!(5), "unknown"),
        ("limits.users.per_hour", json!(5), "unknown"),
        ("quotas.users", json!(5), "unknown"),
        ("limits", json!(5), "unknown"),
        ("limits.users", json!("lots"), "type"),
        ("limits.users", json!(-1), "type"),
        ("limits.users", json!(1.5), "type"),
        ("limits.sessions", json!(5_000_000_000u64), "type"),
        ("limits.api_calls.per_hour", json!(true), "type"),
        ("limits.api_calls", json!({"per_week": 5}), "type"),
        ("features.advanced_analytics", json!("yes"), "type"),
        ("features.theme", json!(true), "type"),
    ];
    for (path, value, want) in cases {
        let mut o = Overrides::default();
        o.set(path, value.clone());
        let err = c.entitlements(&"free".into(), &o).unwrap_err();
        let ok = match want {
            "unknown" => matches!(err, PlanError::UnknownKey(_)),
            _ => matches!(err, PlanError::WrongType { .. }),
        };
        assert!(ok, "{path} = {value}: got {err:?}");
    }
}

fn ctx_with(plan: &str, c: &PlanCatalog) -> TenantContext {
    TenantContext::new(Tenant::new(
        TenantId::new_v4(),
        "acme".parse().unwrap(),
        "Acme",
    ))
    .with_entitlements(Arc::new(
        c.entitlements(&plan.into(), &Overrides::default()).unwrap(),
    ))
}

#[test]
fn plan_change_swaps_limits_and_features_together_and_reports_old_and_new() {
    let c = catalog();
    let tenant = TenantId::new_v4();
    let (e, event) = c
        .change_plan(
            tenant,
            Some(&"free".into()),
            &"professional".into(),
            &Overrides::default(),
            |_| 2,
            DowngradePolicy::Refuse,
        )
        .unwrap();
    assert_eq!(e.plan, PlanId::new("professional"));
    assert_eq!(e.stock_limit("users"), Some(50));
    assert_eq!(
        e.feature("advanced_analytics"),
        Some(&FlagValue::Bool(true))
    );
    assert_eq!(event.old, Some(PlanId::new("free")));
    assert_eq!(event.new, PlanId::new("professional"));
    assert!(event.over_limit.is_empty());

    // The change as an audit event.
    let audit = event.audit_event(&tenancy_core::audit::AuditActor::User("owner-1".into()));
    assert_eq!(
        (audit.tenant, audit.action.as_str()),
        (tenant, "plan.changed")
    );
    assert_eq!(audit.actor.id(), "owner-1");
    assert_eq!(audit.details["from"], "free");
    assert_eq!(audit.details["to"], "professional");
}

#[test]
fn downgrade_below_usage_is_refused_or_marked_over_limit() {
    let c = catalog();
    let usage = |r: &str| if r == "users" { 10 } else { 0 };
    let refused = c.change_plan(
        TenantId::new_v4(),
        Some(&"professional".into()),
        &"free".into(),
        &Overrides::default(),
        usage,
        DowngradePolicy::Refuse,
    );
    assert!(matches!(
        refused,
        Err(PlanError::DowngradeBelowUsage {
            used: 10,
            limit: 3,
            ..
        })
    ));

    let (e, event) = c
        .change_plan(
            TenantId::new_v4(),
            Some(&"professional".into()),
            &"free".into(),
            &Overrides::default(),
            usage,
            DowngradePolicy::MarkOverLimit,
        )
        .unwrap();
    assert_eq!(event.over_limit.len(), 1);
    assert_eq!(
        (event.over_limit[0].used, event.over_limit[0].limit),
        (10, 3)
    );

    // Marked over limit: existing usage stays, new consumption is refused
    // until usage falls below the limit.
    let ctx = ctx_with("professional", &c).with_entitlements(Arc::new(e));
    let quota = MemoryQuota::new();
    quota.set_used(ctx.tenant_id(), "users", 10);
    assert!(matches!(
        quota.reserve(&ctx, "users", 1),
        Err(QuotaError::Exceeded(q)) if q.used == 10 && q.limit == 3
    ));
    quota.release(&ctx, "users", 8);
    quota.reserve(&ctx, "users", 1).unwrap().commit();
}

#[test]
fn entitlements_come_from_the_tenant_record() {
    let c = catalog();
    let mut o = Overrides::default();
    o.set("limits.users", json!(7));
    let t = Tenant::new(TenantId::new_v4(), "acme".parse().unwrap(), "Acme")
        .with_plan("free".into())
        .with_plan_overrides(o);
    assert_eq!(
        c.entitlements_of(&t).unwrap().unwrap().stock_limit("users"),
        Some(7)
    );
    let planless = Tenant::new(TenantId::new_v4(), "b".parse().unwrap(), "B");
    assert!(c.entitlements_of(&planless).unwrap().is_none());
    let mut bad = Overrides::default();
    bad.set("limits.nope", json!(1));
    assert!(
        c.entitlements_of(&t.clone().with_plan_overrides(bad))
            .is_err()
    );
}

/// What needs billing's confirmation: any respect in which the new plan
/// allows more — a higher limit, a dropped or raised rate window, a rate
/// with no window, a feature turned on or raised, a changed variant, a
/// change of limit kind — and nothing else.
#[test]
fn upgrades_are_told_from_downgrades() {
    let catalog = PlanCatalog::from_json(
        r#"{"plans": [
        {"id": "base", "name": "Base", "limits": {"users": {"stock": 5},
            "api": {"rate": {"per_second": 5, "per_day": 10000}}, "sms": {"monthly": {"limit": 10, "overage": 2}}},
            "features": {"sso": false, "seats_ui": 2, "tier": "bronze"}},
        {"id": "same", "name": "Same", "limits": {"users": {"stock": 5},
            "api": {"rate": {"per_second": 5, "per_day": 10000}}, "sms": {"monthly": {"limit": 10, "overage": 2}}},
            "features": {"sso": false, "seats_ui": 2, "tier": "bronze"}},
        {"id": "burst", "name": "Burst", "limits": {"users": {"stock": 5},
            "api": {"rate": {"per_second": 500, "per_day": 10000}}, "sms": {"monthly": {"limit": 10, "overage": 2}}},
            "features": {"sso": false, "seats_ui": 2, "tier": "bronze"}},
        {"id": "nosecond", "name": "No second", "limits": {"users": {"stock": 5},
            "api": {"rate": {"per_day": 10000}}, "sms": {"monthly": {"limit": 10, "overage": 2}}},
            "features": {"sso": false, "seats_ui": 2, "tier": "bronze"}},
        {"id": "overage", "name": "Overage", "limits": {"users": {"stock": 5},
            "api": {"rate": {"per_second": 5, "per_day": 10000}}, "sms": {"monthly": {"limit": 10, "overage": 50}}},
            "features": {"sso": false, "seats_ui": 2, "tier": "bronze"}},
        {"id": "sso", "name": "SSO", "limits": {"users": {"stock": 5},
            "api": {"rate": {"per_second": 5, "per_day": 10000}}, "sms": {"monthly": {"limit": 10, "overage": 2}}},
            "features": {"sso": true, "seats_ui": 2, "tier": "bronze"}},
        {"id": "gold", "name": "Gold", "limits": {"users": {"stock": 5},
            "api": {"rate": {"per_second": 5, "per_day": 10000}}, "sms": {"monthly": {"limit": 10, "overage": 2}}},
            "features": {"sso": false, "seats_ui": 2, "tier": "gold"}},
        {"id": "smaller", "name": "Smaller", "limits": {"users": {"stock": 3},
            "api": {"rate": {"per_second": 1, "per_day": 100}}, "sms": {"monthly": {"limit": 5, "overage": 0}}},
            "features": {"sso": false, "seats_ui": 1, "tier": "bronze"}},
        {"id": "unmetered", "name": "Unmetered", "limits": {"users": "unlimited",
            "api": {"rate": {}}, "sms": {"monthly": {"limit": 10, "overage": 2}}},
            "features": {"sso": false, "seats_ui": 2, "tier": "bronze"}}
    ]}"#,
    )
    .unwrap();
    let e = |id: &str| {
        catalog
            .entitlements(&id.into(), &Overrides::default())
            .unwrap()
    };
    let base = e("base");
    for more in ["burst", "nosecond", "overage", "sso", "gold", "unmetered"] {
        assert!(e(more).grants_more_than(&base), "{more} is an upgrade");
    }
    for not_more in ["same", "smaller"] {
        assert!(
            !e(not_more).grants_more_than(&base),
            "{not_more} is no upgrade"
        );
    }
    // Turning a feature off is not more.
    assert!(!base.grants_more_than(&e("sso")));
}
