-- The key table of encrypted-types: data keys and blind-index root keys, stored only wrapped
-- by a KEK (KMS, HSM or, in development, a local file). See docs/KEYS.md.
CREATE TABLE encrypted_types_keys (
    key_id BIGINT PRIMARY KEY CHECK (key_id BETWEEN 0 AND 4294967295), -- the u32 in sealed headers
    -- Bytes, not a collated string: tenants 'a', 'A' and 'a ' are three tenants.
    tenant VARBINARY(1020),                    -- UTF-8; NULL: keys of values without a tenant
    purpose VARCHAR(16) NOT NULL CHECK (purpose IN ('data', 'blind_index')),
    state VARCHAR(16) NOT NULL CHECK (state IN ('active', 'retired', 'destroyed')),
    wrapped_key VARBINARY(2048),               -- NULL once destroyed
    kek_ref VARCHAR(512) NOT NULL,             -- which KEK wrapped it
    created_at BIGINT NOT NULL,                -- unix seconds
    state_changed_at BIGINT NOT NULL,          -- unix seconds
    -- At most one active key per tenant and purpose, even with concurrent creators (MySQL has
    -- no partial indexes: a generated column that is NULL unless the key is active).
    active_slot VARBINARY(1100)
        AS (IF(state = 'active', CONCAT(COALESCE(tenant, ''), '/', purpose), NULL)) STORED,
    CHECK ((state = 'destroyed') = (wrapped_key IS NULL)),
    INDEX encrypted_types_keys_tenant (tenant, purpose, state),
    UNIQUE INDEX encrypted_types_keys_one_active (active_slot)
);
