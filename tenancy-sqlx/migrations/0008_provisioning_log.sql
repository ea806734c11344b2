-- Provisioning pipeline progress (tenancy_core::provision::ProvisioningLog):
-- operations data, written by the provisioning role, not the request path.
CREATE TABLE tenancy.provisioning_log (
    tenant_id  uuid        NOT NULL,
    step       text        NOT NULL CHECK (length(step) BETWEEN 1 AND 100),
    position   integer     NOT NULL CHECK (position >= 0),
    status     text        NOT NULL CHECK (status IN ('pending', 'done', 'failed')),
    attempts   integer     NOT NULL CHECK (attempts >= 0),
    error      text,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, step)
);
