"""Shared helpers for the export tests (no tests here): pagila, and loading each format back.

Outputs are read back the way a recipient would: CSV with COPY FROM into a scratch table
(so NULL and '' are told apart by PostgreSQL itself), JSON Lines with json, Parquet with
pyarrow.
"""

from __future__ import annotations

import io
import json
import uuid
from typing import Any

import psycopg
import pyarrow.parquet as pq
from psycopg import sql

from dr_pipelines.core.export.formats import EXTENSIONS
from dr_pipelines.core.export.run import ExportResult, object_name
from dr_pipelines.core.pg.cluster import LocalCluster
from dr_pipelines.core.storage import Storage
from dr_pipelines_tests.support.backup import load_pagila, require_pagila, template_database

PAGILA_TEMPLATE = "export_pagila_template"


def audit_rows(dsn: str) -> list[dict[str, Any]]:
    """Every row of drp.export_audit, oldest first, as dicts."""
    with psycopg.connect(dsn) as conn:
        cur = conn.execute("SELECT * FROM drp.export_audit ORDER BY id")
        names = [d.name for d in cur.description]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


def pagila_database(cluster: LocalCluster) -> tuple[str, str]:
    """A fresh copy of pagila (loaded once per cluster into a template); (name, dsn). Skips without it."""
    require_pagila()
    template_database(cluster, PAGILA_TEMPLATE, load_pagila)
    name = f"pagila_{uuid.uuid4().hex[:10]}"
    return name, cluster.create_database(name, template=PAGILA_TEMPLATE)


def object_key(result: ExportResult, table: str, fmt: str) -> str:
    return f"{result.prefix}/{object_name(table, fmt)}"


def read_jsonl(storage: Storage, key: str) -> list[dict[str, Any]]:
    text = storage.get_bytes(key).decode("utf-8")
    assert text == "" or text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def read_parquet(storage: Storage, key: str) -> Any:
    return pq.read_table(io.BytesIO(storage.get_bytes(key)))


def read_csv_via_copy(conn: psycopg.Connection, storage: Storage, key: str) -> list[dict[str, Any]]:
    """COPY FROM the CSV into a scratch table of text columns named from its header; rows as dicts."""
    data = storage.get_bytes(key)
    header_line = data.split(b"\n", 1)[0].decode("utf-8")
    import csv

    header = next(csv.reader([header_line]))
    scratch = f"scratch_{uuid.uuid4().hex[:8]}"
    conn.execute(sql.SQL("CREATE TEMP TABLE {} ({})").format(
        sql.Identifier(scratch), sql.SQL(", ").join(sql.SQL("{} text").format(sql.Identifier(c)) for c in header)))
    with conn.cursor().copy(sql.SQL("COPY {} FROM STDIN WITH (FORMAT csv, HEADER true)").format(
            sql.Identifier(scratch))) as copy:
        copy.write(data)
    cur = conn.execute(sql.SQL("SELECT * FROM {}").format(sql.Identifier(scratch)))
    names = [d.name for d in cur.description]
    rows = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
    conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(scratch)))
    return rows


def rows_in(fmt: str, conn: psycopg.Connection, storage: Storage, key: str) -> list[dict[str, Any]]:
    """Every row of one exported object as a dict of column -> value (CSV values are text)."""
    if fmt == "csv":
        return read_csv_via_copy(conn, storage, key)
    if fmt == "jsonl":
        return read_jsonl(storage, key)
    assert fmt == "parquet"
    return read_parquet(storage, key).to_pylist()


ALL_FORMATS = tuple(EXTENSIONS)
