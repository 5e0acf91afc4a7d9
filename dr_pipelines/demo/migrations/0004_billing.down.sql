DROP TABLE payments;
DROP TABLE invoice_lines;
DROP TABLE invoices;       -- drops invoice_number_seq with it (OWNED BY)
DROP TYPE payment_method;
DROP TYPE invoice_status;
