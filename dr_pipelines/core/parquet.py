"""Parquet from PostgreSQL: column types to Arrow types, and streaming Parquet writers.

Shared by tenant exports (core/export) and data-retention archives (core/retention): both
write a table's rows to Parquet with the same type conventions, recorded in the file's
``drp.conventions`` metadata (see core/export/formats.py for the table of conventions).
"""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from dr_pipelines.core.stream import put_until_cancelled

BATCH_ROWS = 65_536

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


def _as(expr: sql.Composable, col: Column) -> sql.Composable:
    return sql.SQL("{} AS {}").format(expr, sql.Identifier(col.name))


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


def pyarrow_version() -> str:
    """The pyarrow that wrote a Parquet object, for the manifest's tools (imported only when asked)."""
    import pyarrow

    return str(pyarrow.__version__)
