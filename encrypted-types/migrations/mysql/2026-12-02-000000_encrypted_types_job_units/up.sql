-- Jobs as units of work (one column or index over one primary-key range), each with its own
-- checkpoint and lease, so any number of workers can share a job. Replaces the single
-- BIGINT checkpoint of the first jobs table, which could only page integer keys; a job that
-- was running under it starts over (every job is idempotent).
DROP TABLE IF EXISTS encrypted_types_jobs;
CREATE TABLE encrypted_types_jobs (
    job VARBINARY(200) NOT NULL,     -- the job's name
    unit VARBINARY(300) NOT NULL,   -- "<column>#<part>": one pass over one range
    operation VARBINARY(16) NOT NULL,     -- rotate | reindex | encrypt
    target TEXT NOT NULL,          -- what the pass moves to (key set, index version)
    range_from TEXT,               -- encoded key tuple, inclusive; NULL = the first row
    range_to TEXT,                 -- encoded key tuple, exclusive; NULL = past the last row
    last_key TEXT,                 -- encoded key tuple done up to; NULL = nothing yet
    state VARBINARY(16) NOT NULL,         -- pending | done
    rows_done BIGINT NOT NULL,     -- values written so far
    lease_owner VARBINARY(100),            -- the worker holding the unit
    lease_until BIGINT,            -- unix seconds, by the database's clock
    updated_at BIGINT NOT NULL,    -- unix seconds
    PRIMARY KEY (job, unit)
);
