//! An [OpenFeature](https://openfeature.dev) provider over [`FlagEngine`]
//! (feature `openfeature`).

use std::sync::Arc;

use async_trait::async_trait;
use open_feature::provider::{FeatureProvider, ProviderMetadata, ResolutionDetails};
use open_feature::{
    EvaluationContext, EvaluationError, EvaluationErrorCode, EvaluationReason, EvaluationResult,
    StructValue,
};

use super::{Evaluation, FlagEngine, Reason};
use crate::plan::{FlagValue, PlanCatalog};
use crate::store::TenantStore;
use crate::{Tenant, TenantId};

/// Serves the flag engine to OpenFeature clients.
///
/// The evaluation context's *targeting key* is the tenant id. Without one,
/// the current task-local tenant ([`crate::current`]) is used; without
/// either the evaluation fails with `TargetingKeyMissing`. Reasons map to
/// OpenFeature's: kill switch → `DISABLED`, overrides → `TARGETING_MATCH`,
/// plan default → `STATIC`, rollout → `SPLIT`, default → `DEFAULT`; the
/// variant names the tenancy reason.
///
/// ```
/// use std::sync::Arc;
/// use open_feature::provider::FeatureProvider;
/// use open_feature::EvaluationContext;
/// use tenancy_core::flags::{FlagDefinition, FlagEngine, TenancyFlagProvider};
/// use tenancy_core::store::InMemoryTenantStore;
/// use tenancy_core::{Tenant, TenantId};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let acme = Tenant::new(TenantId::new_v4(), "acme".parse()?, "Acme");
/// let engine = Arc::new(FlagEngine::new([FlagDefinition::boolean("bulk_export")]));
/// engine.set_tenant_override(acme.id, "bulk_export", true.into())?;
/// let provider = TenancyFlagProvider::new(engine, Arc::new(InMemoryTenantStore::with_tenants([acme.clone()])?));
///
/// let ctx = EvaluationContext::default().with_targeting_key(acme.id.to_string());
/// let details = provider.resolve_bool_value("bulk_export", &ctx).await.map_err(|e| format!("{e:?}"))?;
/// assert!(details.value);
/// # Ok(()) }
/// ```
pub struct TenancyFlagProvider {
    engine: Arc<FlagEngine>,
    tenants: Arc<dyn TenantStore>,
    plans: Option<Arc<PlanCatalog>>,
    metadata: ProviderMetadata,
}

impl std::fmt::Debug for TenancyFlagProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenancyFlagProvider")
            .finish_non_exhaustive()
    }
}

fn error(code: EvaluationErrorCode, message: impl Into<String>) -> EvaluationError {
    EvaluationError {
        code,
        message: Some(message.into()),
    }
}

impl TenancyFlagProvider {
    /// A provider evaluating `engine` for tenants loaded from `tenants`.
    pub fn new(engine: Arc<FlagEngine>, tenants: Arc<dyn TenantStore>) -> Self {
        Self {
            engine,
            tenants,
            plans: None,
            metadata: ProviderMetadata::new("tenancy-rs"),
        }
    }

    /// Uses plan defaults from `catalog` (by each tenant's plan).
    pub fn with_plans(mut self, catalog: Arc<PlanCatalog>) -> Self {
        self.plans = Some(catalog);
        self
    }

    async fn tenant(&self, ctx: &EvaluationContext) -> EvaluationResult<Arc<Tenant>> {
        match &ctx.targeting_key {
            Some(key) => {
                let id: TenantId = key.parse().map_err(|e| {
                    error(
                        EvaluationErrorCode::InvalidContext,
                        format!("targeting key is not a tenant id: {e}"),
                    )
                })?;
                self.tenants
                    .by_id(id)
                    .await
                    .map_err(|e| {
                        error(
                            EvaluationErrorCode::General(e.to_string()),
                            "tenant store failed",
                        )
                    })?
                    .ok_or_else(|| error(EvaluationErrorCode::InvalidContext, "unknown tenant"))
            }
            None => crate::try_current()
                .map(|c| c.tenant_arc().clone())
                .ok_or_else(|| {
                    error(
                        EvaluationErrorCode::TargetingKeyMissing,
                        "set the targeting key to the tenant id, or evaluate inside a tenant scope",
                    )
                }),
        }
    }

