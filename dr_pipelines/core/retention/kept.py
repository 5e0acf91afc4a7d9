"""The rows an archive segment holds that were not deleted: ``kept.json`` next to its manifest.

Rows archived but not deleted (changed since, or held by the time of the delete) are listed
in this sidecar, written when the segment's deletion is done: the archive's *effective*
rows are its rows minus those (the database, or a later archive, holds the kept ones). No
``kept.json``: every row of the archive was removed. Sealed like its archive
(``kept.json.zst.age``) when archives are encrypted: it lists primary keys.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass

import psycopg
from psycopg import sql

from dr_pipelines.core.layout import KEPT_NAME, SEALED
from dr_pipelines.core.pg.checksums import checksum_hex
from dr_pipelines.core.retention.segment import ALIAS, ArchiveError, needs_identities, row_hash, seal
from dr_pipelines.core.storage import Storage


@dataclass(frozen=True)
class Kept:
    """Rows of an archive that were not deleted: primary keys (values as text) and archived row hashes."""

    keys: list[list[str]]
    row_hashes: list[int]

    @property
    def rows(self) -> int:
        return len(self.keys)

    @property
    def checksum(self) -> str:
        return checksum_hex(sum(self.row_hashes))

    @property
    def sha256(self) -> str:
        """Of the canonical JSON of [keys, row_hashes]."""
        return hashlib.sha256(json.dumps([self.keys, self.row_hashes], separators=(",", ":")).encode()).hexdigest()


def pk_text(pk: list[str], alias: str = ALIAS) -> sql.Composable:
    """The primary key as a jsonb array of its values as text: how kept rows are named (journal and kept.json)."""
    return sql.SQL("jsonb_build_array({})").format(
        sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(alias, c)) for c in pk))


def write_kept(storage: Storage, prefix: str, kept: Kept, *, segment_id: str, table: str, primary_key: list[str],
               recipients: Sequence[str] = ()) -> None:
    """Store ``kept.json`` (sealed to ``recipients``, as its archive) and read it back.

    Plaintext it is deterministic (a re-run writes the same bytes); sealed, a re-run replaces it.
    """
    body = json.dumps({
        "kind": "archive-kept", "version": 1, "segment_id": segment_id, "table": table, "primary_key": primary_key,
        "rows": kept.rows, "checksum": kept.checksum, "sha256": kept.sha256,
        "note": "rows of rows.parquet that were not deleted (changed after the archive, or under a legal hold): "
                "the database or a later archive holds them; restore skips them",
        "keys": kept.keys, "row_hashes": kept.row_hashes}, indent=None, separators=(",", ":")).encode()
    key = f"{prefix}/{KEPT_NAME}"
    if recipients:
        key += SEALED
        body = b"".join(seal(io.BytesIO(body), recipients))
    storage.put_bytes(key, body)
    if storage.get_bytes(key) != body:
        raise ArchiveError(f"{storage.url}/{key} does not read back as written",
                           fix="check the storage; the segment stays unfinished and a re-run writes it again")


def read_kept(storage: Storage, prefix: str, primary_key: list[str], *,
              identities: Sequence[object] = ()) -> Kept | None:
    """The archive's kept rows (None: all its rows were removed), checked against their own count and SHA-256."""
    from dr_pipelines.core.stream import decrypt_decompress

    key = f"{prefix}/{KEPT_NAME}"
    if storage.exists(key + SEALED):
        key += SEALED
        plain = io.BytesIO()
        with storage.open(key) as sealed:
            decrypt_decompress(sealed, plain, needs_identities(identities, f"{storage.url}/{key}"),
                               what=f"{storage.url}/{key}")
        text = plain.getvalue()
    elif storage.exists(key):
        text = storage.get_bytes(key)
    else:
        return None
    try:
        doc = json.loads(text)
        kept = Kept([[str(v) for v in k] for k in doc["keys"]], [int(h) for h in doc["row_hashes"]])
        ok = (doc["kind"] == "archive-kept" and doc["primary_key"] == primary_key and doc["rows"] == kept.rows
              == len(kept.row_hashes) and doc["sha256"] == kept.sha256 and doc["checksum"] == kept.checksum)
    except (ValueError, KeyError, TypeError):
        ok = False
    if not ok:
        raise ArchiveError(f"{storage.url}/{key} is malformed or does not match its own count and SHA-256",
                           fix="the list of rows never deleted cannot be trusted: restore into a side table (--into) "
                           "and compare with the live table by primary key")
    return kept


def drop_kept(conn: psycopg.Connection, relation: sql.Composable, kept: Kept, primary_key: list[str],
              method: str) -> None:
    """Remove the kept rows from a loaded copy of the archive; they must be exactly the ones listed, by content."""
    removed, total = conn.execute(sql.SQL(
        "WITH gone AS (DELETE FROM {} AS {} WHERE {} IN (SELECT jsonb_array_elements(%s::jsonb)) RETURNING {} AS h)"
        " SELECT count(*), coalesce(sum(h::numeric), 0) FROM gone").format(
        relation, sql.Identifier(ALIAS), pk_text(primary_key), row_hash(method)),
        (json.dumps(kept.keys),)).fetchone()
    if (removed, checksum_hex(int(total))) != (kept.rows, kept.checksum):
        raise ArchiveError(f"the archive holds {removed} of the {kept.rows} rows its kept.json lists (or other "
                           "versions of them)", fix="the archive and its kept.json do not belong together; restore "
                           "into a side table (--into) and compare by primary key")
