-- Read-only conveniences for the front desk and billing.

CREATE VIEW upcoming_appointments AS
SELECT a.clinic_id,
       a.id                      AS appointment_id,
       a.starts_at,
       a.starts_at + a.duration  AS ends_at,
       a.status,
       a.reason,
       p.id                      AS patient_id,
       p.external_id,
       p.given_name,
       p.family_name,
       s.id                      AS staff_user_id,
       s.full_name               AS staff_name
FROM appointments a
JOIN patients p    ON p.clinic_id = a.clinic_id AND p.id = a.patient_id
JOIN staff_users s ON s.clinic_id = a.clinic_id AND s.id = a.staff_user_id
WHERE a.starts_at >= now()
  AND a.status IN ('scheduled', 'confirmed');

-- What each patient owes: non-void invoices minus payments, in the clinic's currency.
CREATE VIEW patient_balances AS
SELECT p.clinic_id,
       p.id                                          AS patient_id,
       coalesce(i.invoiced, 0)                       AS invoiced,
       coalesce(i.paid, 0)                           AS paid,
       coalesce(i.invoiced, 0) - coalesce(i.paid, 0) AS balance
FROM patients p
LEFT JOIN (
    SELECT inv.clinic_id,
           inv.patient_id,
           sum(inv.total)                  AS invoiced,
           sum(coalesce(pay.paid, 0))      AS paid
    FROM invoices inv
    LEFT JOIN (
        SELECT clinic_id, invoice_id, sum(amount) AS paid
        FROM payments
        GROUP BY clinic_id, invoice_id
    ) pay ON pay.clinic_id = inv.clinic_id AND pay.invoice_id = inv.id
    WHERE inv.status <> 'void'
    GROUP BY inv.clinic_id, inv.patient_id
) i ON i.clinic_id = p.clinic_id AND i.patient_id = p.id;
