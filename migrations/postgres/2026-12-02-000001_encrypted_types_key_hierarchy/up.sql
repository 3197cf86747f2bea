-- The key hierarchy and authenticated key records (docs/adr/0003-key-hierarchy.md,
-- docs/KEYTABLE.md). A wrapping key, wrapped by the KMS or HSM, wraps the data keys locally;
-- every record carries a check value of its key and a MAC over its fields, so a database
-- writer cannot swap states, move rows between tenants or roll a rotation back unseen.
ALTER TABLE encrypted_types_keys DROP CONSTRAINT encrypted_types_keys_purpose_check;
ALTER TABLE encrypted_types_keys ADD CONSTRAINT encrypted_types_keys_purpose_check
    CHECK (purpose IN ('data', 'blind_index', 'wrapping'));
-- Per tenant and purpose, 1, 2, ...: the active key has the highest (0: not yet authenticated).
ALTER TABLE encrypted_types_keys ADD COLUMN generation BIGINT NOT NULL DEFAULT 0;
-- HMAC-SHA256(key, label), truncated to 16 bytes: wrong key bytes are caught at load.
ALTER TABLE encrypted_types_keys ADD COLUMN check_value BYTEA;
-- The deployment wrapping key whose MAC key authenticated this record, and the MAC.
ALTER TABLE encrypted_types_keys ADD COLUMN mac_key_id BIGINT;
ALTER TABLE encrypted_types_keys ADD COLUMN record_mac BYTEA;
