"""WAL retention follows backup retention, timeline-aware (issue 13, item 5), on a real archive with two timelines.

One archiving cluster (timeline 1) with a pinned old base backup B1 and a newer B2; B2 restored and promoted
while archiving into the same repository (timeline 2, as after a failover); B3 taken on timeline 2. Backup
retention `last=1` then keeps B1 (pinned) and B3: only timeline-1 WAL older than B1 may go, and B1 must still
recover. A gap in the needed WAL refuses the prune until it is explicitly accepted (an event is recorded).
Unpinned, B1 goes too, and with it all of timeline 1 and timeline 2's WAL before B3; the history files stay.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import psycopg
import pytest

from dr_pipelines.core import context
from dr_pipelines.core.backup.catalog import list_backups, pin_backup, unpin_backup
from dr_pipelines.core.backup.gfs import RetentionPolicy
from dr_pipelines.core.backup.physical import run_base_backup
from dr_pipelines.core.backup.prune import prune_backups
from dr_pipelines.core.manifest import Manifest
from dr_pipelines.core.pg.cluster import LocalCluster
from dr_pipelines.core.restore.physical import extract_base_backup
from dr_pipelines.core.storage import Storage
from dr_pipelines.core.storage.base import ObjectInfo
from dr_pipelines.core.storage.local import LocalStorage
from dr_pipelines.core.wal.names import (
    EVENTS_PREFIX,
    PREFIX,
    SIDECAR_SUFFIX,
    Segment,
    is_history,
    name_of_key,
    sidecar_key,
)
from dr_pipelines.core.wal.retention import WalRetentionRefused, prune_wal
from dr_pipelines.core.wal.verify import verify_archive
from dr_pipelines_tests.support.procs import wait_for
from dr_pipelines_tests.support.wal import WalRig, in_recovery, start_recovering, switch_wal, wait_archived

LAST_ONE = RetentionPolicy(keep_last=1)


@pytest.fixture(scope="module")
def rig(work_base: Path) -> Iterator[WalRig]:
    rig = WalRig.make(work_base / f"walret-{uuid.uuid4().hex[:8]}")
    with rig.archiver("--read-ahead", "4"):
        yield rig


@pytest.fixture(scope="module")
def storage(rig: WalRig) -> Storage:
    return context.storage(rig.settings())


def _base(rig: WalRig, storage: Storage, cluster: LocalCluster) -> Manifest:
    manifest = run_base_backup(cluster.dsn(), storage, rig.settings().encryption_recipients)
    wait_for(lambda: next(e for e in list_backups(storage) if e.id == manifest.id).wal_archived, timeout=60,
             what=f"WAL of {manifest.id} archived", interval=0.3)
    return manifest


def _wal_names(storage: Storage) -> set[str]:
    return {n for n in (name_of_key(o.key) for o in storage.list(PREFIX + "/")) if n}


def _number(name: str) -> int:
    return Segment.parse(name[:24]).number()


def _rows(cluster: LocalCluster) -> int:
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        return conn.execute("SELECT count(*) FROM wal_load").fetchone()[0]


@pytest.fixture(scope="module")
def history(rig: WalRig, storage: Storage) -> Iterator[dict]:
    """B1 (pinned) and B2 on timeline 1, B3 on timeline 2; the row count each one holds."""
    primary = LocalCluster.create(rig.root / "pg1", settings=rig.cluster_settings("60s"), tcp_trust=True)
    promoted = None
    try:
        switch_wal(primary)
        b1 = _base(rig, storage, primary)
        b1_rows = _rows(primary)
        pin_backup(storage, b1.id, reason="legal hold, test", by="test")
        for _ in range(2):
            switch_wal(primary)
        b2 = _base(rig, storage, primary)
        data_dir = rig.root / "pg2"
        extract_base_backup(storage, next(e for e in list_backups(storage) if e.id == b2.id),
                            context.identities(rig.settings()), data_dir)
        promoted = start_recovering(rig, data_dir, archive=True)  # a failover: timeline 2, archiving here
        wait_for(lambda: not in_recovery(promoted), timeout=60, what="promotion", interval=0.3)
        for _ in range(2):
            wait_archived(promoted, switch_wal(promoted))
        b3 = _base(rig, storage, promoted)
        for _ in range(2):
            wait_archived(promoted, switch_wal(promoted))
        wait_archived(primary, switch_wal(primary))  # the old primary goes on writing timeline 1
        assert b3.extra["timeline"] == 2 and b1.extra["timeline"] == 1
        yield {"b1": b1, "b1_rows": b1_rows, "b2": b2, "b3": b3}
    finally:
        for c in (promoted, primary):
            if c is not None:
                c.remove()


class CountingStorage(LocalStorage):
    """The real local storage, counting what is read from it: every GET (open) by key, every listing."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.reads: Counter[str] = Counter()
        self.listings: list[str] = []

    def open(self, key: str) -> BinaryIO:
        self.reads[key] += 1
        return super().open(key)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        self.listings.append(prefix)
        return super().list(prefix)


def test_prune_lists_the_archive_once_and_reads_each_sidecar_once(rig: WalRig, storage: Storage,
                                                                  history: dict) -> None:
    """Continuity and the plan come from one scan (was: two listings, every history sidecar read twice)."""
    counting = CountingStorage(rig.storage_dir)
    entries = list_backups(storage)
    result = prune_wal(counting, entries, dry_run=True)
    sidecars = sorted(o.key for o in storage.list(PREFIX + "/") if o.key.endswith(SIDECAR_SUFFIX) and name_of_key(o.key))
    assert result.plan.delete and result.plan.report is not None and result.plan.report.ok
    assert counting.listings == [PREFIX + "/"]
    assert sorted(counting.reads) == sidecars and set(counting.reads.values()) == {1}, counting.reads.most_common(3)


