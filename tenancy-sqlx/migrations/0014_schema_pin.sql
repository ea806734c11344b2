-- Schema-per-tenant: pin every table of a tenant's schema to that tenant, so
-- a transaction sealed to another tenant can neither read nor write it,
-- whatever `search_path` or schema-qualified name its SQL uses (the
-- application role has USAGE on every tenant schema).
--
-- - a table with a `tenant_id` column gets `CHECK (tenant_id = '<tenant>')`:
--   with its tenant policy (`tenant_id = (SELECT tenancy.tenant())`), rows
--   of the schema are visible and writable only to the schema's tenant;
-- - any other table (or one without row-level security) gets row-level
--   security, forced, and a policy `tenant_schema_pin` admitting only the
--   schema's tenant: `(SELECT tenancy.tenant()) = '<tenant>'`.
--
-- TenantMigrator runs it after every tenant migration; it is idempotent.
CREATE OR REPLACE FUNCTION tenancy.pin_schema(target name, tenant uuid) RETURNS integer
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    r record;
    pinned integer := 0;
    pred text := format('((SELECT tenancy.tenant()) = %L::uuid)', tenant);
BEGIN
    FOR r IN
        SELECT c.relname,
               c.relrowsecurity AS rls,
               EXISTS (SELECT 1 FROM pg_attribute a
                       WHERE a.attrelid = c.oid AND a.attname = 'tenant_id'
                         AND NOT a.attisdropped AND a.attnum > 0) AS has_tenant
        FROM pg_class c
        JOIN pg_namespace ns ON ns.oid = c.relnamespace
        WHERE ns.nspname = target AND c.relkind IN ('r', 'p') AND NOT c.relispartition
    LOOP
        IF r.has_tenant THEN
            EXECUTE format('ALTER TABLE %I.%I DROP CONSTRAINT IF EXISTS tenant_schema_pin',
                           target, r.relname);
            EXECUTE format('ALTER TABLE %I.%I ADD CONSTRAINT tenant_schema_pin CHECK (tenant_id = %L::uuid)',
                           target, r.relname, tenant);
        END IF;
        IF NOT r.has_tenant OR NOT r.rls THEN
            EXECUTE format('ALTER TABLE %I.%I ENABLE ROW LEVEL SECURITY', target, r.relname);
            EXECUTE format('ALTER TABLE %I.%I FORCE ROW LEVEL SECURITY', target, r.relname);
            EXECUTE format('DROP POLICY IF EXISTS tenant_schema_pin ON %I.%I', target, r.relname);
            EXECUTE format('CREATE POLICY tenant_schema_pin ON %I.%I AS PERMISSIVE FOR ALL '
                           'USING %s WITH CHECK %s', target, r.relname, pred, pred);
        END IF;
        pinned := pinned + 1;
    END LOOP;
    RETURN pinned;
END;
$$;
REVOKE ALL ON FUNCTION tenancy.pin_schema(name, uuid) FROM PUBLIC;

-- Existing schema tenants.
SELECT tenancy.pin_schema((t.placement ->> 'schema')::name, t.id)
FROM tenancy.tenants t
JOIN pg_namespace ns ON ns.nspname = t.placement ->> 'schema'
WHERE t.placement ->> 'model' = 'schema';
