ALTER TABLE encrypted_types_keys DROP COLUMN record_mac;
ALTER TABLE encrypted_types_keys DROP COLUMN mac_key_id;
ALTER TABLE encrypted_types_keys DROP COLUMN check_value;
ALTER TABLE encrypted_types_keys DROP COLUMN generation;
ALTER TABLE encrypted_types_keys DROP CONSTRAINT encrypted_types_keys_purpose_check;
ALTER TABLE encrypted_types_keys ADD CONSTRAINT encrypted_types_keys_purpose_check
    CHECK (purpose IN ('data', 'blind_index'));
