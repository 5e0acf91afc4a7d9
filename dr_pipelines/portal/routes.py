"""The portal's endpoints: each authenticates, checks the clinic in its credential, and leaves an audit row.

Every handler runs in a worker thread with its own autocommit connection (``Call.conn``) for
the credential check and the audit. The clinic is always the credential's: no URL or body
field names a clinic, and an id of another clinic's object (an export job, a stream) is
answered exactly like an unknown one (404), so existence is not confirmed across clinics.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any
from urllib.parse import quote

import anyio
from psycopg import sql
from psycopg.rows import dict_row
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from dr_pipelines.core.errors import ConfigError, DrpError, ExportRefusedError
from dr_pipelines.core.export import audit
from dr_pipelines.core.export.formats import FORMATS
from dr_pipelines.core.export.tenants import TenantSnapshot, tenant_snapshot
from dr_pipelines.core.layout import export_prefix
from dr_pipelines.core.manifest import Manifest, ManifestError, read_manifest
from dr_pipelines.core.pg.connect import connect
from dr_pipelines.core.tenancy import split_name, tenant_array
from dr_pipelines.portal import streams, worker
from dr_pipelines.portal.context import APPLICATION_NAME, Asked, Portal, client_key
from dr_pipelines.portal.errors import PortalError, not_found, unauthorized
from dr_pipelines.portal.tokens import (
    SIGNED_PREFIX,
    Credential,
    check_operator_token,
    check_signed_token,
    is_token_shaped,
)

log = logging.getLogger("drp.portal")
COOKIE = "drp_portal"
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_JOB_ID = re.compile(r"^job_[0-9a-f]{16}$")
_TOKEN_IN_URL = re.compile(r"(drp[ts])(?:\.|%2[eE])[^&\s]*")  # a token a client put in the URL is never audited


@dataclass
class Call:
    """One authenticated request, inside its worker thread."""

    portal: Portal
    request: Request
    asked: Asked
    conn: Any  # psycopg.Connection, autocommit: credential checks, jobs, the audit
    payload: Any = None

    @property
    def credential(self) -> Credential:
        assert self.asked.credential is not None
        return self.asked.credential

    @property
    def clinic(self) -> str:
        return self.credential.clinic_id


# -- the wrapper every endpoint goes through ------------------------------------------------------


def endpoint(fn: Callable[[Call], Response], *, body: bool = False, authenticate: bool = True,
             streams_body: bool = False) -> Callable[..., Any]:
    """An async Starlette endpoint around ``fn``: body read (bounded), credential, rate limit, audit, JSON errors.

    ``streams_body``: HEAD is refused (405) rather than reading a whole table or file for nothing.
    """

    async def handle(request: Request) -> Response:
        portal: Portal = request.app.state.portal
        line = _TOKEN_IN_URL.sub(r"\1.<redacted>", f"{request.method} {request.url.path}"
                                 + (f"?{request.url.query}" if request.url.query else ""))
        asked = Asked(request=line, client=request.client.host if request.client else None)
        payload: Any = None
        body_error: PortalError | None = None
        if streams_body and request.method == "HEAD":
            body_error = PortalError(405, "method_not_allowed", "HEAD is not served for streams and downloads",
                                     "use GET (with Range: bytes=0-0 to probe a download)")
        if body:
            try:
                payload = await read_json(request, portal.settings.portal_max_body_bytes)
            except PortalError as exc:
                body_error = exc
        return await anyio.to_thread.run_sync(partial(_call, fn, portal, request, asked, payload, body_error,
                                                      authenticate))

    return handle


def _call(fn: Callable[[Call], Response], portal: Portal, request: Request, asked: Asked, payload: Any,
          body_error: PortalError | None, authenticate: bool) -> Response:
    try:
        with connect(portal.dsn, autocommit=True, application_name=APPLICATION_NAME) as conn:
            try:
                if authenticate:
                    asked.credential = credential_of(conn, portal, request)
                    portal.limiter.check(asked.credential.clinic_id)
                if body_error is not None:
                    raise body_error
                response = fn(Call(portal, request, asked, conn, payload))
            except PortalError as exc:
                if asked.credential is None and 400 <= exc.status < 500:
                    exc = _stranger(portal, asked, exc)
                asked.audit(conn, portal, exc.audit, error=exc.problem[:2000])
                return error_response(exc)
            if not isinstance(response, streams.JobResponse):  # a stream audits its own start and end
                asked.audit(conn, portal, "granted")
            return response
    except Exception as exc:  # noqa: BLE001 - the database or storage broke: a JSON 500, audited if possible
        log.error("portal request %s failed: %s", asked.request, type(exc).__name__)
        problem = exc.problem if isinstance(exc, DrpError) else f"{type(exc).__name__} while serving the request"
        try:
            with connect(portal.dsn, autocommit=True) as conn:
                asked.audit(conn, portal, "failed", error=problem[:2000])
        except Exception:  # noqa: BLE001 - nothing more to do; the response says it failed
            pass
        return error_response(PortalError(500, "internal", problem, "retry later; the operator sees the audit row",
                                          audit="failed"))


def _stranger(portal: Portal, asked: Asked, refusal: PortalError) -> PortalError:
    """A request refused without a valid credential counts against its client address; past
    ``portal_unauthenticated_per_minute`` the answer is 429 instead. Counted after the credential check, so a
    valid credential is never refused by another client's flood from the same address (a reverse proxy's)."""
    try:
        portal.strangers.check(client_key(asked.client))
    except PortalError as limited:
        return limited
    return refusal


def error_response(exc: PortalError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


async def read_json(request: Request, limit: int) -> Any:
    """The request body as JSON: 415 if not declared JSON, 413 past ``limit`` bytes, 400 if it does not parse."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/json":
        raise PortalError(415, "not_json", "the request body must be JSON (Content-Type: application/json)",
                          "send a JSON object with Content-Type: application/json")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PortalError(413, "body_too_large", f"the request body is larger than {limit} bytes",
                          "send a smaller JSON object")
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > limit:
            raise PortalError(413, "body_too_large", f"the request body is larger than {limit} bytes",
                              "send a smaller JSON object")
    try:
        return json.loads(bytes(data))
    except (ValueError, UnicodeDecodeError):
        raise PortalError(400, "bad_json", "the request body is not valid JSON", "send a JSON object") from None


