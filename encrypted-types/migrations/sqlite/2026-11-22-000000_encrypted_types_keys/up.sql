-- The key table of encrypted-types: data keys and blind-index root keys, stored only wrapped
-- by a KEK (KMS, HSM or, in development, a local file). See docs/KEYS.md.
CREATE TABLE encrypted_types_keys (
    key_id BIGINT PRIMARY KEY NOT NULL,        -- the u32 written in sealed headers
    tenant TEXT,                               -- NULL: keys of values without a tenant
    purpose TEXT NOT NULL CHECK (purpose IN ('data', 'blind_index')),
    state TEXT NOT NULL CHECK (state IN ('active', 'retired', 'destroyed')),
    wrapped_key BLOB,                          -- NULL once destroyed
    kek_ref TEXT NOT NULL,                     -- which KEK wrapped it
    created_at BIGINT NOT NULL,                -- unix seconds
    state_changed_at BIGINT NOT NULL,          -- unix seconds
    CHECK ((state = 'destroyed') = (wrapped_key IS NULL))
);
CREATE INDEX encrypted_types_keys_tenant ON encrypted_types_keys (tenant, purpose, state);
-- At most one active key per tenant and purpose, even with concurrent creators.
CREATE UNIQUE INDEX encrypted_types_keys_one_active
    ON encrypted_types_keys (COALESCE(tenant, ''), purpose) WHERE state = 'active';
