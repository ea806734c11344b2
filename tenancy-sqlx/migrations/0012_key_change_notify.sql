-- Announce every change of a tenant's wrapped data keys (rotation, KEK
-- rotation, crypto-shredding) so other processes drop their cached keys at
-- once (tenancy_sqlx::KeyInvalidationListener). The payload is the tenant
-- id; notifications are deduplicated per transaction.
CREATE FUNCTION tenancy.notify_key_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('tenancy_key_changed', OLD.tenant_id::text);
    ELSE
        PERFORM pg_notify('tenancy_key_changed', NEW.tenant_id::text);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER tenant_keys_changed
    AFTER INSERT OR UPDATE OR DELETE ON tenancy.tenant_keys
    FOR EACH ROW EXECUTE FUNCTION tenancy.notify_key_changed();
