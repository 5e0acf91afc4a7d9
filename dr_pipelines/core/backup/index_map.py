"""Which files of a base backup hold which user index: recorded when the backup is taken.

A base backup is a tar of the data directory, and a table's or index's file is named by its
relfilenode only (``base/<database oid>/<relfilenode>``): without the catalogs, nothing says which
file is what. A restore that only *reads* some tables (a tenant restore's past database,
core/restore/partial.py) can leave most index files out, often a third or more of the bytes, if it
knows which files they are; once the cluster runs, the catalogs say it, but then every file is
already on disk. So the base backup records it up front, from the database it was taken through:
one row per index of a user schema (not pg_catalog, pg_toast or information_schema), in
``manifest.extra["index_map"]``.

The map is read just before the backup starts. An index rewritten after that (REINDEX, VACUUM FULL,
CLUSTER, ALTER TABLE) gets a new relfilenode the map does not name: its file, if it is in the tar
at all, is restored (recovery writes new files wholly from WAL anyway). A relfilenode in the map
is never reused by another relation while the backup runs: PostgreSQL refuses a relfilenode whose
file still exists, and finding a free one again would take the OID counter round 2^32. Only the
database the backup was taken through is mapped; every file of any other database is restored.
The map holds catalog names and sizes only, never a row of data.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import psycopg

KEY = "index_map"  # in manifest.extra
COLUMNS = ("oid", "filenode", "schema", "table", "root_schema", "root_table", "first_column", "partial", "method",
           "bytes")
log = logging.getLogger(__name__)

# Every index of a user schema with a file of its own (mapped and partitioned indexes have none), the
# table it is on, that table's partition root (itself when it is not a partition), its first key
# column (NULL for an expression), whether it is partial, its access method and its size as of its last
# VACUUM or ANALYZE (relpages: pg_relation_size would wait behind a lock on the table).
_QUERY = """
SELECT i.indexrelid::bigint, pg_relation_filenode(i.indexrelid)::bigint, tn.nspname, t.relname, rn.nspname, r.relname,
       a.attname, i.indpred IS NOT NULL, am.amname, c.relpages::bigint * current_setting('block_size')::bigint
FROM pg_index i
JOIN pg_class c ON c.oid = i.indexrelid
JOIN pg_am am ON am.oid = c.relam
JOIN pg_class t ON t.oid = i.indrelid
JOIN pg_namespace tn ON tn.oid = t.relnamespace
JOIN pg_class r ON r.oid = coalesce(pg_partition_root(i.indrelid), i.indrelid)
JOIN pg_namespace rn ON rn.oid = r.relnamespace
LEFT JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] AND i.indkey[0] <> 0
WHERE c.relkind = 'i' AND c.relpersistence = 'p'
  AND tn.nspname NOT IN ('pg_catalog', 'pg_toast', 'information_schema') AND tn.nspname NOT LIKE 'pg\\_temp\\_%'
  AND pg_relation_filenode(i.indexrelid) IS NOT NULL
ORDER BY 1
"""


@dataclass(frozen=True)
class MappedIndex:
    oid: int
    filenode: int
    schema: str  # of the table (or partition) the index is on
    table: str
    root_schema: str  # of that table's partition root (the table itself when it is no partition)
    root_table: str
    first_column: str | None  # None: an expression
    partial: bool
    method: str  # btree, hash, gin, ...
    bytes: int  # relpages x block size: an estimate


@dataclass(frozen=True)
class IndexMap:
    database: str
    database_oid: int
    indexes: tuple[MappedIndex, ...]

    def as_extra(self) -> dict[str, Any]:
        return {"database": self.database, "database_oid": self.database_oid, "columns": list(COLUMNS),
                "indexes": [[getattr(ix, c) for c in COLUMNS] for ix in self.indexes]}

    @classmethod
    def from_extra(cls, extra: dict[str, Any]) -> IndexMap | None:
        """The map a manifest recorded, or None (backups taken before maps were recorded, or mapping failed)."""
        body = extra.get(KEY)
        if not body or body.get("columns") != list(COLUMNS):
            return None
        return cls(body["database"], int(body["database_oid"]),
                   tuple(MappedIndex(*row) for row in body["indexes"]))


def record_index_map(conn: psycopg.Connection) -> IndexMap | None:
    """The map of ``conn``'s database, or None when it cannot be read (the backup goes on: restores then
    extract every file, as for a backup without a map)."""
    try:
        database, oid = conn.execute(
            "SELECT current_database(), oid::bigint FROM pg_database WHERE datname = current_database()").fetchone()
        rows = conn.execute(_QUERY).fetchall()
    except psycopg.Error as exc:
        log.warning("base backup: no index map recorded (%s); restores will extract every file", exc)
        return None
    return IndexMap(database, oid, tuple(MappedIndex(*row) for row in rows))
