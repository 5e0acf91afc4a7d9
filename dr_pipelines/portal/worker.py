"""Full exports requested through the portal: a job row in drp.portal_exports, run as a Dagster run or by the portal.

With ``portal_dagster_url`` set, a job is submitted as the clinic's ``tenant_export`` partition
run (portal/dagster_runs.py): the pool thread launches it and records its run id, and the job
follows the run each time it is read (status, list, download), so it needs no thread while the
run waits or works, and survives a portal restart. Otherwise the worker is a thread pool in the
portal process (``portal_export_workers``) calling core's ``export_tenants`` (the code behind
``drp export`` and the asset). Either way: same snapshot, audit (credential id and client address
included), rate limit, housekeeping and time-to-live. A job is ``queued``, ``running``, then
``succeeded`` (with its export id) or ``failed`` (with the reason). Jobs a stopped portal left
queued or running without a run are closed as failed when the next one starts (the export's
own housekeeping sweeps their files).
"""

from __future__ import annotations

import logging
import secrets
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import psycopg
from psycopg.rows import dict_row

from dr_pipelines.core.errors import DrpError
from dr_pipelines.core.export import audit
from dr_pipelines.core.export.run import ExportOptions, export_tenants
from dr_pipelines.core.pg.connect import connect
from dr_pipelines.core.pg.drp_schema import PORTAL_EXPORTS_DDL, PORTAL_LOCK, ensure_table
from dr_pipelines.portal.context import Portal
from dr_pipelines.portal.dagster_runs import DagsterRuns
from dr_pipelines.portal.tokens import Credential, ensure_tokens_table

log = logging.getLogger("drp.portal")
JOB_COLUMNS = ("job_id, clinic_id, state, formats, tables, zip_bundle, export_id, rows, bytes, error, requested_at,"
               " started_at, finished_at, run_id")
OPEN = ("queued", "running")


def ensure_jobs_table(conn: psycopg.Connection) -> None:
    ensure_table(conn, "drp.portal_exports", PORTAL_EXPORTS_DDL, PORTAL_LOCK, column="run_id")


