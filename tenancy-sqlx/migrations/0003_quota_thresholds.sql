-- Threshold announcements, so that each threshold fires once per resource
-- and period across every instance (the primary key decides the winner).
CREATE TABLE tenancy.quota_thresholds (
    tenant_id    uuid        NOT NULL,
    resource     text        NOT NULL CHECK (length(resource) BETWEEN 1 AND 64),
    period_start timestamptz NOT NULL,
    percent      smallint    NOT NULL CHECK (percent BETWEEN 1 AND 100),
    PRIMARY KEY (tenant_id, resource, period_start, percent)
);

ALTER TABLE tenancy.quota_thresholds ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenancy.quota_thresholds FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON tenancy.quota_thresholds AS PERMISSIVE FOR ALL
    USING (tenant_id = (SELECT NULLIF(current_setting('app.tenant_id', true), '')::uuid))
    WITH CHECK (tenant_id = (SELECT NULLIF(current_setting('app.tenant_id', true), '')::uuid));
