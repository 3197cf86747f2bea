-- The key hierarchy and authenticated key records (docs/adr/0003-key-hierarchy.md,
-- docs/KEYTABLE.md). A wrapping key, wrapped by the KMS or HSM, wraps the data keys locally;
-- every record carries a check value of its key and a MAC over its fields, so a database
-- writer cannot swap states, move rows between tenants or roll a rotation back unseen.
-- (MariaDB replaces a column's own CHECK when the column is redefined.)
ALTER TABLE encrypted_types_keys
    MODIFY purpose VARCHAR(16) NOT NULL CHECK (purpose IN ('data', 'blind_index', 'wrapping')),
    -- Per tenant and purpose, 1, 2, ...: the active key has the highest (0: not yet authenticated).
    ADD COLUMN generation BIGINT NOT NULL DEFAULT 0,
    -- HMAC-SHA256(key, label), truncated to 16 bytes: wrong key bytes are caught at load.
    ADD COLUMN check_value VARBINARY(64),
    -- The deployment wrapping key whose MAC key authenticated this record, and the MAC.
    ADD COLUMN mac_key_id BIGINT,
    ADD COLUMN record_mac VARBINARY(64);
