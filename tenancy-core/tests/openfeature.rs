//! The OpenFeature provider over the flag engine.
#![cfg(feature = "openfeature")]
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::sync::Arc;

use open_feature::provider::FeatureProvider;
use open_feature::{EvaluationContext, EvaluationErrorCode, EvaluationReason};
use tenancy_core::flags::{FlagDefinition, FlagEngine, TenancyFlagProvider};
use tenancy_core::plan::{FlagValue, PlanCatalog};
use tenancy_core::store::InMemoryTenantStore;
use tenancy_core::{PlanId, Tenant, TenantContext, TenantId, scope};

struct World {
    provider: TenancyFlagProvider,
    parent: Tenant,
    child: Tenant,
    pro: Tenant,
}

fn world() -> World {
    let parent = Tenant::new(TenantId::new_v4(), "parent".parse().unwrap(), "P");
    let child =
        Tenant::new(TenantId::new_v4(), "child".parse().unwrap(), "C").with_parent(parent.id);
    let pro = Tenant::new(TenantId::new_v4(), "pro".parse().unwrap(), "Pro")
        .with_plan(PlanId::new("pro"));
    let engine = Arc::new(FlagEngine::new([
        FlagDefinition::boolean("bulk_export"),
        FlagDefinition::boolean("analytics"),
        FlagDefinition::variant("theme", FlagValue::Str("basic".into())),
        FlagDefinition::variant("max_tabs", FlagValue::Int(3)),
    ]));
    engine
        .set_tenant_override(parent.id, "bulk_export", true.into())
        .unwrap();
    let catalog = Arc::new(
        PlanCatalog::from_json(
            r#"{"plans": [{"id": "pro", "name": "Pro", "features": {"analytics": true, "theme": "dark"}}]}"#,
        )
        .unwrap(),
    );
    let store = Arc::new(
        InMemoryTenantStore::with_tenants([parent.clone(), child.clone(), pro.clone()]).unwrap(),
    );
    World {
        provider: TenancyFlagProvider::new(engine, store).with_plans(catalog),
        parent,
        child,
        pro,
    }
}

fn for_tenant(t: &Tenant) -> EvaluationContext {
    EvaluationContext::default().with_targeting_key(t.id.to_string())
}

#[tokio::test]
async fn resolves_through_hierarchy_and_plans_with_reasons() {
    let w = world();
    let d = w
        .provider
        .resolve_bool_value("bulk_export", &for_tenant(&w.child))
        .await
        .unwrap();
    assert!(d.value);
    assert_eq!(d.reason, Some(EvaluationReason::TargetingMatch));
    assert_eq!(d.variant.as_deref(), Some("parent-override"));

    let d = w
        .provider
        .resolve_bool_value("analytics", &for_tenant(&w.pro))
        .await
        .unwrap();
    assert!(d.value);
    assert_eq!(d.reason, Some(EvaluationReason::Static));

    let d = w
        .provider
        .resolve_string_value("theme", &for_tenant(&w.pro))
        .await
        .unwrap();
    assert_eq!(d.value, "dark");
    let d = w
        .provider
        .resolve_int_value("max_tabs", &for_tenant(&w.parent))
        .await
        .unwrap();
    assert_eq!((d.value, d.reason), (3, Some(EvaluationReason::Default)));
}

#[tokio::test]
async fn errors_are_the_openfeature_codes() {
    let w = world();
    let code = |r: Result<_, open_feature::EvaluationError>| r.map(|_: ()| ()).unwrap_err().code;
    let unknown = w
        .provider
        .resolve_bool_value("nope", &for_tenant(&w.child))
        .await
        .map(|_| ());
    assert_eq!(code(unknown), EvaluationErrorCode::FlagNotFound);
    let bad_key = w
        .provider
        .resolve_bool_value(
            "analytics",
            &EvaluationContext::default().with_targeting_key("acme"),
        )
        .await
        .map(|_| ());
    assert_eq!(code(bad_key), EvaluationErrorCode::InvalidContext);
    let stranger = w
        .provider
        .resolve_bool_value(
            "analytics",
            &EvaluationContext::default().with_targeting_key(TenantId::new_v4().to_string()),
        )
        .await
        .map(|_| ());
    assert_eq!(code(stranger), EvaluationErrorCode::InvalidContext);
    let wrong_type = w
        .provider
        .resolve_bool_value("theme", &for_tenant(&w.pro))
        .await
        .map(|_| ());
    assert_eq!(code(wrong_type), EvaluationErrorCode::TypeMismatch);
    let no_key = w
        .provider
        .resolve_bool_value("analytics", &EvaluationContext::default())
        .await
        .map(|_| ());
    assert_eq!(code(no_key), EvaluationErrorCode::TargetingKeyMissing);
}

#[tokio::test]
async fn without_a_targeting_key_the_current_tenant_scope_is_used() {
    let w = world();
    let d = scope(TenantContext::new(w.child.clone()), async {
        w.provider
            .resolve_bool_value("bulk_export", &EvaluationContext::default())
            .await
    })
    .await
    .unwrap();
    assert!(d.value);
}

/// The tenant's own plan overrides count, as in the request path, and a
/// plan the catalog does not know is an error — never an answer computed as
/// if the tenant had no plan.
#[tokio::test]
async fn plan_overrides_count_and_entitlement_errors_surface() {
    let mut overrides = tenancy_core::plan::Overrides::default();
    overrides.set("features.analytics", serde_json::json!(false));
    let custom = Tenant::new(TenantId::new_v4(), "custom".parse().unwrap(), "Custom")
        .with_plan(PlanId::new("pro"))
        .with_plan_overrides(overrides);
    let ghost = Tenant::new(TenantId::new_v4(), "ghost".parse().unwrap(), "Ghost")
        .with_plan(PlanId::new("no-such-plan"));
    let engine = Arc::new(FlagEngine::new([FlagDefinition::boolean("analytics")]));
    let catalog = Arc::new(
        PlanCatalog::from_json(
            r#"{"plans": [{"id": "pro", "name": "Pro", "features": {"analytics": true}}]}"#,
        )
        .unwrap(),
    );
    let store =
        Arc::new(InMemoryTenantStore::with_tenants([custom.clone(), ghost.clone()]).unwrap());
    let provider = TenancyFlagProvider::new(engine, store).with_plans(catalog);
    let d = provider
        .resolve_bool_value("analytics", &for_tenant(&custom))
        .await
        .unwrap();
    assert!(
        !d.value,
        "the tenant's override turns the plan's feature off"
    );
    let e = provider
        .resolve_bool_value("analytics", &for_tenant(&ghost))
        .await
        .unwrap_err();
    assert!(matches!(e.code, EvaluationErrorCode::General(_)), "{e:?}");
}
