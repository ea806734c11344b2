-- Tenant file, version 3: policies, payments and commissions. Money is
-- integer minor units (paise for INR), never floating point.
CREATE TABLE policies (
    tenant_id         TEXT    NOT NULL,
    id                TEXT    PRIMARY KEY,
    policy_number     TEXT    NOT NULL,
    product           TEXT    NOT NULL,
    customer_id       TEXT    NOT NULL REFERENCES customers (id),
    agent_id          TEXT    NOT NULL REFERENCES agents (id),
    sum_assured_minor INTEGER NOT NULL CHECK (sum_assured_minor > 0),
    premium_minor     INTEGER NOT NULL CHECK (premium_minor > 0),
    currency          TEXT    NOT NULL DEFAULT 'INR',
    premium_frequency TEXT    NOT NULL,
    issue_date        TEXT,
    commencement_date TEXT,
    maturity_date     TEXT,
    next_due_date     TEXT,
    status            TEXT    NOT NULL DEFAULT 'quoted',
    riders            TEXT    NOT NULL DEFAULT '[]',
    shared            INTEGER NOT NULL DEFAULT 0,
    active            INTEGER NOT NULL DEFAULT 1,
    created_at        TEXT    NOT NULL,
    UNIQUE (tenant_id, policy_number)
);
CREATE INDEX policies_agent ON policies (agent_id);
CREATE INDEX policies_customer ON policies (customer_id);
CREATE INDEX policies_due ON policies (next_due_date);

CREATE TABLE payments (
    tenant_id       TEXT    NOT NULL,
    id              TEXT    PRIMARY KEY,
    policy_id       TEXT    NOT NULL REFERENCES policies (id),
    amount_minor    INTEGER NOT NULL CHECK (amount_minor > 0),
    currency        TEXT    NOT NULL DEFAULT 'INR',
    due_date        TEXT    NOT NULL,
    paid_date       TEXT,
    method          TEXT,
    status          TEXT    NOT NULL DEFAULT 'pending',
    transaction_ref TEXT,
    created_at      TEXT    NOT NULL,
    UNIQUE (tenant_id, transaction_ref)
);
CREATE INDEX payments_policy ON payments (policy_id);
CREATE INDEX payments_paid ON payments (paid_date);

CREATE TABLE commissions (
    tenant_id    TEXT    NOT NULL,
    id           TEXT    PRIMARY KEY,
    payment_id   TEXT    NOT NULL REFERENCES payments (id),
    policy_id    TEXT    NOT NULL REFERENCES policies (id),
    agent_id     TEXT    NOT NULL REFERENCES agents (id),
    kind         TEXT    NOT NULL,
    rate_bp      INTEGER NOT NULL CHECK (rate_bp BETWEEN 0 AND 10000),
    amount_minor INTEGER NOT NULL CHECK (amount_minor >= 0),
    currency     TEXT    NOT NULL DEFAULT 'INR',
    status       TEXT    NOT NULL DEFAULT 'pending',
    created_at   TEXT    NOT NULL,
    UNIQUE (payment_id, kind)
);
CREATE INDEX commissions_agent ON commissions (agent_id);