def token_of(request: Request) -> str:
    header = request.headers.get("authorization")
    if header is not None:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise unauthorized("token_malformed", "the Authorization header is not 'Bearer <token>'")
        token = token.strip()
    else:
        token = request.cookies.get(COOKIE, "")
        if not token:
            raise unauthorized("no_token", "no credential: no Authorization header and no session cookie")
    if not is_token_shaped(token):
        raise unauthorized("token_malformed", "the token holds characters or a length no token has")
    return token


def check_token(conn: Any, portal: Portal, token: str) -> Credential:
    s = portal.settings
    if token.startswith(SIGNED_PREFIX + "."):
        return check_signed_token(token, secret=portal.secret, key_id=s.portal_signing_key_id,
                                  max_lifetime_s=s.portal_signed_token_max_seconds)
    return check_operator_token(conn, token)


def credential_of(conn: Any, portal: Portal, request: Request) -> Credential:
    return check_token(conn, portal, token_of(request))


# -- the clinic's snapshot ------------------------------------------------------------------------


@contextmanager
def clinic_snapshot(call: Call, tables: tuple[str, ...] = ()) -> Any:
    """The credential's clinic in one REPEATABLE READ snapshot (core's), refusals turned into HTTP answers."""
    s = call.portal.settings
    try:
        with tenant_snapshot(call.portal.dsn, [call.clinic], root=s.export_tenant_root, key_column=s.export_tenant_key,
                             exclude=tuple(s.export_exclude_tables), tables=tables,
                             application_name=APPLICATION_NAME) as snap:
            yield snap
    except ExportRefusedError as exc:  # the credential's clinic is gone (or its id is no key)
        raise PortalError(403, "clinic_unknown", f"the credential's clinic does not exist: {exc.problem}",
                          "ask the operator: the clinic may have been removed") from None
    except ConfigError as exc:
        if "not exportable" in exc.problem:
            raise PortalError(404, "unknown_table", exc.problem, exc.fix) from None
        raise


def _stream_format(call: Call) -> str:
    fmt = call.request.query_params.get("format", "csv").strip().lower()
    if fmt not in streams.STREAM_FORMATS:
        hint = "; Parquet comes as a full export (POST /api/exports)" if fmt == "parquet" else ""
        raise PortalError(400, "unknown_format", f"format {fmt[:40]!r} is not streamed{hint}",
                          f"use format={' or '.join(streams.STREAM_FORMATS)}")
    call.asked.formats = [fmt]
    return fmt


