-- Invitations (tenancy_core::invite::InvitationStore): only the token's
-- SHA-256 is stored. Tenant rows under RLS.
CREATE TABLE tenancy.invitations (
    id          uuid        PRIMARY KEY,
    tenant_id   uuid        NOT NULL,
    email       text        NOT NULL CHECK (length(email) BETWEEN 3 AND 254),
    role        text        NOT NULL CHECK (role IN ('viewer', 'member', 'manager', 'admin')),
    token_hash  bytea       NOT NULL UNIQUE CHECK (length(token_hash) = 32),
    invited_by  text        NOT NULL,
    created_at  timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL,
    accepted_at timestamptz,
    accepted_by text,
    CHECK ((accepted_at IS NULL) = (accepted_by IS NULL))
);

CREATE INDEX invitations_tenant_idx ON tenancy.invitations (tenant_id, created_at);

ALTER TABLE tenancy.invitations ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenancy.invitations FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON tenancy.invitations AS PERMISSIVE FOR ALL
    USING (tenant_id = (SELECT NULLIF(current_setting('app.tenant_id', true), '')::uuid))
    WITH CHECK (tenant_id = (SELECT NULLIF(current_setting('app.tenant_id', true), '')::uuid));
