-- Tenant file, version 2: customers' sensitive fields, encrypted per tenant
-- (tenancy_core::crypto, AES-256-GCM bound to tenant, column and row; text
-- form `tnc1:`), and keyed blind indexes for equality search on PAN and
-- phone. No plaintext of these fields is ever stored.
ALTER TABLE customers ADD COLUMN phone_enc TEXT;
ALTER TABLE customers ADD COLUMN phone_index BLOB;
ALTER TABLE customers ADD COLUMN pan_enc TEXT;
ALTER TABLE customers ADD COLUMN pan_index BLOB;
ALTER TABLE customers ADD COLUMN aadhaar_enc TEXT;
ALTER TABLE customers ADD COLUMN bank_account_enc TEXT;
ALTER TABLE customers ADD COLUMN medical_history_enc TEXT;
CREATE INDEX customers_pan_index ON customers (pan_index);
CREATE INDEX customers_phone_index ON customers (phone_index);
