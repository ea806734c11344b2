-- tenancy-rs system schema: tenants, their custom domains, memberships.
-- Applied by tenancy_sqlx::migrate::run with search_path = tenancy, so the
-- migration ledger (_sqlx_migrations) lives in the tenancy schema and never
-- collides with the application's own sqlx migrations.

CREATE SCHEMA IF NOT EXISTS tenancy;

CREATE TABLE tenancy.tenants (
    id            uuid        PRIMARY KEY CHECK (id <> '00000000-0000-0000-0000-000000000000'),
    slug          text        NOT NULL UNIQUE
                              CHECK (slug ~ '^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$'),
    display_name  text        NOT NULL,
    kind          text        NOT NULL DEFAULT 'default',
    parent_id     uuid        REFERENCES tenancy.tenants (id),
    status        text        NOT NULL DEFAULT 'active'
                              CHECK (status IN ('trial', 'active', 'suspended', 'offboarding', 'deleted')),
    status_reason text,
    trial_ends_at timestamptz,
    purge_after   timestamptz,
    plan_id       text,
    settings      jsonb       NOT NULL DEFAULT '{}'::jsonb,
    placement     jsonb       NOT NULL DEFAULT '{"model": "shared"}'::jsonb,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    CHECK (status <> 'trial' OR trial_ends_at IS NOT NULL),
    CHECK (status <> 'offboarding' OR purge_after IS NOT NULL),
    CHECK (status <> 'suspended' OR status_reason IS NOT NULL),
    CHECK (parent_id IS NULL OR parent_id <> id)
);

CREATE INDEX tenants_parent_idx ON tenancy.tenants (parent_id) WHERE parent_id IS NOT NULL;

CREATE TABLE tenancy.tenant_domains (
    domain    text PRIMARY KEY CHECK (domain = lower(domain) AND length(domain) <= 253),
    tenant_id uuid NOT NULL REFERENCES tenancy.tenants (id) ON DELETE CASCADE
);

CREATE INDEX tenant_domains_tenant_idx ON tenancy.tenant_domains (tenant_id);

CREATE TABLE tenancy.memberships (
    tenant_id  uuid        NOT NULL REFERENCES tenancy.tenants (id) ON DELETE CASCADE,
    user_id    text        NOT NULL CHECK (length(user_id) BETWEEN 1 AND 255),
    role       text        NOT NULL CHECK (role IN ('viewer', 'member', 'manager', 'admin')),
    grants     text[]      NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, user_id)
);

CREATE INDEX memberships_user_idx ON tenancy.memberships (user_id);

-- Cross-process cache invalidation: every change to a tenant or its domains
-- is announced on the channel tenancy_tenant_changed with a JSON payload
-- naming the tenant id and every slug and domain involved (old and new), so
-- listeners can drop both hits and cached misses.
CREATE FUNCTION tenancy.notify_tenant_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    payload jsonb;
BEGIN
    IF TG_TABLE_NAME = 'tenants' THEN
        payload := jsonb_build_object(
            'id', COALESCE(NEW.id, OLD.id),
            'slugs', to_jsonb(array_remove(ARRAY[OLD.slug, NEW.slug], NULL)),
            'domains', '[]'::jsonb);
    ELSE
        payload := jsonb_build_object(
            'id', COALESCE(NEW.tenant_id, OLD.tenant_id),
            'slugs', '[]'::jsonb,
            'domains', to_jsonb(array_remove(ARRAY[OLD.domain, NEW.domain], NULL)));
    END IF;
    PERFORM pg_notify('tenancy_tenant_changed', payload::text);
    RETURN NULL;
END;
$$;

CREATE TRIGGER tenants_notify AFTER INSERT OR UPDATE OR DELETE ON tenancy.tenants
    FOR EACH ROW EXECUTE FUNCTION tenancy.notify_tenant_changed();
CREATE TRIGGER tenant_domains_notify AFTER INSERT OR UPDATE OR DELETE ON tenancy.tenant_domains
    FOR EACH ROW EXECUTE FUNCTION tenancy.notify_tenant_changed();
