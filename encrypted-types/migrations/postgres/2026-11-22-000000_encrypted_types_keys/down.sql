DROP TABLE encrypted_types_keys;
