-- The example app's patients: five encrypted fields, two blind indexes, the clinic as tenant.
CREATE TABLE patients (
    id BIGINT PRIMARY KEY,
    clinic_id BIGINT NOT NULL,
    name BYTEA NOT NULL,
    email BYTEA NOT NULL,
    email_bidx BYTEA NOT NULL,
    ssn BYTEA NOT NULL,
    ssn_bidx BYTEA NOT NULL,
    date_of_birth BYTEA NOT NULL,
    notes BYTEA
);
CREATE INDEX patients_email ON patients (clinic_id, email_bidx);
CREATE INDEX patients_ssn ON patients (clinic_id, ssn_bidx);
