"""What a restore refuses before it writes, and how it checks what it wrote.

Refused: a non-empty target (without --force), the backup's own source database (without
--overwrite-source), and a --schema/--table selection that names nothing in the backup.
Checked after pg_restore: every restored table's row count and checksum against the manifest.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Protocol

import psycopg

from dr_pipelines.core.errors import DrpError
from dr_pipelines.core.manifest import Manifest
from dr_pipelines.core.pg.connect import describe
from dr_pipelines.core.verify.checks import table_checks


class Selection(Protocol):
    """What the guards read of RestoreOptions (core/restore/logical.py imports this module, not the reverse)."""

    @property
    def schemas(self) -> Sequence[str]: ...

    @property
    def tables(self) -> Sequence[str]: ...


class RestoreError(DrpError):
    """pg_restore failed, or the target is not fit to restore into."""


class RestoreCheckError(RestoreError):
    """pg_restore succeeded but the restored tables differ from what the manifest recorded."""



def refuse_non_empty(conn: psycopg.Connection, dsn: str) -> None:
    count = conn.execute(
        "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')"
        " AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%'"
    ).fetchone()[0]
    if count:
        raise RestoreError(
            f"target database {describe(dsn)} is not empty ({count} relations)",
            fix="restore into a new database or a fresh cluster (--new-cluster), or pass --force to overwrite",
        )


def refuse_source(conn: psycopg.Connection, system_identifier: str | None, dsn: str, manifest: Manifest) -> None:
    """Restoring over the backup's own source database rolls it back: everything written since is lost."""
    source = manifest.source
    database = conn.execute("SELECT current_database()").fetchone()[0]
    if system_identifier and source.get("system_identifier"):
        same = (system_identifier, database) == (str(source["system_identifier"]), source.get("database"))
    else:  # a role that may not read pg_control_system(): fall back to the address
        same = describe(dsn) == source.get("server")
    if same:
        since = manifest.extra.get("snapshot_at") or manifest.finished_at.isoformat()
        raise RestoreError(
            f"target {describe(dsn)} is the database this backup was taken from (system identifier "
            f"{system_identifier or 'unreadable'}, database {database}): restoring over it would replace its "
            f"contents with the backup's, losing every change made since the restore point {since}",
            fix="restore into a side database or a new cluster (--new-cluster) and copy back what is needed; "
                "only to roll the whole source database back, add --overwrite-source",
        )


_RELATION_KINDS = ("TABLE", "VIEW", "MATERIALIZED VIEW", "SEQUENCE", "FOREIGN TABLE")


def refuse_unmatched_selection(toc: str, options: Selection, backup_id: str) -> None:
    """A --table or --schema naming nothing in the backup would restore nothing and still 'succeed'."""
    lines = [line for line in toc.splitlines() if line and not line.startswith(";")]
    kinds = "|".join(re.escape(k) for k in _RELATION_KINDS)
    schemas = "|".join(re.escape(s) for s in options.schemas) or ".+"
    for schema in options.schemas:
        if not any(re.match(rf"^\d+; \d+ \d+ SCHEMA - {re.escape(schema)} ", line) or
                   re.match(rf"^\d+; \d+ \d+ (?:{kinds}) {re.escape(schema)} ", line) for line in lines):
            raise RestoreError(f"backup {backup_id} has no schema {schema!r}",
                               fix="check the name (case matters) with `drp restore ID --list`")
    for table in options.tables:
        pattern = re.compile(rf"^\d+; \d+ \d+ (?:{kinds}) (?:{schemas}) {re.escape(table)} \S+$")
        if not any(pattern.match(line) for line in lines):
            where = f" in schema {', '.join(options.schemas)}" if options.schemas else ""
            raise RestoreError(f"backup {backup_id} has no table {table!r}{where}",
                               fix="give the table's exact name without schema (case matters; see "
                                   "`drp restore ID --list`), and its schema with --schema")


def _selected_tables(manifest: Manifest, options: Selection) -> set[str] | None:
    """The manifest's tables that a --schema/--table selection restores (None: all of them)."""
    if not (options.schemas or options.tables):
        return None
    selected = set()
    for t in manifest.tables:
        schema, _, name = t.name.partition(".")
        if (not options.schemas or schema in options.schemas) and (not options.tables or name in options.tables):
            selected.add(t.name)
    return selected


def check_restored(target_dsn: str, manifest: Manifest, options: Selection) -> int:
    """Row counts and checksums of every restored table against the manifest; raises naming the tables that differ."""
    selected = _selected_tables(manifest, options)
    results = table_checks(target_dsn, manifest, selected)
    failed = [r for r in results if not r.passed]
    if failed:
        raise RestoreCheckError(
            f"restore into {describe(target_dsn)} does not match backup {manifest.id}: "
            + " | ".join(r.detail for r in failed),
            fix="the restored data differs from what was backed up: restore another backup (`drp backup list`), "
                "or pass --no-check to keep this restore as it is",
        )
    return len(manifest.tables) if selected is None else len(selected)
