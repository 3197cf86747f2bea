CREATE TABLE encrypted_types_keys_old (
    key_id BIGINT PRIMARY KEY NOT NULL,
    tenant TEXT,
    purpose TEXT NOT NULL CHECK (purpose IN ('data', 'blind_index')),
    state TEXT NOT NULL CHECK (state IN ('active', 'retired', 'destroyed')),
    wrapped_key BLOB,
    kek_ref TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    state_changed_at BIGINT NOT NULL,
    CHECK ((state = 'destroyed') = (wrapped_key IS NULL))
);
INSERT INTO encrypted_types_keys_old
    SELECT key_id, tenant, purpose, state, wrapped_key, kek_ref, created_at, state_changed_at
    FROM encrypted_types_keys WHERE purpose <> 'wrapping';
DROP TABLE encrypted_types_keys;
ALTER TABLE encrypted_types_keys_old RENAME TO encrypted_types_keys;
CREATE INDEX encrypted_types_keys_tenant ON encrypted_types_keys (tenant, purpose, state);
CREATE UNIQUE INDEX encrypted_types_keys_one_active
    ON encrypted_types_keys (COALESCE(tenant, ''), purpose) WHERE state = 'active';
