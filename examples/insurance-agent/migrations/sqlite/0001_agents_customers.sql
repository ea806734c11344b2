-- Tenant file, version 1: agents and customers. Every table keeps tenant_id
-- (the hyphenated tenant id) so a tenant can move between backends; the
-- triggers added by the application (tenancy_sqlx::sqlite::guard_table_sql)
-- refuse rows of any other tenant.
CREATE TABLE agents (
    tenant_id         TEXT    NOT NULL,
    id                TEXT    PRIMARY KEY,
    user_id           TEXT,
    agent_code        TEXT    NOT NULL,
    name              TEXT    NOT NULL,
    licence_number    TEXT    NOT NULL,
    licence_expiry    TEXT    NOT NULL,
    experience_years  INTEGER NOT NULL DEFAULT 0 CHECK (experience_years >= 0),
    business_name     TEXT,
    regions           TEXT    NOT NULL DEFAULT '[]',
    manager_id        TEXT    REFERENCES agents (id),
    compliance_status TEXT    NOT NULL DEFAULT 'pending',
    active            INTEGER NOT NULL DEFAULT 1,
    created_at        TEXT    NOT NULL,
    UNIQUE (tenant_id, agent_code)
);
CREATE UNIQUE INDEX agents_user ON agents (tenant_id, user_id) WHERE user_id IS NOT NULL;
CREATE INDEX agents_manager ON agents (manager_id);

CREATE TABLE customers (
    tenant_id         TEXT    NOT NULL,
    id                TEXT    PRIMARY KEY,
    agent_id          TEXT    NOT NULL REFERENCES agents (id),
    first_name        TEXT    NOT NULL,
    last_name         TEXT    NOT NULL,
    date_of_birth     TEXT,
    email             TEXT,
    customer_type     TEXT    NOT NULL,
    risk_profile      TEXT    NOT NULL DEFAULT 'medium',
    lifecycle_stage   TEXT    NOT NULL DEFAULT 'prospect',
    engagement_score  INTEGER NOT NULL DEFAULT 0 CHECK (engagement_score BETWEEN 0 AND 100),
    kyc_status        TEXT    NOT NULL DEFAULT 'pending',
    shared            INTEGER NOT NULL DEFAULT 0,
    active            INTEGER NOT NULL DEFAULT 1,
    created_at        TEXT    NOT NULL
);
CREATE INDEX customers_agent ON customers (agent_id);
