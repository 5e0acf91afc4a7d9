DROP VIEW patient_balances;
DROP VIEW upcoming_appointments;
