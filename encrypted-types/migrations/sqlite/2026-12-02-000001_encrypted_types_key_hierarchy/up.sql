-- The key hierarchy and authenticated key records (docs/adr/0003-key-hierarchy.md,
-- docs/KEYTABLE.md). A wrapping key, wrapped by the KMS or HSM, wraps the data keys locally;
-- every record carries a check value of its key and a MAC over its fields, so a database
-- writer cannot swap states, move rows between tenants or roll a rotation back unseen.
-- SQLite cannot change a CHECK in place: the table is rebuilt.
CREATE TABLE encrypted_types_keys_new (
    key_id BIGINT PRIMARY KEY NOT NULL,        -- the u32 written in sealed headers
    tenant TEXT,                               -- NULL: keys of values without a tenant
    purpose TEXT NOT NULL CHECK (purpose IN ('data', 'blind_index', 'wrapping')),
    state TEXT NOT NULL CHECK (state IN ('active', 'retired', 'destroyed')),
    wrapped_key BLOB,                          -- NULL once destroyed
    kek_ref TEXT NOT NULL,                     -- which KEK (or wrapping key) wrapped it
    created_at BIGINT NOT NULL,                -- unix seconds
    state_changed_at BIGINT NOT NULL,          -- unix seconds
    -- Per tenant and purpose, 1, 2, ...: the active key has the highest (0: not yet authenticated).
    generation BIGINT NOT NULL DEFAULT 0,
    -- HMAC-SHA256(key, label), truncated to 16 bytes: wrong key bytes are caught at load.
    check_value BLOB,
    -- The deployment wrapping key whose MAC key authenticated this record, and the MAC.
    mac_key_id BIGINT,
    record_mac BLOB,
    CHECK ((state = 'destroyed') = (wrapped_key IS NULL))
);
INSERT INTO encrypted_types_keys_new
    (key_id, tenant, purpose, state, wrapped_key, kek_ref, created_at, state_changed_at)
    SELECT key_id, tenant, purpose, state, wrapped_key, kek_ref, created_at, state_changed_at
    FROM encrypted_types_keys;
DROP TABLE encrypted_types_keys;
ALTER TABLE encrypted_types_keys_new RENAME TO encrypted_types_keys;
CREATE INDEX encrypted_types_keys_tenant ON encrypted_types_keys (tenant, purpose, state);
CREATE UNIQUE INDEX encrypted_types_keys_one_active
    ON encrypted_types_keys (COALESCE(tenant, ''), purpose) WHERE state = 'active';
