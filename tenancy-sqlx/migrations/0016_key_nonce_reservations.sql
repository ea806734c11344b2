-- Nonces reserved per data key version, by every process together
-- (tenancy_core::crypto::keys::KeyStore::reserve): the keyring reserves
-- blocks here before it encrypts, so a version's nonce budget holds across
-- processes and restarts.
ALTER TABLE tenancy.tenant_keys
    ADD COLUMN reserved bigint NOT NULL DEFAULT 0 CHECK (reserved >= 0);

-- Reservations are not key changes: announce only what other processes must
-- drop from their caches (new versions, rotation, re-wrapping, destruction).
DROP TRIGGER tenant_keys_changed ON tenancy.tenant_keys;
CREATE TRIGGER tenant_keys_changed
    AFTER INSERT OR DELETE OR UPDATE OF wrapped, state ON tenancy.tenant_keys
    FOR EACH ROW EXECUTE FUNCTION tenancy.notify_key_changed();
