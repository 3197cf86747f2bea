DROP INDEX patients_ssn4_dob ON patients;
ALTER TABLE patients DROP COLUMN ssn4_dob_bidx;
