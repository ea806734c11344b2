-- Session epochs (tenancy_core::session, tenancy_sqlx::PgSessionEpochs):
-- counters per membership, user and tenant that only ever increase; a token
-- carries their sum when issued and is refused once the sum has moved.
-- Not tenant rows (a user's counter spans tenants). The application role
-- reads them and increases them only through tenancy.bump_session_epoch, so
-- no SQL it runs can lower a counter and bring a revoked token back.
CREATE TABLE tenancy.session_epochs (
    key   text PRIMARY KEY,
    epoch bigint NOT NULL CHECK (epoch >= 0)
);

CREATE FUNCTION tenancy.bump_session_epoch(k text) RETURNS void
    LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
    INSERT INTO tenancy.session_epochs AS s (key, epoch) VALUES (k, 1)
    ON CONFLICT (key) DO UPDATE SET epoch = s.epoch + 1
$$;
REVOKE ALL ON FUNCTION tenancy.bump_session_epoch(text) FROM PUBLIC;
