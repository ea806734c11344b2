-- Audit archival (tenancy_sqlx::PgAuditLog::archive): where each tenant's
-- live log starts once its older events were sealed into archive segments.
-- The checkpoint carries an HMAC under the tenant's chain key (held by the
-- application, not the database), so a moved or forged checkpoint is found
-- by verification.
--
-- The application role may only read its own tenant's checkpoint. The owner
-- (the role running this migration) archives: it reads the log, writes
-- checkpoints — forward only — and deletes archived rows, never a row past
-- its tenant's checkpoint.
CREATE TABLE tenancy.audit_checkpoints (
    tenant_id   uuid        PRIMARY KEY,
    seq         bigint      NOT NULL CHECK (seq >= 1),
    hash        bytea       NOT NULL CHECK (length(hash) = 32),
    mac         bytea       NOT NULL CHECK (length(mac) = 32),
    archived_at timestamptz NOT NULL DEFAULT now()
);

ALTER TABLE tenancy.audit_checkpoints ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenancy.audit_checkpoints FORCE ROW LEVEL SECURITY;
CREATE POLICY checkpoint_read ON tenancy.audit_checkpoints AS PERMISSIVE FOR SELECT
    USING (tenant_id = (SELECT tenancy.tenant()));
CREATE POLICY checkpoint_owner ON tenancy.audit_checkpoints AS PERMISSIVE FOR ALL
    TO CURRENT_USER USING (true) WITH CHECK (true);

CREATE POLICY audit_owner_read ON tenancy.audit_log AS PERMISSIVE FOR SELECT
    TO CURRENT_USER USING (true);
CREATE POLICY audit_owner_prune ON tenancy.audit_log AS PERMISSIVE FOR DELETE
    TO CURRENT_USER
    USING (seq <= (SELECT c.seq FROM tenancy.audit_checkpoints c
                   WHERE c.tenant_id = audit_log.tenant_id));

CREATE FUNCTION tenancy.audit_checkpoint_forward() RETURNS trigger
    LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    IF NEW.tenant_id <> OLD.tenant_id OR NEW.seq < OLD.seq THEN
        RAISE EXCEPTION 'audit checkpoints only move forward'
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END;
$$;
CREATE TRIGGER audit_checkpoint_forward BEFORE UPDATE ON tenancy.audit_checkpoints
    FOR EACH ROW EXECUTE FUNCTION tenancy.audit_checkpoint_forward();
