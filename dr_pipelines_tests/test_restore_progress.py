"""Restore progress as `drp verify` and `drp restore` draw it: fetch reaches the object's size, restore counts TOC entries."""

from __future__ import annotations

import io
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console

from dr_pipelines.cli import common
from dr_pipelines.core.pg.cluster import LocalCluster
from dr_pipelines.core.restore.logical import RESTORE_PHASE, restore_backup
from dr_pipelines.core.storage.local import LocalStorage
from dr_pipelines_tests.support.verification import Good, entry_for, good_backup, work_dir_under


@pytest.fixture(scope="module")
def good(pg_cluster: LocalCluster, demo_template: str, work_base: Path) -> Iterator[Good]:
    with good_backup(pg_cluster, demo_template, work_base, "progress") as backup:
        yield backup


def test_fetch_reaches_the_total_and_restore_counts_toc_entries(good: Good, pg_cluster: LocalCluster) -> None:
    storage = LocalStorage(good.storage_dir)
    seen: dict[str, list[tuple[int, int | None]]] = {}
    name = f"progress_{uuid.uuid4().hex[:8]}"
    target = pg_cluster.create_database(name, template="template0")
    try:
        result = restore_backup(storage, entry_for(storage, good.manifest.id), good.key.identities, target,
                                work_dir=work_dir_under(good.base),
                                progress=lambda phase, done, total: seen.setdefault(phase, []).append((done, total)))
    finally:
        pg_cluster.drop_database(name)
    database = good.manifest.object("database")
    assert seen["fetch database"][-1] == (database.bytes, database.bytes)  # not frozen at the first 8 kB
    assert set(seen) == {"fetch database", "fetch globals", RESTORE_PHASE}
    assert RESTORE_PHASE == "restore (TOC entries)"
    restore = seen[RESTORE_PHASE]
    assert all(total == result.toc_entries for _, total in restore) and restore[-1][0] == result.toc_entries
    assert result.toc_entries > 100 and [d for d, _ in restore] == sorted(d for d, _ in restore)


def test_the_cli_bar_draws_a_counted_phase_as_counts_and_fetch_as_sizes(monkeypatch: pytest.MonkeyPatch) -> None:
    screen = io.StringIO()
    monkeypatch.setattr(common, "err", Console(file=screen, force_terminal=True, width=200, color_system=None))
    with common.progress_bar() as update:
        update("fetch database", 908_900, 908_900)
        update(RESTORE_PHASE, 403, 403)
    drawn = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "\n", screen.getvalue()).splitlines()  # cursor moves -> lines
    fetch_line = [line for line in drawn if "fetch database" in line][-1]  # the final frame
    restore_line = [line for line in drawn if "restore (" in line][-1]
    assert "908.9/908.9 kB" in fetch_line
    assert "restore (TOC entries)" in restore_line and "403/403" in restore_line and "bytes" not in restore_line
