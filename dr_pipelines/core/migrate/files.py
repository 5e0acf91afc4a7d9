"""Migration files on disk.

Convention: ``NNNN_description.sql`` is the up script of version NNNN (4+ digits, lower-case
description); an optional ``NNNN_description.down.sql`` undoes it. A first line
``-- drp:no-transaction`` runs the script (up or down) statement by statement outside a
transaction (needed for CREATE INDEX CONCURRENTLY). Versions need not be contiguous but must
only grow: a new file older than the newest applied version is refused.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from dr_pipelines.core.errors import ConfigError, MigrationError
from dr_pipelines.core.migrate.fingerprint import Statement, fingerprint, split_statements

_NAME = re.compile(r"^(?P<version>\d{4,})_(?P<description>[a-z0-9_]+)\.sql$")
_DOWN = re.compile(r"^(?P<version>\d{4,})_(?P<description>[a-z0-9_]+)\.down\.sql$")
NO_TRANSACTION_MARK = "-- drp:no-transaction"


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    path: Path
    sql: str
    down_path: Path | None = None

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()

    @cached_property
    def fingerprint(self) -> str:
        """Formatting-insensitive (see fingerprint.py): an edit that changes only layout keeps it."""
        return fingerprint(self.sql, self.path.name)

    @property
    def transactional(self) -> bool:
        return is_transactional(self.sql)

    @property
    def statements(self) -> list[Statement]:
        return split_statements(self.sql, self.path.name)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def down_sql(self) -> str | None:
        return self.down_path.read_text(encoding="utf-8") if self.down_path else None


def is_transactional(sql: str) -> bool:
    """False when the script's first line is ``-- drp:no-transaction``."""
    first = sql.lstrip().splitlines()[0] if sql.strip() else ""
    return first.strip().lower() != NO_TRANSACTION_MARK


def configured_migrations(configured: Path | None, directory: Path | None = None) -> list[Migration]:
    """The migrations of ``directory`` (e.g. --dir), else of the configured migrations_dir.

    There is no default: a deployment's migrations are its own, and falling back to the demo's
    would show (or apply) another schema's history. Unset is refused with the fix.
    """
    chosen = directory or configured
    if chosen is None:
        raise ConfigError("no migrations directory configured",
                          fix="pass --dir PATH, or set DRP_MIGRATIONS_DIR (or migrations_dir in the settings file)")
    return discover(chosen)


def discover(directory: Path | str) -> list[Migration]:
    """All migrations in directory, ordered by version; malformed names and duplicates refused."""
    directory = Path(directory)
    if not directory.is_dir():
        raise MigrationError(f"migrations directory {directory} does not exist", fix="create it or correct the path")
    ups: dict[int, Path] = {}
    downs: dict[int, Path] = {}
    for path in sorted(directory.iterdir()):
        if path.suffix != ".sql":
            continue
        down, up = _DOWN.match(path.name), _NAME.match(path.name)
        match, bucket = (down, downs) if down else (up, ups)
        if not match:
            raise MigrationError(
                f"migration file name {path.name!r} does not follow NNNN_description.sql",
                fix="rename it, e.g. 0007_add_invoice_index.sql (lower case, digits, underscores)",
            )
        version = int(match["version"])
        if version in bucket:
            raise MigrationError(
                f"two migration files share version {version}: {bucket[version].name} and {path.name}",
                fix="give one of them the next free version number",
            )
        bucket[version] = path
    orphans = sorted(set(downs) - set(ups))
    if orphans:
        raise MigrationError(f"down scripts without an up script: versions {orphans}", fix="remove or rename them")
    out = []
    for version in sorted(ups):
        path = ups[version]
        description = _NAME.match(path.name)["description"]  # type: ignore[index]
        out.append(Migration(version, description, path, path.read_text(encoding="utf-8"), downs.get(version)))
    return out
