"""The ``drp`` schema drp keeps in the databases it protects: its tables and its advisory locks.

Every ``drp.*`` table's DDL lives here (idempotent: IF NOT EXISTS, ADD COLUMN IF NOT EXISTS),
and the module that writes a table runs it through ``ensure_table`` (or its own presence
check), under that table's advisory lock so concurrent first runs do not race:

- ``drp.schema_migrations``: migrations applied (core/migrate/tracking.py);
- ``drp.export_audit``: the append-only export audit trail (core/export/audit.py);
- ``drp.archive_segments``, ``drp.archive_kept``: the retention journal (core/retention/journal.py);
- ``drp.legal_holds``: legal holds (core/retention/holds.py);
- ``drp.tenant_restores``: the append-only audit of one-clinic restores (core/tenant_restore/audit.py);
- ``drp.portal_tokens``, ``drp.portal_exports``: the export portal's clinic tokens (stored hashed)
  and its full-export jobs (dr_pipelines/portal/).

Advisory-lock keys are registered below, each with what it guards. Their VALUES must never
change: running processes of an older release and existing sessions hold locks under them.
Single bigint keys spell "drp_xx" in ASCII so they are recognisable in pg_locks.
"""

from __future__ import annotations

import psycopg

SCHEMA = "drp"

# --- advisory-lock keys (never change a value) ---------------------------------------------
MIGRATION_RUNNER_LOCK = 0x6472_705F_6D69  # "drp_mi": one migration runner per database at a time
BACKUP_LOCK = 0x6472_705F_6261  # "drp_ba": one backup per source database at a time
EXPORT_AUDIT_LOCK = 0x6472_705F_6578  # "drp_ex": serialises the audit DDL and rate-limit checks
RETENTION_JOURNAL_LOCK = 0x6472_705F_6A72  # "drp_jr": serialises the journal DDL
LEGAL_HOLDS_LOCK = 0x6472_705F_6C68  # "drp_lh": serialises the holds DDL
PORTAL_LOCK = 0x6472_705F_706F  # "drp_po": serialises the portal tables' DDL
TENANT_RESTORES_LOCK = 0x6472_705F_7472  # "drp_tr": serialises the tenant-restore audit DDL
# Two-key locks: (class, hashtext(export id)), a session lock per running export.
EXPORT_RUNNING_LOCK_CLASS = 0x6472_7065  # "drpe"


def retention_lock_name(table: str) -> str:
    """The text whose hashtext() keys the lock of one retention run on `table` (one run per table)."""
    return f"drp.retention:{table}"


def ensure_table(conn: psycopg.Connection, table: str, ddl: str, lock_key: int, column: str | None = None) -> None:
    """Run ``ddl`` (idempotent) unless ``table`` exists (with ``column``, the DDL's newest), under an advisory
    lock against concurrent runs."""
    if conn.execute("SELECT to_regclass(%s) IS NOT NULL AND (%s::text IS NULL OR EXISTS (SELECT 1 FROM pg_attribute"
                    " WHERE attrelid = to_regclass(%s) AND attname = %s AND NOT attisdropped))",
                    (table, column, table, column)).fetchone()[0]:
        return
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (lock_key,))
        conn.execute(ddl)


def append_only_ddl(table: str) -> str:
    """Triggers refusing UPDATE, DELETE and TRUNCATE on ``drp.<table>`` (also for its owner and superusers),
    and those privileges revoked from PUBLIC: the audit tables' append-only guarantee."""
    return """CREATE OR REPLACE FUNCTION drp.{t}_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'drp.{t} is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'audit rows are never changed or removed; append a new row instead';
END
$$;

CREATE OR REPLACE TRIGGER {t}_no_update_delete
    BEFORE UPDATE OR DELETE ON drp.{t}
    FOR EACH ROW EXECUTE FUNCTION drp.{t}_append_only();

CREATE OR REPLACE TRIGGER {t}_no_truncate
    BEFORE TRUNCATE ON drp.{t}
    FOR EACH STATEMENT EXECUTE FUNCTION drp.{t}_append_only();

REVOKE UPDATE, DELETE, TRUNCATE ON drp.{t} FROM PUBLIC;
""".format(t=table)


