DROP TABLE visits;
DROP TABLE appointments;
DROP TABLE patients;
DROP TYPE appointment_status;
