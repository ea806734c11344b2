-- The system tables' policies trust the sealed tenant (tenancy.tenant(),
-- installed by tenancy_sqlx::migrate::run before these migrations) instead
-- of the raw app.tenant_id setting, which any SQL in the transaction could
-- change.
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['quota_usage', 'quota_rate', 'quota_records', 'quota_thresholds',
                             'tenant_keys', 'tenant_settings', 'invitations'] LOOP
        EXECUTE format('DROP POLICY IF EXISTS tenant_isolation ON tenancy.%I', t);
        EXECUTE format(
            'CREATE POLICY tenant_isolation ON tenancy.%I AS PERMISSIVE FOR ALL '
            'USING (tenant_id = (SELECT tenancy.tenant())) '
            'WITH CHECK (tenant_id = (SELECT tenancy.tenant()))', t);
    END LOOP;
END;
$$;
DROP POLICY IF EXISTS audit_read ON tenancy.audit_log;
DROP POLICY IF EXISTS audit_append ON tenancy.audit_log;
CREATE POLICY audit_read ON tenancy.audit_log AS PERMISSIVE FOR SELECT
    USING (tenant_id = (SELECT tenancy.tenant()));
CREATE POLICY audit_append ON tenancy.audit_log AS PERMISSIVE FOR INSERT
    WITH CHECK (tenant_id = (SELECT tenancy.tenant()));