def _start_stream(call: Call, tables: tuple[str, ...],
                  body: Callable[[TenantSnapshot], tuple[Any, Callable[[], int | None]]],
                  media_type: str, filename: Callable[[TenantSnapshot], str]) -> streams.JobResponse:
    """Take a stream slot, open the snapshot, audit ``started``; the JobResponse finishes (and audits) it."""
    portal = call.portal
    portal.slots.acquire()
    stack = ExitStack()
    try:
        snap = stack.enter_context(clinic_snapshot(call, tables))
        call.asked.tables = [t.name for t in snap.selected]
        chunks, rows = body(snap)
        call.asked.audit(call.conn, portal, "started")
    except BaseException:
        stack.close()
        portal.slots.release()
        raise
    job = streams.StreamJob(portal, call.asked, chunks, stack, rows)
    headers = {"Content-Disposition": streams.attachment(filename(snap)),
               "X-Drp-Attempt-Id": str(call.asked.attempt_id),
               "X-Drp-Snapshot-At": snap.snapshot_at.isoformat(),
               "Cache-Control": "no-store"}
    return streams.JobResponse(job, media_type=media_type, headers=headers)


# -- endpoints --------------------------------------------------------------------------------------


def health(call: Call) -> Response:
    return JSONResponse({"status": "ok", "started_at": call.portal.started_at.isoformat()})


def session_create(call: Call) -> Response:
    """Exchange a token for an HttpOnly, SameSite=Strict cookie (for the web page's links and forms)."""
    token = call.payload.get("token") if isinstance(call.payload, dict) else None
    if not isinstance(token, str) or not is_token_shaped(token):
        raise PortalError(400, "bad_request", "the body must be {\"token\": \"<clinic token>\"}", "send the token")
    credential = check_token(call.conn, call.portal, token)
    call.asked.credential = credential
    call.portal.limiter.check(credential.clinic_id)
    max_age = max(1, min(int((credential.expires_at - datetime.now(UTC)).total_seconds()), 12 * 3600))
    response = JSONResponse({"credential": credential.as_dict()})
    response.set_cookie(COOKIE, token, max_age=max_age, httponly=True, samesite="strict", path="/",
                        secure=call.request.url.scheme == "https")
    return response


def session_delete(call: Call) -> Response:
    response = Response(status_code=204)
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
    return response


def clinic(call: Call) -> Response:
    with clinic_snapshot(call) as snap:
        root_schema, root_table = split_name(snap.scope.root)
        row = snap.conn.execute(sql.SQL("SELECT to_jsonb(r) FROM {} AS r WHERE r.{} = ANY ({})").format(
            sql.Identifier(root_schema, root_table), sql.Identifier(snap.scope.key_column),
            tenant_array(snap.scope.key_type))).fetchone()
        tables = [t.name for t in snap.selected]
    record = row[0] if row else {}
    name = next((str(record[k]) for k in ("name", "display_name", "slug") if record.get(k) is not None), None)
    return JSONResponse({"clinic_id": call.clinic, "name": name, "credential": call.credential.as_dict(),
                         "tables": tables, "stream_formats": list(streams.STREAM_FORMATS),
                         "export_formats": list(FORMATS)})


def data_table(call: Call) -> Response:
    fmt = _stream_format(call)
    table = call.request.path_params["table"]
    call.asked.tables = [table[:200]]
    return _start_stream(call, (table,), lambda snap: streams.table_body(snap, fmt), streams.TEXT_MEDIA[fmt],
                         lambda snap: streams.object_name(snap.selected[0].name, fmt))


def data_all(call: Call) -> Response:
    fmt = _stream_format(call)
    tables = tuple(call.request.query_params.getlist("table"))
    return _start_stream(call, tables, lambda snap: streams.zip_body(snap, fmt, call.clinic), "application/zip",
                         lambda snap: f"{quote(call.clinic, safe='')}-{fmt}-{snap.snapshot_at:%Y%m%dT%H%M%SZ}.zip")


