"""One archive segment: select expired rows into Parquet, store it with a manifest, read it back to verify.

The archiving query computes, next to each row, the row's hash in PostgreSQL (the
per-row term of core/pg/checksums.py, stored in the Parquet column ``__drp_row_hash``).
Their sum is the segment's content checksum; the hashes also guard the delete: a row is
deleted only if its hash still equals the archived one (a row changed after archiving
stays in the database).

Verification never trusts the writer: the object is fetched from storage with its SHA-256
recomputed, its rows are loaded into a temporary table (COPY; temporary tables write no
WAL), and PostgreSQL recomputes count and checksum there, and checks that every row
belongs to the segment's tenant, month and cutoff.

Rows archived but not deleted (changed since, or held by the time of the delete) are listed
in a sidecar ``kept.json`` next to the manifest (core/retention/kept.py), written when the segment's deletion is
done: the archive's *effective* rows are its rows minus those (the database, or a later
archive, holds the kept ones). No ``kept.json``: every row of the archive was removed.

Archives hold years of health data: they are sealed with age to the configured recipients
(``ArchiveKeys``), as backups are (core/stream.py: zstd inside age, readable with stock
``age -d -i key | zstd -d``). The Parquet object becomes ``rows.parquet.zst.age`` and
``kept.json`` (it lists primary keys) ``kept.json.zst.age``; the manifest records the
recipients (``encryption``), and its SHA-256 is of the stored (sealed) bytes. Reading an
archive back (verify, delete, restore) decrypts it with the identity into a 0600 scratch
file. Archives written before encryption (no ``encryption`` in the manifest) still read.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from dr_pipelines.core import context
from dr_pipelines.core.errors import ConfigError, DrpError
from dr_pipelines.core.layout import DATA_NAME, MANIFEST_NAME, SEALED
from dr_pipelines.core.manifest import Manifest, ObjectEntry, TableEntry, read_manifest, write_manifest
from dr_pipelines.core.parquet import parquet_plan, pyarrow_version, table_columns, write_parquet
from dr_pipelines.core.pg import checksums
from dr_pipelines.core.pg.checksums import checksum_hex
from dr_pipelines.core.retention.policy import BoundTable
from dr_pipelines.core.settings import Settings
from dr_pipelines.core.storage import Storage
from dr_pipelines.core.tenancy import TENANTS_SETTING, tenant_filter
from dr_pipelines.core.verified_read import read_verified

SEAL_LEVEL = 1  # zstd level: Parquet is compressed already
HASH_COLUMN = "__drp_row_hash"
ALIAS = "drp_row"
PARQUET_BATCH = 10_000


class ArchiveError(DrpError):
    """An archive segment could not be written or does not verify; no row was deleted for it."""


@dataclass(frozen=True)
class ArchiveKeys:
    """How archives are sealed (age recipients, public keys as text) and read back (age identities)."""

    recipients: tuple[str, ...] = ()
    identities: tuple[object, ...] = ()
    allow_plaintext: bool = False  # an explicit setting: archive without encryption

    @classmethod
    def from_settings(cls, settings: Settings, identity: Path | None = None) -> ArchiveKeys:
        """What archives are sealed to (encryption_recipients) and read back with (the identity, if configured)."""
        has_identity = identity is not None or settings.age_identity_file is not None
        return cls(tuple(settings.encryption_recipients),
                   tuple(context.identities(settings, identity)) if has_identity else (), settings.archive_allow_plaintext)

    def check_for_archiving(self) -> None:
        """Refuse to archive in plaintext (unless allowed), or without the identity verify reads back with."""
        if not self.recipients and not self.allow_plaintext:
            raise ConfigError(
                "no encryption recipients are configured: archives of health data are never stored in plaintext",
                fix="set DRP_ENCRYPTION_RECIPIENTS (the age public keys backups use) and DRP_AGE_IDENTITY_FILE; "
                "only to archive unencrypted on purpose, set DRP_ARCHIVE_ALLOW_PLAINTEXT=true",
            )
        if self.recipients and not self.identities:
            raise ConfigError(
                "archives are verified by decrypting them back from storage, and no age identity is configured",
                fix="set DRP_AGE_IDENTITY_FILE to the private key matching DRP_ENCRYPTION_RECIPIENTS",
            )


def needs_identities(identities: Sequence[object], what: str) -> Sequence[object]:
    if not identities:
        raise ConfigError(f"{what} is encrypted: reading it needs the age identity (private key)",
                          fix="set DRP_AGE_IDENTITY_FILE (or pass the identity) to the key matching the archive's "
                          "recipients (listed in its manifest)")
    return identities


def seal(source: Any, recipients: Sequence[str]) -> Iterator[bytes]:
    """age(zstd(source)) chunks, to ``recipients`` (the backup's mechanism, core/stream.py)."""
    from dr_pipelines.core.crypto import parse_recipients
    from dr_pipelines.core.stream import compress_encrypt

    return compress_encrypt(source, parse_recipients(list(recipients)), level=SEAL_LEVEL, threads=1)


def _private_file(path: Path) -> Any:
    """A new file only its owner can read: decrypted health data in scratch space."""
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb")


def row_hash(method: str, alias: str = ALIAS) -> sql.Composable:
    """The per-row term of the table checksum (core/pg/checksums.py) over this module's alias."""
    return checksums.row_hash(method, alias)


def table_method(conn: psycopg.Connection, bt: BoundTable) -> str:
    """`record` unless a column type hashes by OID or has no hash function (then `text`)."""
    method = checksums.default_method(conn, bt.scope.schema, bt.scope.table)
    if method == "record":
        try:
            with conn.transaction():
                conn.execute(sql.SQL("SELECT {} FROM {} AS {} LIMIT 1").format(
                    row_hash("record"), bt.ident, sql.Identifier(ALIAS))).fetchall()
        except psycopg.errors.UndefinedFunction:
            method = "text"
    return method


def bind_tenant(conn: psycopg.Connection, tenant_id: str) -> None:
    """Bind the tenant for tenant_filter() (read back with current_setting; never formatted into SQL)."""
    conn.execute("SELECT set_config(%s, %s::text[]::text, false)", (TENANTS_SETTING, [str(tenant_id)]))


def ts_value(bt: BoundTable, value: datetime) -> Any:
    """A UTC instant as the timestamp column's type wants it."""
    if bt.timestamp_type == "date":
        return value.date()
    if bt.timestamp_type == "timestamp without time zone":
        return value.astimezone(UTC).replace(tzinfo=None)
    return value


def month_bounds(month: date) -> tuple[datetime, datetime]:
    start = datetime(month.year, month.month, 1, tzinfo=UTC)
    end = datetime(month.year + (month.month == 12), month.month % 12 + 1, 1, tzinfo=UTC)
    return start, end


def selection_where(bt: BoundTable, held: sql.Composable) -> sql.Composable:
    """Rows of the bound tenant, of one month, older than the cutoff, not held. Parameters: cutoff, m0, m1."""
    ts = sql.Identifier(ALIAS, bt.policy.timestamp_column)
    return sql.SQL("{} AND {} < %(cutoff)s AND {} >= %(m0)s AND {} < %(m1)s AND NOT {}").format(
        tenant_filter(bt.scope, bt.tenant_scope, ALIAS), ts, ts, ts, held)


def pk_tuple(bt: BoundTable, alias: str = ALIAS) -> sql.Composable:
    return sql.SQL("({})").format(sql.SQL(", ").join(sql.Identifier(alias, c) for c in bt.pk))


def from_clause(bt: BoundTable) -> sql.Composable:
    only = sql.SQL("") if bt.partitioned else sql.SQL("ONLY ")
    return sql.SQL("{}{} AS {}").format(only, bt.ident, sql.Identifier(ALIAS))


@dataclass
class Written:
    path: Path
    rows: int
    checksum: str
    last_pk: tuple[Any, ...] | None


def select_to_parquet(conn: psycopg.Connection, bt: BoundTable, method: str, held: sql.Composable,
                      params: dict[str, Any], after_pk: tuple[Any, ...] | None, limit: int, path: Path) -> Written:
    """Write up to ``limit`` selected rows (in primary-key order, after ``after_pk``) to ``path``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = table_columns(conn, bt.scope.schema, bt.scope.table)
    select, schema = parquet_plan(columns)
    schema = schema.append(pa.field(HASH_COLUMN, pa.int64(), nullable=False))
    where = selection_where(bt, held)
    args = dict(params, limit=limit)
    if after_pk is not None:
        where = sql.SQL("{} AND {} > ({})").format(where, pk_tuple(bt), sql.SQL(", ").join(
            sql.SQL("%(k{}_)s::{}").format(sql.SQL(str(i)), sql.SQL(t)) for i, t in enumerate(bt.pk_types)))
        args.update({f"k{i}_": v for i, v in enumerate(after_pk)})
    # parquet_plan's select list reads from alias "t": the inner query keeps the row alias distinctive.
    query = sql.SQL("SELECT {}, t.{} FROM (SELECT {}.*, {} AS {} FROM {} WHERE {} ORDER BY {} LIMIT %(limit)s) AS t"
                    " ORDER BY {}").format(
        select, sql.Identifier(HASH_COLUMN), sql.Identifier(ALIAS), row_hash(method), sql.Identifier(HASH_COLUMN),
        from_clause(bt), where, sql.SQL(", ").join(sql.Identifier(ALIAS, c) for c in bt.pk),
        sql.SQL(", ").join(sql.Identifier("t", c) for c in bt.pk))
    rows = write_parquet(conn, query, schema, path, f"drp_archive_{secrets.token_hex(4)}", batch_rows=PARQUET_BATCH,
                         params=args)
    # The checksum and the last key come from the file just written (three columns, read locally).
    total, last = 0, None
    for batch in pq.ParquetFile(path).iter_batches(batch_size=PARQUET_BATCH, columns=[*bt.pk, HASH_COLUMN]):
        total += sum(batch.column(HASH_COLUMN).to_pylist())
        last = tuple(batch.column(c)[batch.num_rows - 1].as_py() for c in bt.pk) if batch.num_rows else last
    return Written(path, rows, checksum_hex(total), last)


def store(storage: Storage, prefix: str, written: Written, manifest_fields: dict[str, Any],
          keys: ArchiveKeys) -> tuple[int, str]:
    """Upload the Parquet file (sealed to ``keys.recipients``), then the manifest (last: the commit).

    Returns the stored object's (bytes, sha256).
    """
    from dr_pipelines.core.stream import file_chunks

    keys.check_for_archiving()
    started = datetime.now(UTC)
    if keys.recipients:
        with open(written.path, "rb") as plain:
            name = DATA_NAME + SEALED
            put = storage.put_stream(f"{prefix}/{name}", seal(plain, keys.recipients))
    else:
        name = DATA_NAME
        put = storage.put_stream(f"{prefix}/{name}", file_chunks(written.path))
    m = Manifest(
        kind="archive", id=prefix.rsplit("/", 1)[1], started_at=started, finished_at=datetime.now(UTC),
        objects=[ObjectEntry(name, "table", put.size, put.sha256, plain_bytes=written.path.stat().st_size,
                             format="parquet")],
        tables=[TableEntry(manifest_fields["table"], written.rows, written.checksum, manifest_fields["method"])],
        tools={"pyarrow": pyarrow_version()}, extra=manifest_fields,
        compression={"algorithm": "zstd", "level": SEAL_LEVEL} if keys.recipients else None,
        encryption={"algorithm": "age-x25519", "recipients": list(keys.recipients)} if keys.recipients else None,
    )
    write_manifest(storage, prefix, m)
    return put.size, put.sha256


@contextmanager
def fetched(storage: Storage, prefix: str, work_dir: Path | None = None, *,
            identities: Sequence[object] = ()) -> Iterator[tuple[Manifest, Path]]:
    """The segment's manifest and its Parquet file in a temporary file, SHA-256 and size checked.

    A sealed archive is checked as stored, then decrypted with ``identities`` into a 0600 file.
    """
    from dr_pipelines.core.stream import decrypt_decompress

    manifest = read_manifest(storage, prefix)
    entry = manifest.object("table")
    with tempfile.TemporaryDirectory(prefix="drp-archive-", dir=work_dir) as tmp:
        path = Path(tmp) / DATA_NAME
        stored = Path(tmp) / entry.key if manifest.encryption else path
        if manifest.encryption:
            needs_identities(identities, f"archive {prefix}")
        def mismatch(where: str, size: int, sha256: str) -> ArchiveError:
            return ArchiveError(f"archive object {where} does not match its manifest "
                                f"({size} bytes, sha256 {sha256[:12]}…; manifest: {entry.bytes} bytes, "
                                f"{entry.sha256[:12]}…)", fix="the object was altered or truncated; do not delete rows for it")

        with _private_file(stored) as f:  # checked as stored; decrypted below only if intact
            read_verified(storage, f"{prefix}/{entry.key}", f, size=entry.bytes, sha256=entry.sha256, mismatch=mismatch)
        if manifest.encryption:  # the bytes are the ones written: a failure now is the key's
            with open(stored, "rb") as sealed, _private_file(path) as plain:
                decrypt_decompress(sealed, plain, identities, what=f"archive {prefix}")
            stored.unlink()
        yield manifest, path


def load_parquet(conn: psycopg.Connection, path: Path, target: sql.Composable, columns: list[str]) -> int:
    """COPY the Parquet file's ``columns`` into ``target``, streaming row groups; returns rows."""
    import pyarrow.parquet as pq

    rows = 0
    stmt = sql.SQL("COPY {} ({}) FROM STDIN").format(target, sql.SQL(", ").join(map(sql.Identifier, columns)))
    with conn.cursor() as cur, cur.copy(stmt) as copy:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=PARQUET_BATCH, columns=columns):
            for row in zip(*(c.to_pylist() for c in batch.columns), strict=True):
                copy.write_row(row)
            rows += batch.num_rows
    return rows


