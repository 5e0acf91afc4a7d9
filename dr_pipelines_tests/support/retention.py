"""Shared helpers for the data-retention tests (no tests here): a policy, and the union check.

The union check is the invariant the crash tests prove: every original row is either still
in the table or in exactly one archive's effective rows (its rows minus those its kept.json
lists as never deleted). Content is compared with PostgreSQL's own hashes
(core/pg/checksums.py): archives are read back from storage into a scratch table first.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from pyrage import x25519

from dr_pipelines.core.layout import ARCHIVES as PREFIX
from dr_pipelines.core.manifest import MANIFEST_NAME
from dr_pipelines.core.pg.checksums import default_method, pin_render_settings
from dr_pipelines.core.retention.kept import drop_kept, read_kept
from dr_pipelines.core.retention.policy import Policies, parse_policies
from dr_pipelines.core.retention.segment import (
    ArchiveKeys,
    checksum_of,
    fetched,
    scratch_copy,
)
from dr_pipelines.core.storage import Storage
from dr_pipelines_tests.support.env import drp_env

AS_OF = datetime(2025, 11, 1, tzinfo=UTC)  # the demo data's "today"


_IDENTITY = x25519.Identity.generate()  # one key pair for the test session: archives are always sealed
KEYS = ArchiveKeys((str(_IDENTITY.to_public()),), (_IDENTITY,))
ID = KEYS.identities  # what reads the archives back


def key_env(tmp_path: Path) -> dict[str, str]:
    """The settings (environment) that seal archives to KEYS and read them with its identity (a 0600 file)."""
    path = tmp_path / "archive-key.txt"
    if not path.exists():
        path.touch(mode=0o600)
        path.write_text(f"# test key\n{_IDENTITY}\n")
    return drp_env(encryption_recipients=KEYS.recipients[0], age_identity_file=path)

POLICY: dict[str, Any] = {
    "version": 1,
    "tables": {
        "public.audit_log": {
            "timestamp_column": "occurred_at", "period": "18 months", "action": "archive-then-delete",
            "overrides": [{"jurisdiction": "IE", "period": "20 months"}, {"tenant": "3", "action": "keep"}],
        },
        "public.clinical_notes": {"timestamp_column": "created_at", "period": "16 months",
                                  "action": "archive-then-delete"},
        "public.payments": {"timestamp_column": "paid_at", "period": "20 months", "action": "delete"},
    },
}


def policies(**changes: Any) -> Policies:
    data = {**POLICY, "tables": {**POLICY["tables"], **changes}}
    return parse_policies(data, source="test-policy")


def content(dsn: str, table: str) -> tuple[int, int]:
    """(rows, sum of row hashes mod 2^64) of a table, by its default checksum method."""
    schema, name = table.split(".", 1)
    with psycopg.connect(dsn) as conn:
        pin_render_settings(conn)
        method = default_method(conn, schema, name)
        rows, total = checksum_of(conn, sql.Identifier(schema, name), method)
    return rows, int(total, 16)


def archive_prefixes(storage: Storage, table: str) -> list[str]:
    return [o.key.rsplit("/", 1)[0] for o in storage.list(f"{PREFIX}/{table}/") if o.key.endswith("/" + MANIFEST_NAME)]


def archived(dsn: str, storage: Storage, table: str) -> tuple[int, int, dict[str, set[Any]]]:
    """(rows, checksum sum, primary keys per archive) of every archive of ``table``, read back from storage.

    Counts each archive's effective rows: its kept rows (kept.json) are checked and taken out.
    Asserts along the way that each archive matches its manifest and no primary key is in two archives.
    """
    schema, name = table.split(".", 1)
    rows, total, seen, keys = 0, 0, set(), {}
    with psycopg.connect(dsn) as conn:
        pin_render_settings(conn)
        for prefix in archive_prefixes(storage, table):
            with fetched(storage, prefix, identities=ID) as (manifest, path), conn.transaction():
                scratch, _ = scratch_copy(conn, sql.Identifier(schema, name), path)
                n, checksum = checksum_of(conn, scratch, manifest.tables[0].method)
                assert (n, checksum) == (manifest.tables[0].rows, manifest.tables[0].checksum), prefix
                pk = manifest.extra["primary_key"]
                kept = read_kept(storage, prefix, pk, identities=ID)
                if kept:
                    drop_kept(conn, scratch, kept, pk, manifest.tables[0].method)
                    n, checksum = checksum_of(conn, scratch, manifest.tables[0].method)
                    assert n == manifest.tables[0].rows - kept.rows
                got = set(conn.execute(sql.SQL("SELECT {} FROM {}").format(
                    sql.SQL(", ").join(map(sql.Identifier, pk)), scratch)).fetchall())
                assert not (got & seen), f"rows of {prefix} are also in another archive"
                seen |= got
                keys[prefix] = got
                rows += n
                total += int(checksum, 16)
    return rows, total % (1 << 64), keys


def assert_union(dsn: str, storage: Storage, table: str, original: tuple[int, int]) -> int:
    """Rows left + rows archived == the original rows, by count and content; returns the archived count."""
    left = content(dsn, table)
    rows, total, _ = archived(dsn, storage, table)
    assert left[0] + rows == original[0]
    assert (left[1] + total) % (1 << 64) == original[1]
    return rows

