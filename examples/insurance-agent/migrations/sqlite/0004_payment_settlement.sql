-- Tenant file, version 4: who settled a payment (completed or refunded it)
-- and when.
ALTER TABLE payments ADD COLUMN confirmed_by TEXT;
ALTER TABLE payments ADD COLUMN confirmed_at TEXT;
ALTER TABLE payments ADD COLUMN refunded_by TEXT;
ALTER TABLE payments ADD COLUMN refunded_at TEXT;