def stream_status(call: Call) -> Response:
    """The outcome of a stream this clinic started: rows, bytes, sha256 of the body (the trailer)."""
    attempt = call.request.path_params["attempt_id"]
    if not _UUID.match(attempt):
        raise not_found("stream")
    with call.conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            "SELECT status, tables, formats, rows, bytes, content_sha256, error, started_at, finished_at"
            " FROM drp.export_audit WHERE attempt_id = %s AND tenant_ids = ARRAY[%s]::text[]"
            " AND request LIKE 'GET /api/data%%' ORDER BY id DESC LIMIT 1", (attempt, call.clinic)).fetchone()
    if row is None:
        raise not_found("stream")
    return JSONResponse({"attempt_id": attempt, "status": row["status"], "tables": row["tables"],
                         "format": (row["formats"] or [None])[0], "rows": row["rows"], "bytes": row["bytes"],
                         "sha256": row["content_sha256"], "error": row["error"],
                         "started_at": row["started_at"].isoformat(),
                         "finished_at": row["finished_at"].isoformat() if row["finished_at"] else None})


def _export_request(call: Call) -> tuple[list[str], list[str], bool]:
    p = call.payload
    if not isinstance(p, dict):
        raise PortalError(400, "bad_request", "the body must be a JSON object", "send {\"formats\": [\"csv\"]}")
    unknown = sorted(set(p) - {"formats", "tables", "zip"})
    if unknown:
        raise PortalError(400, "bad_request", f"unknown field(s): {', '.join(k[:40] for k in unknown)}",
                          "use formats, tables and zip")
    formats = p.get("formats", list(FORMATS))
    tables = p.get("tables", [])
    zip_bundle = p.get("zip", False)
    if not isinstance(formats, list) or not formats or not all(isinstance(f, str) for f in formats):
        raise PortalError(400, "bad_request", "formats must be a non-empty list of strings",
                          f"choose from {', '.join(FORMATS)}")
    if not isinstance(tables, list) or not all(isinstance(t, str) for t in tables) or not isinstance(zip_bundle, bool):
        raise PortalError(400, "bad_request", "tables must be a list of strings and zip a boolean",
                          "send e.g. {\"formats\": [\"csv\"], \"tables\": [\"public.patients\"], \"zip\": true}")
    formats = list(dict.fromkeys(f.strip().lower() for f in formats))
    call.asked.formats = formats
    call.asked.tables = [t[:200] for t in tables]
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise PortalError(400, "unknown_format", f"format(s) not served: {', '.join(b[:40] for b in bad)}",
                          f"choose from {', '.join(FORMATS)}")
    return formats, tables, zip_bundle


def _check_export_allowance(call: Call) -> None:
    """The per-clinic hourly export limit (export_max_per_hour), counted from the audit and the queue."""
    limit = call.portal.settings.export_max_per_hour
    if not limit:
        return
    used = audit.recent_attempts(call.conn, call.clinic) + call.conn.execute(
        "SELECT count(*) FROM drp.portal_exports WHERE clinic_id = %s AND state = 'queued'", (call.clinic,)).fetchone()[0]
    if used >= limit:
        wait = call.conn.execute(
            "SELECT ceil(extract(epoch FROM min(started_at) + interval '1 hour' - clock_timestamp()))::int"
            " FROM drp.export_audit WHERE status = 'started' AND tenant_ids @> ARRAY[%s]::text[]"
            " AND started_at > clock_timestamp() - interval '1 hour'", (call.clinic,)).fetchone()[0]
        wait = max(1, wait or 60)
        raise PortalError(429, "export_rate_limited", f"clinic {call.clinic} has had {used} exports in the last hour "
                          f"(limit {limit})", f"retry after {wait} s", retry_after=wait)


def _job_view(call: Call, job: dict[str, Any], manifest: Manifest | None = None) -> dict[str, Any]:
    out = {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in job.items()}
    out["links"] = {"self": f"/api/exports/{job['job_id']}"}
    if manifest is not None:
        ttl = call.portal.settings.export_ttl_days
        out["expires_at"] = (manifest.finished_at + timedelta(days=ttl)).isoformat() if ttl else None
        out["files"] = [{"name": o.key, "bytes": o.bytes, "sha256": o.sha256, "format": o.format,
                         "href": f"/api/exports/{job['job_id']}/files/{quote(o.key, safe='')}"}
                        for o in manifest.objects]
        out["tables"] = [{"table": t.name, "rows": t.rows} for t in manifest.tables]
    return out