    async fn evaluate(&self, flag: &str, ctx: &EvaluationContext) -> EvaluationResult<Evaluation> {
        if !self.engine.is_declared(flag) {
            return Err(error(EvaluationErrorCode::FlagNotFound, flag));
        }
        let tenant = self.tenant(ctx).await?;
        let mut ancestors = Vec::new();
        let mut parent = tenant.parent;
        while let Some(p) = parent {
            if ancestors.len() >= 16 || ancestors.contains(&p) {
                break;
            }
            ancestors.push(p);
            parent = match self.tenants.by_id(p).await {
                Ok(Some(t)) => t.parent,
                Ok(None) => None,
                // An ancestor that cannot be read could hold an override:
                // an error, not an answer computed without it.
                Err(e) => {
                    return Err(error(
                        EvaluationErrorCode::General(e.to_string()),
                        "tenant store failed",
                    ));
                }
            };
        }
        // The tenant's own plan overrides count, as in the request path; a
        // plan the catalog cannot resolve is an error, not "no plan".
        let entitlements = match (&self.plans, &tenant.plan) {
            (Some(c), Some(plan)) => {
                Some(c.entitlements(plan, &tenant.plan_overrides).map_err(|e| {
                    error(
                        EvaluationErrorCode::General(e.to_string()),
                        "the tenant's entitlements cannot be computed",
                    )
                })?)
            }
            _ => None,
        };
        Ok(self
            .engine
            .evaluate(flag, &tenant, &ancestors, entitlements.as_ref()))
    }

    fn details<T>(value: T, reason: &Reason) -> ResolutionDetails<T> {
        let (reason, variant) = match reason {
            Reason::KillSwitch => (EvaluationReason::Disabled, "kill-switch"),
            Reason::TenantOverride => (EvaluationReason::TargetingMatch, "tenant-override"),
            Reason::ParentOverride(_) => (EvaluationReason::TargetingMatch, "parent-override"),
            Reason::PlanDefault(_) => (EvaluationReason::Static, "plan-default"),
            Reason::Rollout { .. } => (EvaluationReason::Split, "rollout"),
            Reason::Default => (EvaluationReason::Default, "default"),
            _ => (EvaluationReason::Unknown, "unknown"),
        };
        ResolutionDetails {
            value,
            variant: Some(variant.to_owned()),
            reason: Some(reason),
            flag_metadata: None,
        }
    }
}

fn mismatch(flag: &str) -> EvaluationError {
    error(
        EvaluationErrorCode::TypeMismatch,
        format!("flag {flag} has another type"),
    )
}

#[async_trait]
impl FeatureProvider for TenancyFlagProvider {
    fn metadata(&self) -> &ProviderMetadata {
        &self.metadata
    }

    async fn resolve_bool_value(
        &self,
        flag_key: &str,
        ctx: &EvaluationContext,
    ) -> EvaluationResult<ResolutionDetails<bool>> {
        let e = self.evaluate(flag_key, ctx).await?;
        match e.value {
            FlagValue::Bool(b) => Ok(Self::details(b, &e.reason)),
            _ => Err(mismatch(flag_key)),
        }
    }

    async fn resolve_int_value(
        &self,
        flag_key: &str,
        ctx: &EvaluationContext,
    ) -> EvaluationResult<ResolutionDetails<i64>> {
        let e = self.evaluate(flag_key, ctx).await?;
        match e.value {
            FlagValue::Int(i) => Ok(Self::details(i, &e.reason)),
            _ => Err(mismatch(flag_key)),
        }
    }

    async fn resolve_float_value(
        &self,
        flag_key: &str,
        _ctx: &EvaluationContext,
    ) -> EvaluationResult<ResolutionDetails<f64>> {
        Err(mismatch(flag_key))
    }

    async fn resolve_string_value(
        &self,
        flag_key: &str,
        ctx: &EvaluationContext,
    ) -> EvaluationResult<ResolutionDetails<String>> {
        let e = self.evaluate(flag_key, ctx).await?;
        match e.value {
            FlagValue::Str(s) => Ok(Self::details(s.to_string(), &e.reason)),
            _ => Err(mismatch(flag_key)),
        }
    }

    async fn resolve_struct_value(
        &self,
        flag_key: &str,
        _ctx: &EvaluationContext,
    ) -> EvaluationResult<ResolutionDetails<StructValue>> {
        Err(mismatch(flag_key))
    }
}
