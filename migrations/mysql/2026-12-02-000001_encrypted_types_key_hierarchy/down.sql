ALTER TABLE encrypted_types_keys
    DROP COLUMN record_mac,
    DROP COLUMN mac_key_id,
    DROP COLUMN check_value,
    DROP COLUMN generation,
    MODIFY purpose VARCHAR(16) NOT NULL CHECK (purpose IN ('data', 'blind_index'));
