"""Bring archived rows back: into their table, or into a side table for a look without touching it.

Works from storage alone (the journal is not needed: its database may be the one lost).
For each archive of the table, tenant and months asked for: the object is fetched with
its SHA-256 checked, loaded into a temporary table, its count and content checksum
compared with the manifest, then inserted in the same transaction. Afterwards the rows
in the target with the archive's primary keys are hashed again and must equal the
manifest: a restore that does not match is rolled back. Rows whose primary key is already
in the target are refused (nothing is overwritten).

An archive's rows listed in its ``kept.json`` (archived, but changed or held by the time of
the delete, so never removed: the database or a later archive holds them) are skipped:
they are taken out of the loaded copy, must be exactly the listed rows by content, and
the restored rows must then equal the manifest minus them (count and checksum).

Sealed archives (age, see core/retention/segment.py) are decrypted with the identity; older
plaintext archives (no ``encryption`` in their manifest) restore as they are.

Rows restored into the live table are old enough to be archived again by the next run:
place a legal hold on them first if they must stay (`drp retention hold place`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import date
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
from psycopg import sql

from dr_pipelines.core.errors import ConfigError
from dr_pipelines.core.layout import ARCHIVES, KEPT_NAME, MANIFEST_NAME, SEALED
from dr_pipelines.core.manifest import read_manifest
from dr_pipelines.core.pg.checksums import pin_render_settings
from dr_pipelines.core.pg.connect import connect
from dr_pipelines.core.retention.kept import drop_kept, read_kept
from dr_pipelines.core.retention.segment import (
    ALIAS,
    ArchiveError,
    checksum_hex,
    checksum_of,
    fetched,
    row_hash,
    scratch_copy,
)
from dr_pipelines.core.storage import Storage


@dataclass(frozen=True)
class ArchiveInfo:
    prefix: str
    table: str
    tenant_id: str
    month: str
    rows: int
    bytes: int
    checksum: str
    cutoff: str
    predicate: str
    kept: int = 0  # rows listed in kept.json: never deleted, skipped by restore

    def as_dict(self) -> dict[str, Any]:
        return dict(vars(self))


def parse_period(period: str) -> tuple[date, date]:
    """'2024-03' or '2024-01..2024-06' -> (first month, last month)."""
    try:
        first, _, last = period.partition("..")
        start = date.fromisoformat(first.strip() + "-01")
        end = date.fromisoformat((last or first).strip() + "-01")
    except ValueError:
        raise ConfigError(f"period {period!r} is not YYYY-MM or YYYY-MM..YYYY-MM",
                          fix="write e.g. 2024-03 or 2024-01..2024-06") from None
    if end < start:
        raise ConfigError(f"period {period!r} ends before it starts", fix="put the earlier month first")
    return start, end


def list_archives(storage: Storage, *, table: str | None = None, tenant_id: str | None = None,
                  period: tuple[date, date] | None = None, identities: Sequence[object] = ()) -> list[ArchiveInfo]:
    """Archives in storage (manifests: the commit), filtered; the database is not consulted.

    Counting an archive's kept rows reads its kept.json: a sealed one needs ``identities``.
    """
    prefix = f"{ARCHIVES}/"
    if table:
        prefix += f"{quote(table if '.' in table else f'public.{table}', safe='')}/"
        if tenant_id is not None:
            prefix += f"tenant={quote(str(tenant_id), safe='')}/"
    out = []
    listed = [info.key for info in storage.list(prefix)]
    with_kept = {key.rsplit("/", 1)[0] for key in listed
                 if key.endswith("/" + KEPT_NAME) or key.endswith("/" + KEPT_NAME + SEALED)}
    for key in listed:
        if not key.endswith("/" + MANIFEST_NAME):
            continue
        seg = key.rsplit("/", 1)[0]
        m = read_manifest(storage, seg)
        x = m.extra
        if tenant_id is not None and x.get("tenant_id") != str(tenant_id):
            continue
        month = date.fromisoformat(x["month"])
        if period and not (period[0] <= month <= period[1]):
            continue
        kept = read_kept(storage, seg, x["primary_key"], identities=identities) if seg in with_kept else None
        out.append(ArchiveInfo(seg, m.tables[0].name, x["tenant_id"], x["month"][:7], m.tables[0].rows,
                               m.stored_bytes, m.tables[0].checksum, x["cutoff"], x["predicate"],
                               kept.rows if kept else 0))
    return out


def restore_archives(dsn: str, storage: Storage, table: str, tenant_id: str, period: tuple[date, date], *,
                     into: str | None = None, work_dir: Path | None = None,
                     progress: Callable[[str, int, int | None], None] | None = None,
                     identities: Sequence[object] = ()) -> list[ArchiveInfo]:
    """Insert the archived rows of ``table`` for ``tenant_id`` in ``period`` into the table (or ``into``)."""
    table = table if "." in table else f"public.{table}"
    found = list_archives(storage, table=table, tenant_id=tenant_id, period=period, identities=identities)
    if not found:
        raise ArchiveError(f"no archive of {table} for tenant {tenant_id} in {period[0]:%Y-%m}..{period[1]:%Y-%m} "
                           f"in {storage.url}", fix="list what exists with `drp archive list`")
    source = sql.Identifier(*table.split(".", 1))
    target = sql.Identifier(*(into if "." in into else f"public.{into}").split(".", 1)) if into else source
    with connect(dsn, autocommit=True) as conn:
        pin_render_settings(conn)
        if into:
            conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} (LIKE {} INCLUDING DEFAULTS)").format(target, source))
        columns = _insertable(conn, target)
        for n, info in enumerate(found, start=1):
            try:
                found[n - 1] = replace(info, kept=_restore_one(conn, storage, source, target, columns, info, work_dir,
                                                               identities))
            except psycopg.Error as exc:
                raise ArchiveError(f"archive {info.prefix} cannot be inserted into {target.as_string(conn)}: "
                                   f"{str(exc).strip().splitlines()[0]}",
                                   fix="nothing of this archive was inserted; restore into a side table (--into), "
                                   "or recreate the partition its month needs") from None
            if progress:
                progress(f"restore {table}", n, len(found))
    return found


def _insertable(conn: psycopg.Connection, target: sql.Identifier) -> list[str]:
    return [r[0] for r in conn.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped"
        " AND attgenerated = '' ORDER BY attnum", (target.as_string(conn),)).fetchall()]


def _restore_one(conn: psycopg.Connection, storage: Storage, source: sql.Identifier, target: sql.Identifier,
                 columns: list[str], info: ArchiveInfo, work_dir: Path | None, identities: Sequence[object]) -> int:
    """Restore one archive in one transaction; returns how many of its rows were skipped as kept."""
    with fetched(storage, info.prefix, work_dir, identities=identities) as (manifest, path), conn.transaction():
        entry = manifest.tables[0]
        scratch, _ = scratch_copy(conn, source, path)
        if checksum_of(conn, scratch, entry.method) != (entry.rows, entry.checksum):
            raise ArchiveError(f"archive {info.prefix} does not match its manifest", fix="it cannot be restored as is")
        expected = (entry.rows, entry.checksum)
        kept = read_kept(storage, info.prefix, manifest.extra["primary_key"], identities=identities)
        if kept:  # never deleted: the database or a later archive holds them
            drop_kept(conn, scratch, kept, manifest.extra["primary_key"], entry.method)
            expected = (entry.rows - kept.rows, checksum_hex(int(entry.checksum, 16) - int(kept.checksum, 16)))
        pk = sql.SQL(", ").join(map(sql.Identifier, manifest.extra["primary_key"]))
        matching = sql.SQL("SELECT * FROM {} WHERE ({}) IN (SELECT {} FROM {})").format(target, pk, pk, scratch)
        present = conn.execute(sql.SQL("SELECT count(*) FROM ({}) AS x").format(matching)).fetchone()[0]
        if present:
            raise ArchiveError(f"{present} row(s) of archive {info.prefix} are already in {target.as_string(conn)}",
                               fix="restore into a side table (--into), or remove those rows first")
        cols = sql.SQL(", ").join(map(sql.Identifier, columns))
        conn.execute(sql.SQL("INSERT INTO {} ({}) OVERRIDING SYSTEM VALUE SELECT {} FROM {}").format(
            target, cols, cols, scratch))
        rows, total = conn.execute(sql.SQL("SELECT count(*), coalesce(sum({}::numeric), 0) FROM ({}) AS {}").format(
            row_hash(entry.method), matching, sql.Identifier(ALIAS))).fetchone()
        if (rows, checksum_hex(int(total))) != expected:
            raise ArchiveError(f"rows restored from {info.prefix} do not match its manifest"
                               f"{' minus its kept rows' if kept else ''} after insertion ({rows} rows)",
                               fix="the target's definition differs from the archived table's; "
                               "restore into a side table (--into)")
        return kept.rows if kept else 0
