-- Tenant file, version 5: when a customer was forgotten (their personal
-- fields redacted and their data-subject key destroyed).
ALTER TABLE customers ADD COLUMN erased_at TEXT;
