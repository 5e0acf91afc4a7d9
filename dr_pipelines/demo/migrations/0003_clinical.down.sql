DROP TABLE prescriptions;
DROP TABLE clinical_notes;
