-- The application's own table in the control database: user accounts.
-- Memberships (user x tenant x role) are kept by tenancy-sqlx's
-- SqliteControl; passwords are argon2id hashes.
CREATE TABLE IF NOT EXISTS users (
    id            TEXT PRIMARY KEY NOT NULL,
    email         TEXT NOT NULL UNIQUE,
    name          TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    created_at    TEXT NOT NULL
);

-- TOTP enrolments: `last_step` is the time step of the last code accepted
-- (-1 while unconfirmed), so a code is never accepted twice.
CREATE TABLE IF NOT EXISTS user_totp (
    user_id   TEXT PRIMARY KEY NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    secret    BLOB NOT NULL,
    last_step INTEGER NOT NULL DEFAULT -1
);
