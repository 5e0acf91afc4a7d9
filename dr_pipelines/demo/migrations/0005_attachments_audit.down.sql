DROP TABLE audit_log;      -- with its partitions and audit_log_id_seq (OWNED BY)
DROP TABLE attachments;
