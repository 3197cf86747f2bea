-- The example app's patients: five encrypted fields, two blind indexes, the clinic as tenant.
-- VARBINARY, never BINARY (which pads with zeros and breaks the tag); strict mode rejects
-- over-long values instead of truncating them.
CREATE TABLE patients (
    id BIGINT PRIMARY KEY,
    clinic_id BIGINT NOT NULL,
    name VARBINARY(1024) NOT NULL,
    email VARBINARY(1024) NOT NULL,
    email_bidx VARBINARY(32) NOT NULL,
    ssn VARBINARY(256) NOT NULL,
    ssn_bidx VARBINARY(32) NOT NULL,
    date_of_birth VARBINARY(64) NOT NULL,
    notes BLOB,
    INDEX patients_email (clinic_id, email_bidx),
    INDEX patients_ssn (clinic_id, ssn_bidx)
);
