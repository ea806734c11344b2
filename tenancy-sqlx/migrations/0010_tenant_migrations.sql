-- Tenant migrations (schema- and database-per-tenant placements): which
-- version each tenant's own schema is at, and tenants whose last rollout
-- failed. Operations data, written by the migration role.
CREATE TABLE tenancy.tenant_migrations (
    tenant_id  uuid        NOT NULL,
    version    bigint      NOT NULL CHECK (version > 0),
    name       text        NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    checksum   text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, version)
);

CREATE TABLE tenancy.tenant_migration_quarantine (
    tenant_id  uuid        PRIMARY KEY,
    version    bigint,
    error      text        NOT NULL,
    at         timestamptz NOT NULL DEFAULT now()
);
