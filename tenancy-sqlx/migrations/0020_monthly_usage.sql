-- Usage per calendar month (tenancy_core::quota::monthly, PgMonthlyUsage):
-- one counter per tenant, resource and month (YYYY-MM in the tenant's time
-- zone). Tenant rows under row-level security bound to the sealed tenant
-- (tenancy.tenant()), like the other quota state.
CREATE TABLE tenancy.monthly_usage (
    tenant_id uuid   NOT NULL,
    resource  text   NOT NULL CHECK (length(resource) BETWEEN 1 AND 64),
    month     text   NOT NULL CHECK (month ~ '^[0-9]{4}-[0-9]{2}$'),
    used      bigint NOT NULL DEFAULT 0 CHECK (used >= 0),
    PRIMARY KEY (tenant_id, resource, month)
);
ALTER TABLE tenancy.monthly_usage ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenancy.monthly_usage FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON tenancy.monthly_usage AS PERMISSIVE FOR ALL
    USING (tenant_id = (SELECT tenancy.tenant()))
    WITH CHECK (tenant_id = (SELECT tenancy.tenant()));
