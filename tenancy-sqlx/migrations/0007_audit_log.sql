-- The audit log (tenancy_sqlx::PgAuditLog): append-only, hash-chained per
-- tenant. The application role gets SELECT and INSERT only — no UPDATE or
-- DELETE grant and no UPDATE/DELETE policy — and sees only its tenant's rows.
CREATE TABLE tenancy.audit_log (
    tenant_id     uuid        NOT NULL,
    seq           bigint      NOT NULL CHECK (seq >= 1),
    at            timestamptz NOT NULL,
    actor_kind    text        NOT NULL CHECK (actor_kind IN ('user', 'system')),
    actor_id      text        NOT NULL CHECK (length(actor_id) BETWEEN 1 AND 255),
    action        text        NOT NULL CHECK (length(action) BETWEEN 1 AND 100),
    resource_type text        NOT NULL CHECK (length(resource_type) BETWEEN 1 AND 100),
    resource_id   text,
    fields        text[]      NOT NULL DEFAULT '{}',
    record_count  bigint,
    details       jsonb       NOT NULL DEFAULT 'null'::jsonb,
    ip            text,
    user_agent    text,
    flags         text[]      NOT NULL DEFAULT '{}',
    prev_hash     bytea       NOT NULL CHECK (length(prev_hash) = 32),
    hash          bytea       NOT NULL CHECK (length(hash) = 32),
    PRIMARY KEY (tenant_id, seq)
);

CREATE INDEX audit_log_at_idx ON tenancy.audit_log (tenant_id, at);
CREATE INDEX audit_log_actor_idx ON tenancy.audit_log (tenant_id, actor_id, at);

ALTER TABLE tenancy.audit_log ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenancy.audit_log FORCE ROW LEVEL SECURITY;
CREATE POLICY audit_read ON tenancy.audit_log AS PERMISSIVE FOR SELECT
    USING (tenant_id = (SELECT NULLIF(current_setting('app.tenant_id', true), '')::uuid));
CREATE POLICY audit_append ON tenancy.audit_log AS PERMISSIVE FOR INSERT
    WITH CHECK (tenant_id = (SELECT NULLIF(current_setting('app.tenant_id', true), '')::uuid));