def scratch_copy(conn: psycopg.Connection, bt_ident: sql.Identifier, path: Path) -> tuple[sql.Identifier, list[str]]:
    """A temporary table shaped like the archived table, filled from the Parquet file; emptied at commit.

    One per source table and session, created once: creating and dropping a table per segment
    would write catalog WAL for every segment (measured: ~100 kB each).
    """
    import pyarrow.parquet as pq

    source = bt_ident.as_string(conn)
    name = sql.Identifier(f"drp_verify_{hashlib.sha256(source.encode()).hexdigest()[:16]}")
    conn.execute(sql.SQL("CREATE TEMP TABLE IF NOT EXISTS {} (LIKE {}) ON COMMIT DELETE ROWS").format(name, bt_ident))
    conn.execute(sql.SQL("DELETE FROM {}").format(name))  # empty already, unless used earlier in this transaction
    columns = [c for c in pq.ParquetFile(path).schema_arrow.names if c != HASH_COLUMN]
    load_parquet(conn, path, name, columns)
    return name, columns


def checksum_of(conn: psycopg.Connection, relation: sql.Composable, method: str) -> tuple[int, str]:
    rows, total = conn.execute(checksums.checksum_query(method, relation, ALIAS)).fetchone()
    return int(rows), checksum_hex(int(total))