# --- DDL ----------------------------------------------------------------------------------
SCHEMA_DDL = "\nCREATE SCHEMA IF NOT EXISTS drp;\n"
# drp.schema_migrations
TRACKING_DDL = SCHEMA_DDL + """CREATE TABLE IF NOT EXISTS drp.schema_migrations (
    version      integer PRIMARY KEY,
    description  text        NOT NULL,
    sha256       text        NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    applied_by   text        NOT NULL,
    applied_at   timestamptz NOT NULL DEFAULT now(),
    duration_ms  integer     NOT NULL
);
ALTER TABLE drp.schema_migrations
    ADD COLUMN IF NOT EXISTS fingerprint text CHECK (fingerprint ~ '^[0-9a-f]{64}$'),
    ADD COLUMN IF NOT EXISTS backup_id   text,
    ADD COLUMN IF NOT EXISTS baselined   boolean NOT NULL DEFAULT false,
    ADD COLUMN IF NOT EXISTS repaired_by text,
    ADD COLUMN IF NOT EXISTS repaired_at timestamptz;
"""

# drp.export_audit (append-only: triggers and revocations)
AUDIT_DDL = SCHEMA_DDL + """
CREATE TABLE IF NOT EXISTS drp.export_audit (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    attempt_id       uuid        NOT NULL,
    export_id        text,
    status           text        NOT NULL,
    requester        text        NOT NULL,
    tenant_ids       text[]      NOT NULL,
    root_table       text        NOT NULL,
    tables           text[]      NOT NULL DEFAULT '{}',
    formats          text[]      NOT NULL DEFAULT '{}',
    rows             bigint,
    bytes            bigint,
    manifest_sha256  text        CHECK (manifest_sha256 IS NULL OR manifest_sha256 ~ '^[0-9a-f]{64}$'),
    destination      text,
    error            text,
    started_at       timestamptz NOT NULL,
    finished_at      timestamptz,
    recorded_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    recorded_by      name        NOT NULL DEFAULT current_user
);

-- Named, and replaced when this list grows (tables created by earlier releases allow fewer statuses).
ALTER TABLE drp.export_audit DROP CONSTRAINT IF EXISTS export_audit_status_check;
ALTER TABLE drp.export_audit ADD CONSTRAINT export_audit_status_check
    CHECK (status IN ('started', 'succeeded', 'failed', 'refused', 'abandoned', 'expired', 'granted', 'discarded'));

-- The export portal's columns (migration-safe on tables of earlier releases): which credential asked,
-- from which address, the HTTP request, and the sha256 of a body streamed over HTTP.
ALTER TABLE drp.export_audit
    ADD COLUMN IF NOT EXISTS credential_id   text,
    ADD COLUMN IF NOT EXISTS client_address  text,
    ADD COLUMN IF NOT EXISTS request         text,
    ADD COLUMN IF NOT EXISTS content_sha256  text CHECK (content_sha256 IS NULL OR content_sha256 ~ '^[0-9a-f]{64}$');

CREATE INDEX IF NOT EXISTS export_audit_tenants_idx ON drp.export_audit USING gin (tenant_ids);
CREATE INDEX IF NOT EXISTS export_audit_started_idx ON drp.export_audit (started_at);

""" + append_only_ddl("export_audit")

# drp.archive_segments: the retention journal
JOURNAL_DDL = SCHEMA_DDL + """CREATE TABLE IF NOT EXISTS drp.archive_segments (
    id            text        PRIMARY KEY,
    run_id        text        NOT NULL,
    table_name    text        NOT NULL,
    tenant_id     text        NOT NULL,
    month         date        NOT NULL,
    state         text        NOT NULL CHECK (state IN ('pending', 'written', 'verified', 'deleted', 'abandoned')),
    storage_url   text        NOT NULL,
    prefix        text        NOT NULL,
    cutoff        timestamptz NOT NULL,
    predicate     text        NOT NULL,
    rule          text        NOT NULL,
    rows          bigint,
    bytes         bigint,
    sha256        text,
    checksum      text,
    method        text,
    deleted_rows  bigint      NOT NULL DEFAULT 0,
    kept_rows     bigint      NOT NULL DEFAULT 0,
    next_offset   bigint      NOT NULL DEFAULT 0,
    batches       integer     NOT NULL DEFAULT 0,
    longest_batch_s double precision NOT NULL DEFAULT 0,
    removed_by    text        CHECK (removed_by IN ('batches', 'partition')),
    error         text,
    created_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at    timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS archive_segments_unfinished_idx ON drp.archive_segments (table_name, created_at)
    WHERE state IN ('pending', 'written', 'verified');
CREATE INDEX IF NOT EXISTS archive_segments_lookup_idx ON drp.archive_segments (table_name, tenant_id, month);
"""
# The archived rows a delete batch left in place (changed since the archive, or held now): one row
# each, inserted in the batch's transaction. pk: the primary key's values as text (rendered under
# core/pg/checksums.RENDER_SETTINGS); row_hash: the archived version's hash (__drp_row_hash).
# Separate from JOURNAL_DDL: journals older than this table get it on their next run.
KEPT_DDL = """
CREATE TABLE IF NOT EXISTS drp.archive_kept (
    segment_id    text        NOT NULL REFERENCES drp.archive_segments (id),
    pk            jsonb       NOT NULL,
    row_hash      bigint      NOT NULL,
    PRIMARY KEY (segment_id, pk)
);
"""

