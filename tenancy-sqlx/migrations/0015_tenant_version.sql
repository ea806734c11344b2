-- Every tenant record carries a version, bumped on every change: updates are
-- compare-and-set (tenancy_core::store::TenantUpdate), never a blind overwrite.
ALTER TABLE tenancy.tenants
    ADD COLUMN version bigint NOT NULL DEFAULT 1 CHECK (version >= 1);
