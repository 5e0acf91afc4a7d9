"""One tenant-owned table out of the snapshot: streamed per format to storage, and counted (or checksummed) beside it.

CSV and JSON Lines stream straight from COPY into ``Storage.put_stream``; Parquet goes
through a temporary file written from an ADBC session's Arrow batches. The count and the
optional content checksum run on a second session that adopted the same snapshot.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
from psycopg import sql

from dr_pipelines.core.errors import ExportError
from dr_pipelines.core.export.formats import (
    EXTENSIONS,
    RowCount,
    csv_columns,
    csv_stream,
    jsonl_columns,
    jsonl_stream,
)
from dr_pipelines.core.parquet import parquet_plan, write_parquet_batches
from dr_pipelines.core.pg.checksums import default_method, relation_checksum
from dr_pipelines.core.storage import Storage
from dr_pipelines.core.stream import file_chunks, remove_quietly
from dr_pipelines.core.tenancy import Scope, TableScope, tenant_select


def object_name(table: str, fmt: str) -> str:
    """'public.patients' -> 'public.patients.csv'; anything unsafe in a key is percent-encoded."""
    return f"{quote(table, safe='')}.{EXTENSIONS[fmt]}"


# The whole-row alias is distinctive: a bare name would resolve to a column of that name first.
_ROW_ALIAS = "drp_export_row"


def tenant_count(conn: psycopg.Connection, scope: Scope, t: TableScope) -> tuple[int, str, str]:
    """Rows of the tenant in the snapshot (method "none": no content checksum asked for)."""
    rows = conn.execute(sql.SQL("SELECT count(*) FROM ({}) AS {}").format(tenant_select(t, scope),
                                                                          sql.Identifier(_ROW_ALIAS)))
    return rows.fetchone()[0], "", "none"


def tenant_checksum(conn: psycopg.Connection, scope: Scope, t: TableScope) -> tuple[int, str, str]:
    """Rows and checksum of the tenant's rows, comparable with table_checksum() on a restored copy."""
    source = sql.SQL("({})").format(tenant_select(t, scope))
    result = relation_checksum(conn, t.name, source, default_method(conn, t.schema, t.table), _ROW_ALIAS)
    return result.rows, result.checksum, result.method


def text_stream(conn: psycopg.Connection, scope: Scope, t: TableScope, columns: list[Any], fmt: str,
                counter: RowCount) -> Iterator[bytes]:
    """One table's tenant rows as CSV or JSON Lines chunks from COPY (``counter.rows`` set at the end).

    The one rendering of a table's text formats: ``drp export`` writes it to storage, the
    portal streams it over HTTP, so both hand out the same bytes for the same snapshot.
    """
    if fmt == "csv":
        return csv_stream(conn, tenant_select(t, scope, csv_columns(columns)), counter)
    if fmt == "jsonl":
        return jsonl_stream(conn, tenant_select(t, scope, jsonl_columns(columns)), counter)
    raise ValueError(f"not a streamed text format: {fmt!r}")


def write_one(conn: psycopg.Connection, arrow: Any, storage: Storage, scope: Scope, t: TableScope,
               columns: list[Any], fmt: str, key: str, work_dir: Path | None, batch_rows: int, written: list[str]) -> tuple[int, Any]:
    counter = RowCount()
    if fmt in ("csv", "jsonl"):
        written.append(key)
        put = storage.put_stream(key, text_stream(conn, scope, t, columns, fmt, counter))
        return counter.rows if counter.rows is not None else -1, put
    select, schema = parquet_plan(columns)
    with tempfile.TemporaryDirectory(prefix="drp-export-", dir=work_dir) as tmp:
        path = Path(tmp) / "table.parquet"
        try:
            arrow.execute(tenant_select(t, scope, select).as_string(conn))
            try:
                rows = write_parquet_batches(arrow.fetch_record_batch(), schema, path, batch_rows=batch_rows)
            except ValueError as exc:  # pyarrow.ArrowInvalid: a value with no exact Parquet form
                raise ExportError(f"{t.name} cannot be written as Parquet: {str(exc).strip()[:300]}",
                                  fix="export this table as CSV or JSON Lines (they carry every value: NaN, "
                                      "infinite timestamps, multi-dimensional arrays), or leave it out with "
                                      "--exclude") from None
            written.append(key)
            put = storage.put_stream(key, file_chunks(path))
        finally:
            remove_quietly(path)
    return rows, put
