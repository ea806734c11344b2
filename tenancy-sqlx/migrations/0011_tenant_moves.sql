-- Moving a tenant between placements (tenancy_sqlx::relocate::TenantMover).
--
-- A TenantDb built with `with_move_guard()` opens every shared or schema
-- tenant transaction with `CALL tenancy.enter(<tenant>, <placement>)`:
-- it takes the tenant's placement lock in shared mode (held until the
-- transaction ends) and checks that the tenant still lives where the
-- caller's context says. The mover takes the same lock exclusively: it waits
-- for the tenant's transactions in flight, holds new ones at their BEGIN
-- (the write freeze) while it copies, verifies and switches the placement,
-- and the transactions it held then fail with SQLSTATE TN001 instead of
-- writing to the old place.
CREATE FUNCTION tenancy.placement_lock_key(tenant uuid) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT pg_catalog.hashtextextended('tenancy.placement:' || tenant::text, 0) $$;

-- A procedure: CALL returns no result set, which measured cheaper than a
-- SELECT of a void function in the BEGIN message.
CREATE PROCEDURE tenancy.enter(tenant uuid, expected jsonb)
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_catalog.pg_advisory_xact_lock_shared(tenancy.placement_lock_key(tenant));
    PERFORM 1 FROM tenancy.tenants t WHERE t.id = tenant AND t.placement = expected;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'tenant % is not placed at % (moved while this request was in flight?): reload the tenant and retry',
            tenant, expected
            USING ERRCODE = 'TN001';
    END IF;
END;
$$;
