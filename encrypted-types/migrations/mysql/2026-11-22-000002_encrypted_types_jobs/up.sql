-- Checkpoints of the re-sealing jobs: one row per job (and column, and primary-key range). A
-- batch's updates and its checkpoint commit together, so a killed job resumes where it stopped.
CREATE TABLE encrypted_types_jobs (
    job VARBINARY(512) PRIMARY KEY,
    last_pk BIGINT NOT NULL,       -- rows with a primary key up to here are done
    rows_done BIGINT NOT NULL,
    updated_at BIGINT NOT NULL     -- unix seconds
);
