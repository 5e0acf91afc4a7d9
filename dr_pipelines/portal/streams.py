"""Bodies the portal streams: one table, every table (a zip), a stored export file; each audited to its end.

A body is produced in worker threads chunk by chunk (``StreamJob.next``) and finished exactly
once (``StreamJob.finish``), whatever happened: the client read it all (``succeeded``, with
rows, bytes and the body's sha256), the client went away (``abandoned``: the generator is
closed, which cancels the COPY, and the snapshot's session is closed), or the database or
storage failed (``failed``: the response is cut off without its last chunk, so no client
can take a truncated body for a whole one). Tables are read through core's export code
(``tenant_snapshot``, ``text_stream``): the bytes are those ``drp export`` writes.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from datetime import UTC, datetime
from typing import Any

import anyio
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from dr_pipelines.core.export.formats import EXTENSIONS, MEDIA_TYPES, RowCount
from dr_pipelines.core.export.tables import object_name, text_stream
from dr_pipelines.core.export.tenants import TenantSnapshot
from dr_pipelines.core.manifest import ObjectEntry
from dr_pipelines.core.parquet import table_columns
from dr_pipelines.core.pg.connect import connect
from dr_pipelines.core.storage import Storage
from dr_pipelines.core.storage.base import close_chunks
from dr_pipelines.core.verified_read import verified_chunks
from dr_pipelines.portal.context import Asked, Portal
from dr_pipelines.portal.errors import PortalError

STREAM_FORMATS = ("csv", "jsonl")
TEXT_MEDIA = {"csv": "text/csv; charset=utf-8", "jsonl": "application/jsonl; charset=utf-8"}


class StreamJob:
    """A body made in threads: ``next()`` per chunk (None at the end), ``finish()`` once, whatever happened."""

    def __init__(self, portal: Portal, asked: Asked, chunks: Iterator[bytes], stack: ExitStack,
                 rows: Callable[[], int | None]) -> None:
        self.portal, self.asked, self.chunks, self.stack, self.rows = portal, asked, chunks, stack, rows
        self.sha = hashlib.sha256()
        self.bytes = 0
        self.done = False
        self.error: BaseException | None = None
        self.finished = False

    def next(self) -> bytes | None:
        try:
            chunk = next(self.chunks)
        except StopIteration:
            self.done = True
            return None
        except BaseException as exc:
            self.error = exc
            raise
        self.sha.update(chunk)
        self.bytes += len(chunk)
        return chunk

    def finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        try:
            if not self.done:
                close_chunks(self.chunks)  # cancels a running COPY, stops a verified read
            try:
                self.stack.close()  # the snapshot's transaction and session
            except Exception:  # noqa: BLE001 - a session the server ended is closed all the same
                pass
        finally:
            self.portal.slots.release()
            if self.done:
                status, error = "succeeded", None
            elif self.error is not None:
                status, error = "failed", _error_text(self.error)
            else:
                status, error = "abandoned", f"the client went away after {self.bytes} bytes"
            with connect(self.portal.dsn, autocommit=True) as conn:
                self.asked.audit(conn, self.portal, status, rows=self.rows() if self.done else None,
                                 bytes=self.bytes, content_sha256=self.sha.hexdigest() if self.done else None,
                                 error=error)


def _error_text(exc: BaseException) -> str:
    problem = getattr(exc, "problem", None)
    return (problem or f"{type(exc).__name__}: {str(exc).strip()}")[:2000]


class JobResponse(StreamingResponse):
    """A StreamingResponse whose job is finished (and audited) after the last byte or the client's departure."""

    def __init__(self, job: StreamJob, *, media_type: str, headers: dict[str, str], status_code: int = 200) -> None:
        super().__init__(self._body(job), status_code=status_code, media_type=media_type, headers=headers)
        self.job = job

    @staticmethod
    async def _body(job: StreamJob) -> Any:
        while (chunk := await anyio.to_thread.run_sync(job.next)) is not None:
            yield chunk
        # Audited before the terminating chunk goes out: a client that has the whole body finds its row.
        await anyio.to_thread.run_sync(job.finish)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self.job.finish)


def attachment(filename: str) -> str:
    """A Content-Disposition naming ``filename`` (ASCII-safe; names come from object_name, percent-encoded)."""
    return f'attachment; filename="{filename}"'


def table_body(snap: TenantSnapshot, fmt: str) -> tuple[Iterator[bytes], Callable[[], int | None]]:
    """One selected table of the snapshot as CSV or JSON Lines, exactly as ``drp export`` writes it."""
    t = snap.selected[0]
    counter = RowCount()
    columns = table_columns(snap.conn, t.schema, t.table)
    return text_stream(snap.conn, snap.scope, t, columns, fmt, counter), lambda: counter.rows


