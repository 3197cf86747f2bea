-- The example app's patients: five encrypted fields, two blind indexes, the clinic as tenant.
CREATE TABLE patients (
    id BIGINT PRIMARY KEY NOT NULL,
    clinic_id BIGINT NOT NULL,
    name BLOB NOT NULL,
    email BLOB NOT NULL,
    email_bidx BLOB NOT NULL,
    ssn BLOB NOT NULL,
    ssn_bidx BLOB NOT NULL,
    date_of_birth BLOB NOT NULL,
    notes BLOB
);
CREATE INDEX patients_email ON patients (clinic_id, email_bidx);
CREATE INDEX patients_ssn ON patients (clinic_id, ssn_bidx);