class ExportWorker:
    """The portal's full-export worker."""

    def __init__(self, portal: Portal) -> None:
        self.portal = portal
        self.pool = ThreadPoolExecutor(portal.settings.portal_export_workers, thread_name_prefix="drp-portal-export")
        self.dagster = DagsterRuns(portal.settings) if portal.settings.portal_dagster_url else None
        with connect(portal.dsn, autocommit=True) as conn:
            audit.ensure_audit_table(conn)  # every request leaves a row, from the first one on
            ensure_tokens_table(conn)
            ensure_jobs_table(conn)
            conn.execute("UPDATE drp.portal_exports SET state = 'failed', finished_at = clock_timestamp(),"
                         " error = 'the portal stopped before this export finished; request it again'"
                         " WHERE state IN ('queued', 'running') AND run_id IS NULL")  # a run goes on without us
            if self.dagster is None:  # ... but is no longer followed
                conn.execute("UPDATE drp.portal_exports SET state = 'failed', finished_at = clock_timestamp(),"
                             " error = 'the portal no longer follows Dagster runs (portal_dagster_url unset); "
                             "request the export again' WHERE state IN ('queued', 'running')")

    def submit(self, conn: psycopg.Connection, credential: Credential, client: str | None, formats: list[str],
               tables: list[str], zip_bundle: bool) -> dict[str, Any]:
        job_id = f"job_{secrets.token_hex(8)}"
        conn.execute("INSERT INTO drp.portal_exports (job_id, clinic_id, credential_id, state, formats, tables,"
                     " zip_bundle) VALUES (%s, %s, %s, 'queued', %s, %s, %s)",
                     (job_id, credential.clinic_id, credential.id, formats, tables, zip_bundle))
        run = self._launch if self.dagster is not None else self._run
        self.pool.submit(run, job_id, credential, client, formats, tables, zip_bundle)
        return job(conn, credential.clinic_id, job_id)  # type: ignore[return-value]

    def _launch(self, job_id: str, credential: Credential, client: str | None, formats: list[str],
                tables: list[str], zip_bundle: bool) -> None:
        """Submit the job as the clinic's tenant_export run; the run's config carries what the audit records."""
        assert self.dagster is not None
        config = {"formats": formats, "tables": tables, "zip_bundle": zip_bundle, "requester": credential.subject,
                  "credential_id": credential.id, "client_address": client or ""}
        with connect(self.portal.dsn, autocommit=True) as conn:
            try:
                run_id = self.dagster.launch(credential.clinic_id, config, {"drp/portal_job": job_id})
            except Exception as exc:  # noqa: BLE001 - recorded on the job
                _fail(conn, job_id, exc)
                return
            conn.execute("UPDATE drp.portal_exports SET run_id = %s WHERE job_id = %s", (run_id, job_id))

    def current(self, conn: psycopg.Connection, row: dict[str, Any]) -> dict[str, Any]:
        """``row`` brought up to date with its Dagster run (a job without a run, or finished, is as it is)."""
        if self.dagster is None or row["run_id"] is None or row["state"] not in OPEN:
            return row
        try:
            run = self.dagster.state(row["run_id"], row["clinic_id"])
        except DrpError as exc:  # the webserver is away for now: the job keeps its last known state
            log.warning("portal export %s: its Dagster run cannot be followed now: %s", row["job_id"], exc.problem)
            return row
        conn.execute("UPDATE drp.portal_exports SET state = %s, started_at = coalesce(to_timestamp(%s), started_at),"
                     " finished_at = to_timestamp(%s), export_id = %s, rows = %s, bytes = %s, error = %s"
                     " WHERE job_id = %s AND state IN ('queued', 'running')",
                     (run.state, run.started, run.finished if run.state not in OPEN else None, run.export_id,
                      run.rows, run.bytes, run.error and run.error[:2000], row["job_id"]))
        return job(conn, row["clinic_id"], row["job_id"]) or row

    def _run(self, job_id: str, credential: Credential, client: str | None, formats: list[str], tables: list[str],
             zip_bundle: bool) -> None:
        s = self.portal.settings
        options = ExportOptions(
            formats=tuple(formats), root=s.export_tenant_root, key_column=s.export_tenant_key,
            exclude=tuple(s.export_exclude_tables), tables=tuple(tables), requester=credential.subject,
            max_per_hour=s.export_max_per_hour or None, zip_bundle=zip_bundle, ttl_days=s.export_ttl_days or None,
            sweep_after=timedelta(minutes=s.export_sweep_after_minutes), credential_id=credential.id,
            client_address=client)
        with connect(self.portal.dsn, autocommit=True) as conn:
            conn.execute("UPDATE drp.portal_exports SET state = 'running', started_at = clock_timestamp()"
                         " WHERE job_id = %s", (job_id,))
            try:
                result = export_tenants(self.portal.dsn, self.portal.storage, [credential.clinic_id], options)
            except Exception as exc:  # noqa: BLE001 - recorded on the job (and in the audit by export_tenants)
                _fail(conn, job_id, exc)
                return
            m = result.manifest
            conn.execute("UPDATE drp.portal_exports SET state = 'succeeded', export_id = %s, rows = %s, bytes = %s,"
                         " finished_at = clock_timestamp() WHERE job_id = %s",
                         (result.export_id, m.total_rows, m.stored_bytes, job_id))

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def _fail(conn: psycopg.Connection, job_id: str, exc: Exception) -> None:
    """Close the job as failed with a reason a clinic may read (a DrpError's problem, else the exception's type)."""
    error = exc.problem if isinstance(exc, DrpError) else f"{type(exc).__name__}: the export failed"
    conn.execute("UPDATE drp.portal_exports SET state = 'failed', error = %s, finished_at = clock_timestamp()"
                 " WHERE job_id = %s", (error[:2000], job_id))


def job(conn: psycopg.Connection, clinic_id: str, job_id: str) -> dict[str, Any] | None:
    """The job ``job_id`` if it is ``clinic_id``'s (another clinic's job is as absent as an unknown one)."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(f"SELECT {JOB_COLUMNS} FROM drp.portal_exports WHERE job_id = %s AND clinic_id = %s",
                           (job_id, clinic_id)).fetchone()


def jobs(conn: psycopg.Connection, clinic_id: str, limit: int = 50) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(f"SELECT {JOB_COLUMNS} FROM drp.portal_exports WHERE clinic_id = %s"
                           " ORDER BY requested_at DESC LIMIT %s", (clinic_id, limit)).fetchall()
