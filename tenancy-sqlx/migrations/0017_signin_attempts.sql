-- Sign-in attempt counters (tenancy_core::signin, tenancy_sqlx::PgAttempts),
-- shared by every instance of the application. Keyed by a SHA-256 digest of
-- the account or client address: the table holds no email or address. Not
-- tenant rows (an account and a client address span tenants), so not under
-- row-level security; the application role may read and write them.
CREATE TABLE tenancy.signin_attempts (
    key             text PRIMARY KEY,
    attempts        integer NOT NULL CHECK (attempts >= 0),
    locked_until_ms bigint NOT NULL,
    last_ms         bigint NOT NULL,
    expires_at      timestamptz NOT NULL
);
CREATE INDEX signin_attempts_expiry ON tenancy.signin_attempts (expires_at);
