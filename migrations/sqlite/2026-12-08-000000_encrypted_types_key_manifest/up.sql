-- The key table's manifest (docs/KEYTABLE.md §6): a MAC'd row per group of key records (a
-- tenant's, or those of no tenant) with an epoch and a digest of the group's records, and a
-- deployment row. A load refuses records that differ from it, so an older copy of a record
-- restored by a database writer is found. Dropping it makes every load refuse the key table.
CREATE TABLE encrypted_types_key_manifest (
    scope TEXT PRIMARY KEY,          -- 'tenant:<id>', 'none' or 'deployment'
    epoch BIGINT NOT NULL CHECK (epoch >= 0),
    digest BLOB NOT NULL,
    mac_key_id BIGINT NOT NULL,      -- the deployment wrapping key whose MAC key made `mac`
    mac BLOB NOT NULL
);
