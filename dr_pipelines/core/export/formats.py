"""Writers for the export formats: CSV and JSON Lines (COPY), Parquet (Arrow batches from ADBC).

Each writer streams: memory stays flat whatever the row count. CSV and JSON Lines are
generators of ~1 MiB chunks read straight from libpq's COPY protocol, handed to
``Storage.put_stream``; Parquet is written from Arrow record batches (the ADBC PostgreSQL
driver decodes COPY BINARY in C++) to a temporary file, which is then streamed to storage.

Type conventions (the same in every export, recorded in the manifest):

============  ============================  ===============================  ======================================
PostgreSQL    CSV                           JSON Lines                       Parquet
============  ============================  ===============================  ======================================
NULL          unquoted empty field          null                             null
'' (text)     ``""`` (quoted empty)         ""                               ""
numeric       exact text (``12.50``)        JSON string (``"12.50"``),       decimal128(p, s) for numeric(p, s) with
                                            exact (JSON numbers are floats   p <= 38, else string
                                            to most readers)
timestamptz   ISO, UTC, space separator     ISO 8601 with offset             timestamp[us, tz=UTC]
              (``2024-01-01 09:30:00+00``)  (``2024-01-01T09:30:00+00:00``)
timestamp     ISO without offset            ISO 8601 without offset          timestamp[us]
date          ``YYYY-MM-DD``                ``"YYYY-MM-DD"``                 date32
jsonb/json    JSON text                     nested JSON value                string (JSON text)
arrays        PostgreSQL literal ``{a,b}``  JSON array                       list<element> (numeric/text-like
                                                                             elements as strings)
bytea         base64 (no line breaks)       base64 string                    binary
enum          label                         label string                     string
interval      PostgreSQL style              PostgreSQL style string          string
other types   their text output             their JSON form (to_json)        string (their text output)
============  ============================  ===============================  ======================================

CSV is COPY's CSV format with a header line, UTF-8, RFC 4180 quoting: a field is quoted
when it holds a comma, quote, CR or LF or is an empty string, so NULL (unquoted empty)
and the empty string (``""``) stay distinct. Text output is pinned per transaction
(TimeZone UTC, DateStyle ISO, IntervalStyle postgres, extra_float_digits 3).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
from psycopg import sql
from psycopg.pq import ExecStatus

from dr_pipelines.core.parquet import BYTEA, NUMERIC, Column, _as, _c
from dr_pipelines.core.stream import READ_SIZE as TEMP_FILE_CHUNK

FORMATS = ("parquet", "csv", "jsonl")
EXTENSIONS = {"parquet": "parquet", "csv": "csv", "jsonl": "jsonl"}
MEDIA_TYPES = {"parquet": "application/vnd.apache.parquet", "csv": "text/csv", "jsonl": "application/jsonl"}


def _base64(expr: sql.Composable) -> sql.Composable:
    # encode(..., 'base64') breaks lines every 76 characters: drop the breaks.
    return sql.SQL("translate(encode({}, 'base64'), E'\\n', '')").format(expr)


def csv_columns(columns: list[Column]) -> sql.Composable:
    """Select list for CSV: bytea as base64; everything else in PostgreSQL's own (ISO) text output.

    Timestamps stay in DateStyle ISO (``2024-03-05 04:07:08.123456+00``, UTC): ISO 8601 with
    a space separator (RFC 3339 allows it), what COPY and pg_dump write and what CSV readers
    (Python's fromisoformat, Arrow, spreadsheets) parse; re-rendering with a ``T`` cost a
    third of the export's time.
    """
    out = []
    for col in columns:
        if col.base_oid == BYTEA:
            expr = _base64(_c(col))
        else:
            expr = _c(col)
        out.append(_as(expr, col))
    return sql.SQL(", ").join(out)


def jsonl_columns(columns: list[Column]) -> sql.Composable:
    """Select list for JSON Lines (turned into one object per row by row_to_json)."""
    out = []
    for col in columns:
        if col.base_oid == NUMERIC:
            expr = sql.SQL("{}::text").format(_c(col))
        elif col.is_array and col.elem_oid == NUMERIC:
            expr = sql.SQL("{}::text[]").format(_c(col))
        elif col.base_oid == BYTEA:
            expr = _base64(_c(col))
        else:
            expr = _c(col)  # row_to_json renders jsonb nested, arrays as arrays, timestamps ISO 8601
        out.append(_as(expr, col))
    return sql.SQL(", ").join(out)


# -- streaming writers ------------------------------------------------------------------------------


class RowCount:
    """Filled in by a writer once its stream is exhausted."""

    def __init__(self) -> None:
        self.rows: int | None = None


def copy_out(conn: psycopg.Connection, statement: sql.Composable, counter: RowCount,
             chunk: int = TEMP_FILE_CHUNK) -> Iterator[bytes]:
    """Run ``COPY ... TO STDOUT`` and yield its output in ~1 MiB chunks.

    Straight on libpq (``conn.pgconn``): psycopg's ``Copy`` iterator costs about a
    microsecond of Python per row, which made exports half as fast as ``psql``. Closing the
    generator early cancels the COPY and drains the connection, so the transaction stays usable
    (closing it after its connection was closed does nothing: the session ended the COPY).
    """
    pgconn = conn.pgconn
    pgconn.send_query(statement.as_bytes(conn))
    result = pgconn.get_result()
    if result is None or result.status != ExecStatus.COPY_OUT:
        _drain(pgconn)
        raise psycopg.DatabaseError(_pq_error(result, pgconn))
    buf = bytearray()
    finished = False
    try:
        while True:
            nbytes, data = pgconn.get_copy_data(0)
            if nbytes < 0:
                break
            buf += data
            if len(buf) >= chunk:
                yield bytes(buf)
                buf.clear()
        if buf:
            yield bytes(buf)
        result = pgconn.get_result()
        if result is None or result.status != ExecStatus.COMMAND_OK:
            raise psycopg.DatabaseError(_pq_error(result, pgconn))
        counter.rows = int(result.command_tuples or 0)
        finished = True
    finally:
        # A generator left unfinished may be closed (by the garbage collector) after its connection
        # was: then the server already ended the COPY with the session and there is nothing to cancel.
        if not conn.closed:
            if not finished:
                conn.cancel_safe(timeout=10)
                while pgconn.get_copy_data(0)[0] >= 0:
                    pass
            _drain(pgconn)


def _drain(pgconn: Any) -> None:
    while pgconn.get_result() is not None:
        pass


def _pq_error(result: Any, pgconn: Any) -> str:
    message = result.error_message if result is not None else pgconn.error_message
    return (message or b"COPY did not start").decode("utf-8", "replace").strip()


def csv_stream(conn: psycopg.Connection, query: sql.Composable, counter: RowCount) -> Iterator[bytes]:
    """COPY (query) TO STDOUT as CSV with a header."""
    return copy_out(conn, sql.SQL("COPY ({}) TO STDOUT WITH (FORMAT csv, HEADER true)").format(query), counter)


def jsonl_stream(conn: psycopg.Connection, query: sql.Composable, counter: RowCount) -> Iterator[bytes]:
    """One JSON object per line, rendered by the server (row_to_json) and streamed by COPY.

    COPY's CSV format with a quote and delimiter that JSON text never holds raw (row_to_json
    escapes every control character) emits each JSON document verbatim, one per line.
    """
    # A distinctive alias: a bare name in row_to_json() would resolve to a column of that name first.
    return copy_out(conn, sql.SQL(
        "COPY (SELECT row_to_json(drp_export_row)::text FROM ({}) AS drp_export_row)"
        " TO STDOUT WITH (FORMAT csv, QUOTE E'\\x01', DELIMITER E'\\x02')").format(query), counter)
