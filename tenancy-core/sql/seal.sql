-- The sealed tenant binding (tenancy-rs). Run as the owner of the tenant
-- tables; idempotent. See docs/threat-model.md for the design.
--
-- A tenant transaction opens with one message:
--
--     BEGIN; CALL tenancy.seal('<tenant>', <issued>, '\x<proof>')
--
-- where <proof> is HMAC-SHA256(seal key, tenant bytes || issued as 8
-- big-endian bytes), computed by the library with the key the owner
-- generated here. `tenancy.seal` (SECURITY DEFINER) checks that it runs in
-- the message that began the transaction, that the proof is genuine and
-- fresh, then records the tenant in three sequences of this session that
-- only the owner may change (`setval`), stamped with the transaction's start
-- time. Row-level security asks `tenancy.tenant()`, which answers the sealed
-- tenant only inside that same transaction and only while `app.tenant_id`
-- still names it. SQL running later in the transaction as the application
-- role cannot change any of it: `set_config`, `SET`, `RESET` of
-- `app.tenant_id` make the policies see no tenant at all.
CREATE SCHEMA IF NOT EXISTS tenancy;
GRANT USAGE ON SCHEMA tenancy TO PUBLIC;

-- The HMAC key, with its inner and outer pads (RFC 2104) precomputed so the
-- check needs no extension (built-in sha256, PostgreSQL 11+). Owner only.
CREATE TABLE IF NOT EXISTS tenancy.seal_key (
    id boolean PRIMARY KEY DEFAULT true CHECK (id),
    key bytea NOT NULL CHECK (length(key) = 32),
    ipad bytea NOT NULL,
    opad bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
REVOKE ALL ON tenancy.seal_key FROM PUBLIC;

-- Recomputes the pads whenever the key is written, so installing a known key
-- (a tenant database that must accept the same proofs) is one INSERT/UPDATE.
CREATE OR REPLACE FUNCTION tenancy.seal_key_pads() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    i bytea := decode(repeat('36', 64), 'hex');
    o bytea := decode(repeat('5c', 64), 'hex');
BEGIN
    FOR n IN 0..31 LOOP
        i := set_byte(i, n, get_byte(NEW.key, n) # 54);
        o := set_byte(o, n, get_byte(NEW.key, n) # 92);
    END LOOP;
    NEW.ipad := i;
    NEW.opad := o;
    RETURN NEW;
END;
$$;
DROP TRIGGER IF EXISTS seal_key_pads ON tenancy.seal_key;
CREATE TRIGGER seal_key_pads BEFORE INSERT OR UPDATE OF key ON tenancy.seal_key
    FOR EACH ROW EXECUTE FUNCTION tenancy.seal_key_pads();

-- A random key on first install (three v4 UUIDs: 366 random bits, hashed).
INSERT INTO tenancy.seal_key (key, ipad, opad)
SELECT sha256(uuid_send(gen_random_uuid()) || uuid_send(gen_random_uuid())
              || uuid_send(gen_random_uuid())), '', ''
WHERE NOT EXISTS (SELECT 1 FROM tenancy.seal_key);

-- The sealed tenant (two halves) and the start of the transaction it was
-- sealed in, as this session's sequence values. Unlogged: nothing here needs
-- to survive a crash, and setval on an unlogged sequence writes no WAL. Only
-- the owner may change them (setval needs UPDATE); reading this session's
-- values (currval) is granted to everyone below.
CREATE UNLOGGED SEQUENCE IF NOT EXISTS tenancy.sealed_hi
    AS bigint MINVALUE -9223372036854775808 MAXVALUE 9223372036854775807 CACHE 1;
CREATE UNLOGGED SEQUENCE IF NOT EXISTS tenancy.sealed_lo
    AS bigint MINVALUE -9223372036854775808 MAXVALUE 9223372036854775807 CACHE 1;
CREATE UNLOGGED SEQUENCE IF NOT EXISTS tenancy.sealed_at
    AS bigint MINVALUE -9223372036854775808 MAXVALUE 9223372036854775807 CACHE 1;
REVOKE ALL ON SEQUENCE tenancy.sealed_hi, tenancy.sealed_lo, tenancy.sealed_at FROM PUBLIC;

-- How long a proof stays acceptable (seconds either side of the server's
-- clock): it bounds replay of a proof seen elsewhere and tolerates clock skew.
CREATE OR REPLACE FUNCTION tenancy.seal_max_age() RETURNS double precision
LANGUAGE sql IMMUTABLE AS $$ SELECT 300::double precision $$;

CREATE OR REPLACE PROCEDURE tenancy.seal(tenant uuid, issued bigint, proof bytea)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
DECLARE
    raw bytea := uuid_send(tenant);
BEGIN
    -- One statement on the normal path (plpgsql prepares every statement
    -- again in each transaction, and this runs once per transaction): the
    -- guards, the key lookup and proof check, and the record of the sealed
    -- tenant and its transaction stamp. Nothing is recorded unless all hold.
    PERFORM setval('tenancy.sealed_hi', ('x' || encode(substr(raw, 1, 8), 'hex'))::bit(64)::bigint),
            setval('tenancy.sealed_lo', ('x' || encode(substr(raw, 9, 8), 'hex'))::bit(64)::bigint),
            setval('tenancy.sealed_at', (date_part('epoch', transaction_timestamp()) * 1000000)::bigint),
            set_config('app.tenant_id', tenant::text, true)
    FROM tenancy.seal_key s
    WHERE s.id
      -- Only the message that began this transaction may seal it: SQL sent
      -- later in the transaction, or in a message that first ends it
      -- (`...; COMMIT; BEGIN; CALL tenancy.seal(...)`), is refused.
      AND left(current_query(), 6) = 'BEGIN;'
      AND statement_timestamp() = transaction_timestamp()
      AND coalesce(current_setting('app.tenant_id', true), '') = ''
      AND abs(date_part('epoch', transaction_timestamp()) - issued) <= tenancy.seal_max_age()
      AND proof IS NOT NULL
      AND sha256(s.opad || sha256(s.ipad || raw || int8send(issued))) = proof;
    IF FOUND THEN
        RETURN;
    END IF;
    -- Refused: say why.
    IF left(current_query(), 6) <> 'BEGIN;'
       OR statement_timestamp() <> transaction_timestamp() THEN
        RAISE EXCEPTION 'tenancy.seal: a tenant transaction is sealed only by the message that begins it'
            USING ERRCODE = '42501',
                  HINT = 'open tenant transactions through the library (TenantDb::begin, TenantPool::transaction_for)';
    END IF;
    IF coalesce(current_setting('app.tenant_id', true), '') <> '' THEN
        RAISE EXCEPTION 'tenancy.seal: this transaction is already sealed'
            USING ERRCODE = '42501';
    END IF;
    IF abs(date_part('epoch', transaction_timestamp()) - issued) > tenancy.seal_max_age() THEN
        RAISE EXCEPTION 'tenancy.seal: the proof was issued % s from the server''s clock (limit % s)',
            round(date_part('epoch', transaction_timestamp()) - issued), tenancy.seal_max_age()
            USING ERRCODE = '42501',
                  HINT = 'check the clocks of the application and database hosts';
    END IF;
    RAISE EXCEPTION 'tenancy.seal: invalid proof for tenant %', tenant
        USING ERRCODE = '42501',
              HINT = 'the application''s seal key must be the one in tenancy.seal_key of this database';
END;
$$;
REVOKE ALL ON PROCEDURE tenancy.seal(uuid, bigint, bytea) FROM PUBLIC;
GRANT EXECUTE ON PROCEDURE tenancy.seal(uuid, bigint, bytea) TO PUBLIC;

-- The tenant of the current transaction, for row-level security policies:
-- `tenant_id = (SELECT tenancy.tenant())`. NULL (no row visible, no row
-- writable) unless this transaction was sealed and `app.tenant_id` still
-- names the sealed tenant; an error (55000) when the setting claims a tenant
-- in a session that never sealed. A plain SQL expression, so PostgreSQL
-- inlines it into the policy (once per statement, no function call): it
-- only reads this session's sequence values (`currval`, which SELECT on the
-- sequences allows; `setval` needs UPDATE, which only the owner has). Every
-- name and operator is schema-qualified, so the caller's search_path cannot
-- redirect it. CASE evaluates its branches in order.
CREATE OR REPLACE FUNCTION tenancy.tenant() RETURNS uuid
LANGUAGE sql VOLATILE PARALLEL RESTRICTED AS $$
SELECT CASE
    WHEN COALESCE(pg_catalog.current_setting('app.tenant_id', true), '') OPERATOR(pg_catalog.=) ''
        THEN NULL::uuid
    WHEN pg_catalog.currval('tenancy.sealed_at'::pg_catalog.regclass) OPERATOR(pg_catalog.<>)
         (pg_catalog.date_part('epoch', pg_catalog.transaction_timestamp()) OPERATOR(pg_catalog.*) 1000000)::bigint
        THEN NULL::uuid
    WHEN pg_catalog.encode(
             pg_catalog.int8send(pg_catalog.currval('tenancy.sealed_hi'::pg_catalog.regclass))
             OPERATOR(pg_catalog.||)
             pg_catalog.int8send(pg_catalog.currval('tenancy.sealed_lo'::pg_catalog.regclass)),
             'hex') OPERATOR(pg_catalog.<>)
         pg_catalog.replace(pg_catalog.current_setting('app.tenant_id', true), '-', '')
        THEN NULL::uuid
    ELSE pg_catalog.current_setting('app.tenant_id', true)::uuid
END
$$;
-- Replacing the earlier SECURITY DEFINER version keeps its attributes
-- unless reset explicitly.
ALTER FUNCTION tenancy.tenant() SECURITY INVOKER;
REVOKE ALL ON FUNCTION tenancy.tenant() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION tenancy.tenant() TO PUBLIC;
GRANT SELECT ON SEQUENCE tenancy.sealed_hi, tenancy.sealed_lo, tenancy.sealed_at TO PUBLIC;
