ALTER TABLE encrypted_types_keys DROP COLUMN kek_check;
