"""Under pgbench write load (TPC-B + ledger inserts) with the documented archiving settings, the RPO
measured from the archive every second stays ≤ 60 s, and a PITR to a time in the middle of the load
restores exactly the ledger rows committed before it (support/pitr_load.py explains both methods).

The short version (45 s of load, local storage); benchmarks/pitr_load.py runs 5 minutes locally and on S3.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from dr_pipelines_tests.support.pitr_load import assert_exact, load_cluster, pitr_to_mark, run_load
from dr_pipelines_tests.support.wal import WalRig

LOAD_SECONDS = 45


@pytest.mark.heavy(55)
def test_rpo_under_write_load_and_pitr_to_the_middle_is_exact(work_base: Path) -> None:
    rig = WalRig.make(work_base / f"pitr-load-{uuid.uuid4().hex[:8]}")
    with load_cluster(rig) as cluster:
        run = run_load(rig, cluster, LOAD_SECONDS, work=rig.root)
        summary = run.summary()
        assert summary["samples"] >= LOAD_SECONDS - 5, summary
        assert summary["rpo_s"]["max"] <= 60, summary
        assert run.mark is not None and len(run.mark.ids) > 100, summary  # the load reached the ledger
        result = pitr_to_mark(rig, cluster, run.mark, rig.root)
        assert result["report"]["timeline"] == 2
        assert_exact(result, run.mark)
