DROP TABLE encrypted_types_jobs;
