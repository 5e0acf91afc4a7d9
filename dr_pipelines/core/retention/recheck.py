"""After a retention run: do its journal rows balance, and do its archives still match storage?

The archival assets attach these as checks to each materialization; the numbers come from
the journal (archived - kept == deleted) and from each archive read back from storage
(manifest rows and checksum equal the journal's, and a deleted segment's kept.json lists
exactly the rows it kept).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from dr_pipelines.core.manifest import ManifestError
from dr_pipelines.core.pg.connect import connect
from dr_pipelines.core.retention.journal import Balance, Segment, balance, segments
from dr_pipelines.core.retention.kept import read_kept
from dr_pipelines.core.retention.segment import ArchiveError, fetched
from dr_pipelines.core.storage import Storage


@dataclass(frozen=True)
class RunCheck:
    segments: int  # archives the run wrote or touched
    balance: Balance  # archived, kept and deleted rows of those segments
    failed: list[str]  # ids of segments whose archive no longer matches the journal


def recheck_run(dsn: str, storage: Storage, table: str, run_id: str, identities: Sequence[object]) -> RunCheck:
    """The journal balance of ``run_id``'s segments of ``table`` and the ids of archives that fail to read back."""
    with connect(dsn) as conn:
        segs = segments(conn, table=table, run_id=run_id)
    return RunCheck(len(segs), balance(segs), [x.id for x in segs if x.state != "abandoned"
                                                and not _archive_matches(storage, x, identities)])


def _archive_matches(storage: Storage, x: Segment, identities: Sequence[object]) -> bool:
    try:
        with fetched(storage, x.prefix, identities=identities) as (manifest, _path):
            listed = read_kept(storage, x.prefix, manifest.extra["primary_key"], identities=identities)
            return not (manifest.tables[0].rows != x.rows or manifest.tables[0].checksum != x.checksum or (
                x.state == "deleted" and (listed.rows if listed else 0) != x.kept_rows))
    except (ArchiveError, ManifestError):
        return False
