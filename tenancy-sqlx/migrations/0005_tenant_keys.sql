-- Wrapped per-tenant data keys (tenancy_core::crypto::keys::KeyStore).
-- Only ever wrapped by the tenant's key-encryption key; tenant rows under RLS.
CREATE TABLE tenancy.tenant_keys (
    tenant_id  uuid        NOT NULL,
    version    integer     NOT NULL CHECK (version >= 0),
    wrapped    bytea       NOT NULL,
    state      text        NOT NULL CHECK (state IN ('primary', 'retired', 'destroyed')),
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, version),
    CHECK (state <> 'destroyed' OR length(wrapped) = 0)
);

ALTER TABLE tenancy.tenant_keys ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenancy.tenant_keys FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON tenancy.tenant_keys AS PERMISSIVE FOR ALL
    USING (tenant_id = (SELECT NULLIF(current_setting('app.tenant_id', true), '')::uuid))
    WITH CHECK (tenant_id = (SELECT NULLIF(current_setting('app.tenant_id', true), '')::uuid));
