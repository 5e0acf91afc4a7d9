"""A past database without the index files its reader never uses: a base backup extracted in part.

A tenant restore recovers a whole cluster only to read one clinic's rows from some tables. Writing
the data directory is most of that recovery's time, and indexes are a large share of the bytes (39%
of the 1 GB demo, most of them audit_log's four per partition) of which the read uses one per table
at most. With the base backup's index map (core/backup/index_map.py) those files are created empty
instead (``PartialPlan.leaves_out``, SafeUntar's ``leave_out``), and once the cluster is recovered
and promoted they are marked unusable (``disable_left_out``).

Why the result reads exactly what a whole restore would:

- Only files the map names as an index of the database being read are left out (main fork
  segments, ``_fsm``, ``_vm``; never an ``_init`` fork). Tables, TOAST tables and their indexes,
  catalogs, other databases and any file the map does not name are restored whole.
- WAL replay never needs a left-out page's old content: with full_page_writes on (PostgreSQL's
  default, and forced on while a backup runs) the first change to any page after the backup's
  checkpoint carries the whole page, and later changes apply on top of it; replay extends the
  empty file as it writes. Were a change to need a page that is not there (a source running with
  full_page_writes off), replay stops with "WAL contains references to invalid pages" or a corrupt
  page and the restore fails: nothing is read from it.
- After promotion each left-out index is marked invalid and not ready (``pg_index.indisvalid``,
  ``indisready`` false: the state of a CREATE INDEX CONCURRENTLY that failed). The planner skips
  invalid indexes before it opens anything of theirs, no write maintains an index that is not ready,
  and VACUUM passes it by. Queries read the tables and the kept indexes only. An index rewritten
  after the backup (REINDEX, TRUNCATE, VACUUM FULL) has a new file, restored whole from WAL, and is
  left valid: it is matched by OID *and* file node.
- Kept, per table or partition: the smallest non-partial btree index whose first column is the one
  the reader filters or joins that table on (``reads``); every other read is a sequential scan.

The cluster is promoted (never paused as a read-only standby) because marking indexes is a write.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import psycopg

from dr_pipelines.core.backup.index_map import IndexMap

# A relation file of a database in the default tablespace: base/<database oid>/<filenode>[_fsm|_vm][.segment]
_FILE = re.compile(r"base/([0-9]+)/([0-9]+)(?:_(?:fsm|vm))?(?:\.[0-9]+)?")
Reads = Mapping[tuple[str, str], str]  # (schema, table) -> the column its reads filter or join on


@dataclass(frozen=True)
class PartialPlan:
    database_oid: int
    left_out: Mapping[int, int]  # file node -> index OID, of the indexes left out
    kept: tuple[str, ...]  # "schema.table" of the tables (or partitions) an index was kept for
    left_out_bytes: int  # their size when the backup was taken (relpages)

    def leaves_out(self, name: str) -> bool:
        """Is tar member ``name`` (relative, "/"-separated) one of the left-out indexes' files?"""
        found = _FILE.fullmatch(name.removeprefix("./"))
        return (found is not None and int(found.group(1)) == self.database_oid
                and int(found.group(2)) in self.left_out)

    def describe(self) -> str:
        return (f"{len(self.left_out)} index(es) left out of the extraction ({self.left_out_bytes / 2**20:.0f} MB "
                f"at backup time), {len(self.kept)} kept for the tables read")


def plan_partial(index_map: IndexMap | None, database: str, reads: Reads) -> PartialPlan | None:
    """What to leave out of ``database`` for a reader of ``reads``; None when the backup maps no index of it."""
    if index_map is None or index_map.database != database:
        return None
    best: dict[tuple[str, str], tuple[int, int]] = {}  # table -> (bytes, oid) of the index kept for it
    for ix in index_map.indexes:
        column = reads.get((ix.root_schema, ix.root_table))
        if column is not None and ix.first_column == column and not ix.partial and ix.method == "btree":
            table = (ix.schema, ix.table)
            if table not in best or (ix.bytes, ix.oid) < best[table]:
                best[table] = (ix.bytes, ix.oid)
    kept = {oid for _, oid in best.values()}
    left = [ix for ix in index_map.indexes if ix.oid not in kept]
    return PartialPlan(index_map.database_oid, {ix.filenode: ix.oid for ix in left},
                       tuple(sorted(f"{s}.{t}" for s, t in best)), sum(ix.bytes for ix in left))


def disable_left_out(conn: psycopg.Connection, plan: PartialPlan) -> int:
    """Mark the left-out indexes invalid and not ready in the recovered (promoted) database, as a superuser:
    those whose file node is still the one left out. The number marked."""
    if not plan.left_out:
        return 0
    with conn.transaction():
        return conn.execute(
            "UPDATE pg_catalog.pg_index SET indisvalid = false, indisready = false "
            "FROM unnest(%s::oid[], %s::oid[]) AS l(oid, filenode) "
            "WHERE indexrelid = l.oid AND pg_relation_filenode(indexrelid) = l.filenode",
            (list(plan.left_out.values()), list(plan.left_out.keys()))).rowcount