def exports_create(call: Call) -> Response:
    formats, tables, zip_bundle = _export_request(call)
    worker.ensure_jobs_table(call.conn)
    with clinic_snapshot(call, tuple(tables)) as snap:  # refuses unknown tables now, not in the worker
        call.asked.tables = [t.name for t in snap.selected] if tables else []
    _check_export_allowance(call)
    job = call.portal.worker.submit(call.conn, call.credential, call.asked.client, formats, tables, zip_bundle)
    return JSONResponse(_job_view(call, job), status_code=202,
                        headers={"Location": f"/api/exports/{job['job_id']}"})


def exports_list(call: Call) -> Response:
    worker.ensure_jobs_table(call.conn)
    current = call.portal.worker.current
    return JSONResponse({"exports": [_job_view(call, current(call.conn, j)) for j in worker.jobs(call.conn, call.clinic)]})


def _own_job(call: Call) -> dict[str, Any]:
    job_id = call.request.path_params["job_id"]
    worker.ensure_jobs_table(call.conn)
    job = worker.job(call.conn, call.clinic, job_id) if _JOB_ID.match(job_id) else None
    if job is None:
        raise not_found("export")
    job = call.portal.worker.current(call.conn, job)  # a Dagster run's job follows its run
    call.asked.export_id = job["export_id"]
    call.asked.formats = list(job["formats"])
    return job


def _manifest_of(call: Call, job: dict[str, Any]) -> Manifest:
    """The finished export's manifest; 410 once it expired (time-to-live) or was removed."""
    try:
        manifest = read_manifest(call.portal.storage, export_prefix(job["export_id"]))
    except (ManifestError, DrpError):
        raise PortalError(410, "expired", f"export {job['job_id']} is no longer in storage (expired or removed)",
                          "request a new export") from None
    if manifest.extra.get("tenant_ids") != [call.clinic]:  # never another clinic's files, whoever ran the export
        raise not_found("export")
    ttl = call.portal.settings.export_ttl_days
    if ttl and manifest.finished_at + timedelta(days=ttl) < datetime.now(UTC):
        raise PortalError(410, "expired", f"export {job['job_id']} expired after {ttl} day(s)", "request a new export")
    return manifest


def export_status(call: Call) -> Response:
    job = _own_job(call)
    manifest = None
    if job["state"] == "succeeded":
        try:
            manifest = _manifest_of(call, job)
        except PortalError:
            job = {**job, "state": "expired"}
    return JSONResponse(_job_view(call, job, manifest))


def export_file(call: Call) -> Response:
    job = _own_job(call)
    if job["state"] != "succeeded":
        raise PortalError(409, "not_ready", f"export {job['job_id']} is {job['state']}",
                          "poll GET /api/exports/{id} until its state is succeeded")
    manifest = _manifest_of(call, job)
    name = call.request.path_params["name"]
    entry = next((o for o in manifest.objects if o.key == name), None)
    if entry is None:
        raise not_found("file in this export")
    call.asked.tables = [name[:200]]
    span = streams.parse_range(call.request.headers.get("range"), entry.bytes)  # type: ignore[arg-type]
    key = f"{export_prefix(job['export_id'])}/{entry.key}"
    headers = {"Content-Disposition": streams.attachment(entry.key), "Accept-Ranges": "bytes",
               "ETag": f'"{entry.sha256}"', "X-Drp-Attempt-Id": str(call.asked.attempt_id),
               "Cache-Control": "no-store"}
    if span is None:
        headers["Content-Length"] = str(entry.bytes)
        status = 200
    else:
        headers["Content-Length"] = str(span[1] - span[0] + 1)
        headers["Content-Range"] = f"bytes {span[0]}-{span[1]}/{entry.bytes}"
        status = 206
    call.portal.slots.acquire()
    try:
        chunks = streams.download_body(call.portal.storage, key, entry, span)
        call.asked.audit(call.conn, call.portal, "started")
    except BaseException:
        call.portal.slots.release()
        raise
    job_ = streams.StreamJob(call.portal, call.asked, chunks, ExitStack(), lambda: None)
    return streams.JobResponse(job_, media_type=streams.content_type(entry.format), headers=headers,
                               status_code=status)


def unknown_route(call: Call) -> Response:
    raise not_found("endpoint")
