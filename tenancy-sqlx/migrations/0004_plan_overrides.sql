-- Per-tenant overrides of plan limits and features (dotted paths, validated
-- by tenancy_core::plan::PlanCatalog when entitlements are computed).
ALTER TABLE tenancy.tenants
    ADD COLUMN plan_overrides jsonb NOT NULL DEFAULT '{}'::jsonb
    CHECK (jsonb_typeof(plan_overrides) = 'object');