def verify(conn: psycopg.Connection, storage: Storage, bt: BoundTable, prefix: str, *, rows: int, checksum: str,
           work_dir: Path | None = None, identities: Sequence[object] = ()) -> Manifest:
    """Read the segment back from storage and prove it holds exactly the archived rows, of one tenant and month."""
    with fetched(storage, prefix, work_dir, identities=identities) as (manifest, path), conn.transaction():
        table = manifest.tables[0]
        extra = manifest.extra
        if (table.rows, table.checksum) != (rows, checksum):
            raise ArchiveError(f"manifest of {prefix} says {table.rows} rows / {table.checksum}, the journal "
                               f"{rows} / {checksum}", fix="the archive is not the one written; it is not trusted")
        scratch, _ = scratch_copy(conn, bt.ident, path)
        got = checksum_of(conn, scratch, table.method)
        if got != (rows, checksum):
            raise ArchiveError(f"archive {prefix} reads back as {got[0]} rows / {got[1]}, expected {rows} / {checksum}",
                               fix="the Parquet file does not hold the archived rows; no row was deleted for it")
        bind_tenant(conn, extra["tenant_id"])
        m0, m1 = month_bounds(date.fromisoformat(extra["month"]))
        ts = sql.Identifier(ALIAS, bt.policy.timestamp_column)
        stray = conn.execute(sql.SQL("SELECT count(*) FROM {} AS {} WHERE NOT ({} AND {} < %(cutoff)s AND {} >= %(m0)s"
                                     " AND {} < %(m1)s)").format(
            scratch, sql.Identifier(ALIAS), tenant_filter(bt.scope, bt.tenant_scope, ALIAS), ts, ts, ts),
            {"cutoff": ts_value(bt, datetime.fromisoformat(extra["cutoff"])), "m0": ts_value(bt, m0),
             "m1": ts_value(bt, m1)}).fetchone()[0]
        if stray:
            raise ArchiveError(f"archive {prefix} holds {stray} row(s) outside tenant {extra['tenant_id']}, month "
                               f"{extra['month']} or the cutoff", fix="this is a bug in drp: report it; nothing was deleted")
        return manifest


def remove_objects(storage: Storage, prefix: str) -> None:
    """Delete a segment's objects, manifest first (so a half-removed segment is never mistaken for an archive)."""
    storage.delete(f"{prefix}/{MANIFEST_NAME}")
    for info in list(storage.list(prefix + "/")):
        storage.delete(info.key)


def parquet_keys(path: Path, bt: BoundTable, batch_size: int, offset: int) -> Iterator[tuple[int, list[list[Any]],
                                                                                             list[int]]]:
    """(offset after the batch, primary-key columns, row hashes) per ``batch_size`` rows, from row ``offset`` on."""
    import pyarrow.parquet as pq

    pos = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_size, columns=[*bt.pk, HASH_COLUMN]):
        start, end = pos, pos + batch.num_rows
        pos = end
        if end <= offset:
            continue
        skip = max(0, offset - start)
        keys = [batch.column(c).to_pylist()[skip:] for c in bt.pk]
        yield end, keys, batch.column(HASH_COLUMN).to_pylist()[skip:]