class _Sink:
    """A write-only, unseekable file for zipfile (which then writes data descriptors): hands out what it got."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def write(self, data: bytes) -> int:
        self.buf += data
        return len(data)

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        out = bytes(self.buf)
        self.buf.clear()
        return out


def zip_body(snap: TenantSnapshot, fmt: str, clinic_id: str) -> tuple[Iterator[bytes], Callable[[], int | None]]:
    """Every selected table as ``<schema.table>.<ext>`` in a zip streamed as it is built, ``manifest.json`` last.

    The zip's central directory comes last, so a body cut short is not a readable zip. The
    manifest lists each file's rows, bytes and sha256, the snapshot time and the clinic.
    """
    total = {"rows": 0}

    def chunks() -> Iterator[bytes]:
        sink = _Sink()
        files: list[dict[str, Any]] = []
        with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1, allowZip64=True) as zf:
            for t in snap.selected:
                counter = RowCount()
                name = object_name(t.name, fmt)
                sha, size = hashlib.sha256(), 0
                with zf.open(zipfile.ZipInfo(name, date_time=_zip_time(snap.snapshot_at)), "w",
                             force_zip64=True) as entry:
                    for chunk in text_stream(snap.conn, snap.scope, t, table_columns(snap.conn, t.schema, t.table),
                                             fmt, counter):
                        entry.write(chunk)
                        sha.update(chunk)
                        size += len(chunk)
                        if len(sink.buf) >= 1 << 20:
                            yield sink.take()
                files.append(ObjectEntry(name, "table", size, sha.hexdigest(), format=fmt).__dict__
                             | {"table": t.name, "rows": counter.rows})
                total["rows"] += counter.rows or 0
                yield sink.take()
            manifest = {"kind": "portal-stream", "clinic_id": clinic_id, "format": fmt,
                        "media_type": MEDIA_TYPES[fmt], "snapshot_at": snap.snapshot_at.isoformat(),
                        "rows": total["rows"], "files": files}
            info = zipfile.ZipInfo("manifest.json", date_time=_zip_time(snap.snapshot_at))
            zf.writestr(info, json.dumps(manifest, indent=2, default=str) + "\n")
        yield sink.take()

    return chunks(), lambda: total["rows"]


def _zip_time(at: datetime) -> tuple[int, int, int, int, int, int]:
    t = at.astimezone(UTC)
    return (max(t.year, 1980), t.month, t.day, t.hour, t.minute, t.second)


# -- downloads of stored export files -----------------------------------------------------------


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """One ``bytes=`` range as (first, last) inclusive; None for no (or an unreadable) Range: the whole object.

    A range starting at or past the end is a 416 (RFC 9110 15.5.17); several ranges are not
    served (the whole object is, as the RFC allows).
    """
    if not header:
        return None
    unit, _, spec = header.strip().partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    if not dash:
        return None
    try:
        if first == "":
            n = int(last)
            if n <= 0:
                raise _unsatisfiable(size)
            return max(0, size - n), size - 1
        start = int(first)
        end = int(last) if last else size - 1
    except ValueError:
        return None
    if start >= size:
        raise _unsatisfiable(size)
    if start < 0 or end < start:
        return None
    return start, min(end, size - 1)


def _unsatisfiable(size: int) -> PortalError:
    return PortalError(416, "range_not_satisfiable", f"the range starts past the end of the file ({size} bytes)",
                       "ask for bytes 0 to size-1, or no Range for the whole file",
                       headers={"Content-Range": f"bytes */{size}"})


def download_body(storage: Storage, key: str, entry: ObjectEntry, span: tuple[int, int] | None) -> Iterator[bytes]:
    """The stored object's bytes (or ``span`` of them), its sha256 checked on the way.

    A Range request still reads the object to its end (the check covers the whole object);
    only the range goes over the wire. The last chunk sent is held until the check passed.
    """
    raw = verified_chunks(storage, key, size=entry.bytes, sha256=entry.sha256)  # type: ignore[arg-type]
    if span is None:
        yield from raw
        return
    first, last = span
    pos = 0
    held: bytes | None = None
    try:
        for chunk in raw:
            lo, hi = max(first - pos, 0), min(last + 1 - pos, len(chunk))
            pos += len(chunk)
            if lo < hi:
                if held is not None:
                    yield held
                held = chunk[lo:hi]
    finally:
        close_chunks(raw)
    if held is not None:
        yield held


def content_type(fmt: str | None) -> str:
    if fmt in TEXT_MEDIA:
        return TEXT_MEDIA[fmt]
    if fmt == "zip":
        return "application/zip"
    return MEDIA_TYPES.get(fmt or "", "application/octet-stream")


__all__ = ["EXTENSIONS", "JobResponse", "StreamJob", "attachment", "download_body", "parse_range", "table_body",
           "zip_body"]