# drp.legal_holds
HOLDS_DDL = SCHEMA_DDL + """CREATE TABLE IF NOT EXISTS drp.legal_holds (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id   text        NOT NULL,
    table_name  text,
    predicate   text        CHECK (predicate IS NULL OR table_name IS NOT NULL),
    reason      text        NOT NULL CHECK (reason <> ''),
    placed_by   text        NOT NULL,
    placed_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    released_by text,
    released_at timestamptz,
    CHECK ((released_by IS NULL) = (released_at IS NULL))
);
CREATE INDEX IF NOT EXISTS legal_holds_active_idx ON drp.legal_holds (tenant_id) WHERE released_at IS NULL;
"""

# drp.portal_tokens: clinic credentials of the export portal, only their sha256 stored (dr_pipelines/portal/tokens.py)
PORTAL_TOKENS_DDL = SCHEMA_DDL + """CREATE TABLE IF NOT EXISTS drp.portal_tokens (
    token_id     text        PRIMARY KEY,
    token_sha256 text        NOT NULL UNIQUE CHECK (token_sha256 ~ '^[0-9a-f]{64}$'),
    clinic_id    text        NOT NULL,
    label        text        NOT NULL DEFAULT '',
    created_by   text        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    expires_at   timestamptz NOT NULL,
    revoked_at   timestamptz,
    revoked_by   text,
    CHECK ((revoked_at IS NULL) = (revoked_by IS NULL))
);
CREATE INDEX IF NOT EXISTS portal_tokens_clinic_idx ON drp.portal_tokens (clinic_id);
"""

# drp.portal_exports: full exports requested through the portal (dr_pipelines/portal/worker.py)
PORTAL_EXPORTS_DDL = SCHEMA_DDL + """CREATE TABLE IF NOT EXISTS drp.portal_exports (
    job_id        text        PRIMARY KEY,
    clinic_id     text        NOT NULL,
    credential_id text        NOT NULL,
    state         text        NOT NULL CHECK (state IN ('queued', 'running', 'succeeded', 'failed')),
    formats       text[]      NOT NULL,
    tables        text[]      NOT NULL DEFAULT '{}',
    zip_bundle    boolean     NOT NULL DEFAULT false,
    export_id     text,
    rows          bigint,
    bytes         bigint,
    error         text,
    requested_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    started_at    timestamptz,
    finished_at   timestamptz
);
CREATE INDEX IF NOT EXISTS portal_exports_clinic_idx ON drp.portal_exports (clinic_id, requested_at);
-- The Dagster run a job was submitted as (portal_dagster_url), followed by the job.
ALTER TABLE drp.portal_exports ADD COLUMN IF NOT EXISTS run_id text;
"""

# drp.tenant_restores: who restored which clinic to when, why, and what came of it (core/tenant_restore/audit.py).
# Append-only like drp.export_audit: an attempt appends 'started', then one of 'succeeded', 'refused', 'failed'
# (same attempt_id); a process killed in between leaves only 'started'.
TENANT_RESTORES_DDL = SCHEMA_DDL + """CREATE TABLE IF NOT EXISTS drp.tenant_restores (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    attempt_id      uuid        NOT NULL,
    status          text        NOT NULL CHECK (status IN ('started', 'succeeded', 'refused', 'failed')),
    requester       text        NOT NULL CHECK (requester <> ''),
    reason          text        NOT NULL CHECK (reason <> ''),
    tenant_id       text        NOT NULL,
    restore_point   text        NOT NULL,
    mode            text        NOT NULL,
    policies        text[]      NOT NULL,
    on_conflict     text,
    counts          jsonb       NOT NULL DEFAULT '{}',
    conflicts       jsonb       NOT NULL DEFAULT '[]',
    undo_export_id  text,
    undo_storage    text,
    attempts        integer     NOT NULL DEFAULT 0,
    error           text,
    started_at      timestamptz NOT NULL,
    recorded_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    recorded_by     name        NOT NULL DEFAULT current_user
);
CREATE INDEX IF NOT EXISTS tenant_restores_tenant_idx ON drp.tenant_restores (tenant_id, started_at);

""" + append_only_ddl("tenant_restores")
