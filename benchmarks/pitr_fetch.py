"""Benchmark a PITR's recovery: restore_command as a `drp wal fetch` process vs the served stdlib client.

    PYTHONPATH=. .venv/bin/python benchmarks/pitr_fetch.py --segments 12 --rounds 3

One archiving cluster (the tests' WalRig, archiver running) takes a base backup, then writes
--segments segments (a batch of rows, pg_switch_wal, waited for in the archive). Each round
extracts the base into a fresh directory twice and recovers it to `latest`, interleaved, measuring
recover()'s wall time (start to promoted and secured):
- ``process``: the pre-served restore_command, `{ test -f SPOOL/%f && mv …; } || drp wal fetch %f %p
  --spool SPOOL --prefetch 8` run by the postgres OS user (a drp process per spool miss, history probe
  and end-of-archive check);
- ``served``: ``python -I -S client.py fetch SOCK - %f %p`` answered by this process (WalFetcher, same
  spool and prefetch).
Prints JSON with each round and the medians. The machine is shared and loaded: compare within a run.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import psycopg
from _common import make_base_dir

from dr_pipelines.core import context
from dr_pipelines.core.backup.catalog import list_backups
from dr_pipelines.core.backup.physical import run_base_backup
from dr_pipelines.core.pg.cluster import LocalCluster, give_to_server
from dr_pipelines.core.restore.pitr import RecoveryTarget, extract_from_storage, recover
from dr_pipelines.core.restore.targets import base_backups
from dr_pipelines.core.wal.restore import WalFetcher
from dr_pipelines_tests.support.wal import WalRig, wait_archived

PREFETCH = 8


def process_command(rig: WalRig, spool: Path) -> str:
    """restore_command as it was before the restore served fetches (recovery.fetch_command then)."""
    cached = f"{shlex.quote(str(spool))}/%f"
    fetch = (f"env DRP_CONFIG={shlex.quote(str(rig.config))} {shlex.quote(str(rig.drp_for_pg))} wal fetch %f %p "
             f"--spool {shlex.quote(str(spool))} --prefetch {PREFETCH}")
    return f"{{ test -f {cached} && mv -f {cached} %p; }} || {fetch}"


def one(rig: WalRig, base: object, how: str, where: Path) -> float:
    storage, identities = context.storage(rig.settings()), context.identities(rig.settings(), None)
    work = Path(tempfile.mkdtemp(prefix="pf-", dir=where))
    work.chmod(0o755)
    data_dir, spool = work / "data", work / "spool"
    spool.mkdir(mode=0o700)
    data_dir.mkdir(mode=0o700)
    extract_from_storage(storage, identities)(base, data_dir)  # type: ignore[arg-type]
    target = RecoveryTarget.parse(latest=True)
    try:
        if how == "process":
            give_to_server(spool)
            result = recover(data_dir, target, restore_command=process_command(rig, spool),
                             start_lsn=base.start_lsn, keep_running=False)  # type: ignore[attr-defined]
        else:
            fetcher = WalFetcher(storage, identities, data_dir, spool=spool, prefetch=PREFETCH)
            result = recover(data_dir, target, fetcher=fetcher, start_lsn=base.start_lsn,  # type: ignore[attr-defined]
                             keep_running=False)
        return result.seconds
    finally:
        LocalCluster(data_dir=data_dir, port=0).remove()
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--segments", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    root = make_base_dir("drp-pitr-fetch-")
    rig = WalRig.make(root / "rig")
    cluster = LocalCluster.create(rig.root / "pg", settings=rig.cluster_settings("300s"), tcp_trust=True)
    rounds: list[dict[str, float]] = []
    try:
        with rig.archiver():
            run_base_backup(cluster.dsn(), context.storage(rig.settings()), rig.settings().encryption_recipients)
            with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
                conn.execute("CREATE TABLE t (id bigserial PRIMARY KEY, note text)")
                for _ in range(args.segments):
                    conn.execute("INSERT INTO t (note) SELECT md5(g::text) FROM generate_series(1, 1000) g")
                    wait_archived(cluster, conn.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone()[0])
        base = base_backups(list_backups(context.storage(rig.settings())))[-1]
        for i in range(args.rounds):
            order = ["process", "served"] if i % 2 == 0 else ["served", "process"]
            rounds.append({how: round(one(rig, base, how, root), 2) for how in order})
            print(json.dumps(rounds[-1]), file=sys.stderr)
    finally:
        cluster.remove()
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps({"segments": args.segments, "rounds": rounds,
                      "median_s": {h: statistics.median(r[h] for r in rounds) for h in ("process", "served")}},
                     indent=1))


if __name__ == "__main__":
    main()
