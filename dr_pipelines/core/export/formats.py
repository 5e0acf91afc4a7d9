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

import json
import os
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.pq import ExecStatus

from dr_pipelines.core.stream import put_until_cancelled

FORMATS = ("parquet", "csv", "jsonl")
EXTENSIONS = {"parquet": "parquet", "csv": "csv", "jsonl": "jsonl"}
MEDIA_TYPES = {"parquet": "application/vnd.apache.parquet", "csv": "text/csv", "jsonl": "application/jsonl"}
BATCH_ROWS = 65_536
TEMP_FILE_CHUNK = 1 << 20

# Type OIDs (stable across PostgreSQL versions).
BOOL, BYTEA, INT8, INT2, INT4, TEXT, JSON_, FLOAT4, FLOAT8 = 16, 17, 20, 21, 23, 25, 114, 700, 701
DATE, TIMESTAMP, TIMESTAMPTZ, NUMERIC, JSONB = 1082, 1114, 1184, 1700, 3802

COLUMNS_QUERY = """
SELECT a.attname,
       format_type(a.atttypid, a.atttypmod),
       a.attgenerated <> '',
       b.oid,
       CASE WHEN t.typtype = 'd' THEN t.typtypmod ELSE a.atttypmod END,
       b.typtype,
       b.typcategory,
       b.typelem
FROM pg_attribute a
JOIN pg_type t ON t.oid = a.atttypid
JOIN pg_type b ON b.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END
WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""


@dataclass(frozen=True)
class Column:
    name: str
    type_name: str  # format_type, e.g. "numeric(10,3)", "text[]", "appointment_status"
    generated: bool
    base_oid: int  # the type after resolving one level of domain
    typmod: int
    typtype: str  # b base, e enum, c composite, r range, m multirange, p pseudo
    category: str  # pg_type.typcategory; 'A' for arrays
    elem_oid: int  # element type of an array, else 0

    @property
    def is_array(self) -> bool:
        return self.category == "A" and self.elem_oid != 0

    @property
    def numeric_precision_scale(self) -> tuple[int, int] | None:
        if self.base_oid != NUMERIC or self.typmod < 4:
            return None
        mod = self.typmod - 4
        return (mod >> 16) & 0xFFFF, mod & 0xFFFF


def table_columns(conn: psycopg.Connection, schema: str, table: str) -> list[Column]:
    ident = sql.Identifier(schema, table).as_string(conn)
    return [Column(*row) for row in conn.execute(COLUMNS_QUERY, (ident,)).fetchall()]


def _c(col: Column, alias: str = "t") -> sql.Composable:
    return sql.Identifier(alias, col.name)


def _base64(expr: sql.Composable) -> sql.Composable:
    # encode(..., 'base64') breaks lines every 76 characters: drop the breaks.
    return sql.SQL("translate(encode({}, 'base64'), E'\\n', '')").format(expr)


def _as(expr: sql.Composable, col: Column) -> sql.Composable:
    return sql.SQL("{} AS {}").format(expr, sql.Identifier(col.name))


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


# -- Parquet ----------------------------------------------------------------------------------------

_SIMPLE_ELEMENTS = {BOOL, INT2, INT4, INT8, FLOAT4, FLOAT8, DATE, TIMESTAMPTZ, TIMESTAMP, BYTEA, TEXT}


def _arrow_scalar(oid: int, col: Column | None = None) -> Any:
    import pyarrow as pa

    simple = {
        BOOL: pa.bool_(), INT2: pa.int16(), INT4: pa.int32(), INT8: pa.int64(),
        FLOAT4: pa.float32(), FLOAT8: pa.float64(), DATE: pa.date32(),
        TIMESTAMPTZ: pa.timestamp("us", tz="UTC"), TIMESTAMP: pa.timestamp("us"), BYTEA: pa.binary(),
    }
    if oid in simple:
        return simple[oid]
    if oid == NUMERIC and col is not None:
        ps = col.numeric_precision_scale
        if ps and 1 <= ps[0] <= 38:
            return pa.decimal128(ps[0], ps[1])
    return pa.string()


def parquet_plan(columns: list[Column]) -> tuple[sql.Composable, Any]:
    """Select list and Arrow schema for Parquet; everything without an exact Arrow type is text."""
    import pyarrow as pa

    exprs, fields = [], []
    for col in columns:
        if col.is_array:
            if col.elem_oid in _SIMPLE_ELEMENTS:
                expr, elem = _c(col), _arrow_scalar(col.elem_oid)
            else:
                expr, elem = sql.SQL("{}::text[]").format(_c(col)), pa.string()
            arrow = pa.list_(elem)
        else:
            arrow = _arrow_scalar(col.base_oid, col)
            exact = col.base_oid in _SIMPLE_ELEMENTS or pa.types.is_decimal(arrow)
            expr = _c(col) if exact else sql.SQL("{}::text").format(_c(col))
        exprs.append(_as(expr, col))
        fields.append(pa.field(col.name, arrow, nullable=True, metadata={"pg_type": col.type_name}))
    return sql.SQL(", ").join(exprs), pa.schema(fields)


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
    generator early cancels the COPY and drains the connection, so the transaction stays usable.
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


def write_parquet_batches(reader: Any, schema: Any, path: Path, batch_rows: int = BATCH_ROWS) -> int:
    """Write an Arrow RecordBatchReader (ADBC's COPY BINARY stream) to Parquet, cast to ``schema``.

    The driver hands numeric as opaque strings: they are cast to ``decimal128(p, s)``, exactly.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = 0
    with pq.ParquetWriter(str(path), _with_conventions(schema), compression="zstd") as writer, \
            prefetched(reader) as batches:
        for batch in batches:
            arrays = []
            for column, field in zip(batch.columns, schema, strict=True):
                if isinstance(column.type, pa.ExtensionType):
                    column = column.storage
                arrays.append(column if column.type == field.type else column.cast(field.type))
            writer.write_batch(pa.RecordBatch.from_arrays(arrays, schema=writer.schema), row_group_size=batch_rows)
            rows += batch.num_rows
    return rows


@contextmanager
def prefetched(reader: Iterable[Any], depth: int = 2) -> Iterator[Iterator[Any]]:
    """Iterate ``reader`` in a background thread, ``depth`` batches ahead.

    The server and the driver produce the next batch while this thread encodes the last
    one (Arrow and Parquet release the GIL). Leaving early stops the reader thread before
    returning, so the caller may close the connection behind it.
    """
    ready: queue.Queue[Any] = queue.Queue(depth)
    stop = threading.Event()
    done = object()

    def pump() -> None:
        try:
            for batch in reader:
                if stop.is_set():
                    return
                put_until_cancelled(ready, batch, stop)
            put_until_cancelled(ready, done, stop)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            put_until_cancelled(ready, exc, stop)

    def consume() -> Iterator[Any]:
        while (item := ready.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item

    thread = threading.Thread(target=pump, name="drp-export-prefetch", daemon=True)
    thread.start()
    try:
        yield consume()
    finally:
        stop.set()
        thread.join()


def _with_conventions(schema: Any) -> Any:
    meta = dict(schema.metadata or {})
    meta[b"drp.conventions"] = json.dumps({"numeric": "decimal128(p,s) or string", "jsonb": "string",
                                           "timestamptz": "timestamp[us, UTC]"}).encode()
    return schema.with_metadata(meta)


def write_parquet(conn: psycopg.Connection, query: sql.Composable, schema: Any, path: Path, cursor_name: str,
                  batch_rows: int = BATCH_ROWS, on_batch: Callable[[int], None] | None = None,
                  params: Any = None) -> int:
    """Write the query's rows (``params`` bound) to a Parquet file, one row group per ``batch_rows`` rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = 0
    schema = _with_conventions(schema)
    with pq.ParquetWriter(str(path), schema, compression="zstd") as writer, conn.cursor(name=cursor_name) as cur:
        cur.itersize = min(batch_rows, 10_000)
        cur.execute(query, params)
        while batch := cur.fetchmany(batch_rows):
            columns = list(zip(*batch, strict=True))
            arrays = [pa.array(list(values), type=field.type) for values, field in zip(columns, schema, strict=True)]
            writer.write_batch(pa.RecordBatch.from_arrays(arrays, schema=schema), row_group_size=batch_rows)
            rows += len(batch)
            del batch, columns, arrays
            if on_batch:
                on_batch(rows)
    return rows


def file_chunks(path: Path, chunk: int = TEMP_FILE_CHUNK) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while data := f.read(chunk):
            yield data


def remove_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
