-- The front desk finds a patient by the last four digits of the SSN and the date of birth: a
-- compound blind index. Nullable: rows written before it get theirs from `clinic jobs reindex`.
ALTER TABLE patients ADD COLUMN ssn4_dob_bidx VARBINARY(32) NULL;
CREATE INDEX patients_ssn4_dob ON patients (clinic_id, ssn4_dob_bidx);