def _events(storage: Storage) -> list[str]:
    return [o.key for o in storage.list(EVENTS_PREFIX)]


def test_a_dry_run_shows_that_a_gap_would_refuse_the_prune(rig: WalRig, storage: Storage, history: dict) -> None:
    """Same decision as the real run: exit 1, the gap named, --accept-gaps as the way on; with it, exit 0 and
    the warning that the real run records the decision. Nothing deleted, no event recorded by a dry run."""
    before, events = _wal_names(storage), _events(storage)
    victim = sorted(n for n in before if n.startswith("00000002") and len(n) == 24
                    and _number(n) > _number(history["b3"].extra["wal_start"]))[0]
    saved = storage.get_bytes(sidecar_key(victim))
    storage.delete(sidecar_key(victim))
    try:
        dry = rig.drp("wal", "prune", "--dry-run")
        assert dry.returncode == 1, (dry.stdout, dry.stderr)
        assert "dry run: a real prune would refuse" in dry.stderr and victim in dry.stderr, dry.stderr
        assert "--accept-gaps" in dry.stderr and "Traceback" not in dry.stderr
        assert "would delete" in dry.stdout and "but:" in dry.stdout, dry.stdout
        real = rig.drp("wal", "prune")
        assert real.returncode == 1 and victim in real.stderr and "no WAL was deleted" in real.stderr, real.stderr
        accepted = rig.drp("wal", "prune", "--dry-run", "--accept-gaps", "--json")
        assert accepted.returncode == 0, accepted.stderr
        body = json.loads(accepted.stdout)
        assert victim in body["accepted_problems"] and body["deleted"] == [] and body["event"] is None
        assert body["delete"]
        assert _wal_names(storage) == before and _events(storage) == events
    finally:
        storage.put_bytes(sidecar_key(victim), saved)


def test_wal_goes_only_when_no_retained_base_backup_can_reach_it(rig: WalRig, storage: Storage,
                                                                 history: dict) -> None:
    b1, b3 = history["b1"], history["b3"]
    before = _wal_names(storage)
    assert "00000002.history" in before and any(n.startswith("00000002") and len(n) == 24 for n in before)
    older_than_b1 = {n for n in before if not is_history(n) and n.startswith("00000001")
                     and _number(n) < _number(b1.extra["wal_start"])}
    assert older_than_b1, "the cluster's WAL from before B1 must exist for this test to mean anything"

    planned = prune_backups(storage, LAST_ONE, dry_run=True)
    assert planned.deleted == [] and planned.wal is not None and set(planned.wal.plan.delete) == older_than_b1
    assert _wal_names(storage) == before

    # A needed timeline-2 segment lost: backups are pruned, WAL is not, and the refusal names the segment.
    victim = sorted(n for n in before if n.startswith("00000002") and len(n) == 24
                    and _number(n) > _number(b3.extra["wal_start"]))[0]
    saved = storage.get_bytes(sidecar_key(victim))
    storage.delete(sidecar_key(victim))
    try:
        pruned = prune_backups(storage, LAST_ONE, dry_run=False)
        assert pruned.deleted == [history["b2"].id]
        assert pruned.wal_refused and victim in pruned.wal_refused, pruned.wal_refused
        assert _wal_names(storage) == before
        with pytest.raises(WalRetentionRefused, match="--accept-gaps"):
            prune_wal(storage, list_backups(storage), dry_run=False)
        accepted = prune_wal(storage, list_backups(storage), dry_run=False, accept_problems=True)
        assert set(accepted.deleted) == older_than_b1
        event = json.loads(storage.get_bytes(accepted.event))
        assert victim in event["problems"] and event["deleting"] == len(older_than_b1)
    finally:
        storage.put_bytes(sidecar_key(victim), saved)
    assert _wal_names(storage) == before - older_than_b1

    # The pinned B1 still recovers, across the timeline switch kept for it.
    assert verify_archive(storage, start=b1.extra["wal_start"], read=False).ok
    data_dir = rig.root / f"b1-{uuid.uuid4().hex[:6]}"
    extract_base_backup(storage, next(e for e in list_backups(storage) if e.id == b1.id),
                        context.identities(rig.settings()), data_dir)
    restored = start_recovering(rig, data_dir)
    try:
        wait_for(lambda: not in_recovery(restored), timeout=60, what="B1 recovered", interval=0.3)
        assert _rows(restored) == history["b1_rows"]
    finally:
        restored.remove()


def test_unpinned_old_backup_takes_timeline_1_with_it_but_never_history(rig: WalRig, storage: Storage,
                                                                       history: dict) -> None:
    b3 = history["b3"]
    unpin_backup(storage, history["b1"].id)
    before = _wal_names(storage)
    keep = {n for n in before if is_history(n)
            or (n.startswith("00000002") and _number(n) >= _number(b3.extra["wal_start"]))}
    result = rig.drp("backup", "prune", "--policy", "last=1", "--json")
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    assert body["deleted"] == [history["b1"].id] and body["wal_refused"] is None
    assert set(body["wal"]["deleted"]) == before - keep
    assert _wal_names(storage) == keep
    assert [e.id for e in list_backups(storage)] == [b3.id]
    assert verify_archive(storage, start=b3.extra["wal_start"], read=False).ok
