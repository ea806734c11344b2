-- Per-tenant settings (tenancy_core::settings::SettingsStore): a plain JSON
-- value, or a secret sealed with the tenant's data key (never both).
CREATE TABLE tenancy.tenant_settings (
    tenant_id  uuid        NOT NULL,
    key        text        NOT NULL CHECK (key ~ '^[a-z0-9._-]{1,128}$'),
    value      jsonb,
    secret     bytea,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, key),
    CHECK ((value IS NULL) <> (secret IS NULL))
);

ALTER TABLE tenancy.tenant_settings ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenancy.tenant_settings FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON tenancy.tenant_settings AS PERMISSIVE FOR ALL
    USING (tenant_id = (SELECT NULLIF(current_setting('app.tenant_id', true), '')::uuid))
    WITH CHECK (tenant_id = (SELECT NULLIF(current_setting('app.tenant_id', true), '')::uuid));
