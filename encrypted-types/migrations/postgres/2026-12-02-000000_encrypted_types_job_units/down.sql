DROP TABLE encrypted_types_jobs;
CREATE TABLE encrypted_types_jobs (
    job TEXT PRIMARY KEY,
    last_pk BIGINT NOT NULL,       -- rows with a primary key up to here are done
    rows_done BIGINT NOT NULL,
    updated_at BIGINT NOT NULL     -- unix seconds
);
