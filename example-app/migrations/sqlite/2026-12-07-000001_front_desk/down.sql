DROP INDEX patients_ssn4_dob;
ALTER TABLE patients DROP COLUMN ssn4_dob_bidx;
