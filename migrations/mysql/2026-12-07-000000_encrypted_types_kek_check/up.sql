-- The check value of the KEK that wrapped a record directly (docs/KEYTABLE.md, kek_check):
-- compared only after an unwrap failed, so a wrong KEK is reported as Error::WrongKek and not
-- as tampering. NULL for records written before, and for keys wrapped by a wrapping key.
ALTER TABLE encrypted_types_keys ADD COLUMN kek_check VARBINARY(64);
