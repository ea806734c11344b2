-- Quota state shared by every instance of the application.
-- Tenant rows, so they carry the same row-level security as tenant tables:
-- the application role can only see and change its current tenant's quota.

CREATE TABLE tenancy.quota_usage (
    tenant_id uuid   NOT NULL,
    resource  text   NOT NULL CHECK (length(resource) BETWEEN 1 AND 64),
    used      bigint NOT NULL DEFAULT 0 CHECK (used >= 0),
    PRIMARY KEY (tenant_id, resource)
);

CREATE TABLE tenancy.quota_rate (
    tenant_id uuid   NOT NULL,
    resource  text   NOT NULL CHECK (length(resource) BETWEEN 1 AND 64),
    period_ms bigint NOT NULL CHECK (period_ms > 0),
    -- GCRA theoretical arrival time, microseconds since the Unix epoch.
    tat_us    bigint NOT NULL,
    PRIMARY KEY (tenant_id, resource, period_ms)
);

CREATE TABLE tenancy.quota_records (
    tenant_id    uuid        NOT NULL,
    resource     text        NOT NULL CHECK (length(resource) BETWEEN 1 AND 64),
    period_start timestamptz NOT NULL,
    amount       bigint      NOT NULL CHECK (amount >= 0),
    PRIMARY KEY (tenant_id, resource, period_start)
);

DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['quota_usage', 'quota_rate', 'quota_records'] LOOP
        EXECUTE format('ALTER TABLE tenancy.%I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE tenancy.%I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format(
            'CREATE POLICY tenant_isolation ON tenancy.%I AS PERMISSIVE FOR ALL '
            'USING (tenant_id = (SELECT NULLIF(current_setting(''app.tenant_id'', true), '''')::uuid)) '
            'WITH CHECK (tenant_id = (SELECT NULLIF(current_setting(''app.tenant_id'', true), '''')::uuid))', t);
    END LOOP;
END
$$;
