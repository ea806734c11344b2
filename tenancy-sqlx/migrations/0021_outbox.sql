-- The transactional outbox (tenancy_core::outbox, PgOutbox): messages for
-- other systems (billing, alerting), written in the transaction of the
-- change they describe and delivered afterwards.
--
-- The application role may only INSERT the message columns (id, tenant,
-- channel, topic, payload), only rows of the tenant its transaction is
-- sealed to, and not the control plane's topics (plan.*, tenant.*, written
-- by the tenant store as the owner): SQL running in a tenant's transaction
-- can neither read, suppress, re-address nor pre-age anyone's messages, nor
-- forge a plan change. A trigger starts every row fresh (written now, no
-- attempts, no lease), so no insert can jump the queue or stall the relay.
-- The relay reads across tenants as the schema owner (row-level security is
-- enabled, not forced, on this table).
CREATE TABLE tenancy.outbox (
    id           uuid        PRIMARY KEY,
    tenant_id    uuid        NOT NULL,
    channel      text        NOT NULL CHECK (channel ~ '^[a-z0-9._-]{1,64}$'),
    topic        text        NOT NULL CHECK (topic ~ '^[a-z0-9._-]{1,64}$'),
    payload      jsonb       NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    available_at timestamptz NOT NULL DEFAULT now(),
    attempts     integer     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    leased_until timestamptz,
    delivered_at timestamptz,
    dead_at      timestamptz,
    last_error   text
);
CREATE INDEX outbox_due ON tenancy.outbox (channel, available_at)
    WHERE delivered_at IS NULL AND dead_at IS NULL;
ALTER TABLE tenancy.outbox ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON tenancy.outbox AS PERMISSIVE FOR ALL
    USING (tenant_id = (SELECT tenancy.tenant()))
    WITH CHECK (tenant_id = (SELECT tenancy.tenant()) AND topic !~ '^(plan|tenant)\.');

CREATE FUNCTION tenancy.outbox_fresh() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.created_at := now();
    NEW.available_at := now();
    NEW.attempts := 0;
    NEW.leased_until := NULL;
    NEW.delivered_at := NULL;
    NEW.dead_at := NULL;
    NEW.last_error := NULL;
    RETURN NEW;
END;
$$;
CREATE TRIGGER outbox_fresh BEFORE INSERT ON tenancy.outbox
    FOR EACH ROW EXECUTE FUNCTION tenancy.outbox_fresh();
