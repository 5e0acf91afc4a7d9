"""RPO under sustained write load and an exact PITR to its middle, on local storage and on S3 (moto).

    PYTHONPATH=. .venv/bin/python benchmarks/pitr_load.py [--minutes 5] [--storage local s3] [--rate 200]

For each storage: an archiving cluster with the documented settings (archive_timeout = 30s, the
archive_command `drp wal archive-command` prints, `drp wal archiver --switch-after 30`), pgbench
tables (-s --scale) and the ledger, a base backup; then pgbench (TPC-B + ledger inserts, --clients,
-R --rate) for --minutes, the RPO sampled every second from the archive; then `drp restore --pitr
--time T` to a T marked in the middle of the load, the restored ledger compared with the rows
committed before T. Methods: dr_pipelines_tests/support/pitr_load.py. The short version runs in
the suite (dr_pipelines_tests/test_pitr_load.py). Prints JSON, with the load average at the start,
the mark and the end of the load, and during the restore.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from _common import make_base_dir

from dr_pipelines_tests.support.pitr_load import assert_exact, load_cluster, pitr_to_mark, run_load
from dr_pipelines_tests.support.s3 import run_moto_server
from dr_pipelines_tests.support.wal import WalRig


def one(base: Path, kind: str, args: argparse.Namespace, stack: ExitStack) -> dict[str, Any]:
    storage = None
    if kind == "s3":
        moto = stack.enter_context(run_moto_server())
        storage = {"storage_url": f"s3://{moto.create_bucket()}/clinic-a", "s3_endpoint_url": moto.endpoint_url,
                   "s3_region": moto.region, "s3_access_key_id": moto.access_key,
                   "s3_secret_access_key": moto.secret_key}
    rig = WalRig.make(base / kind, storage=storage)
    with load_cluster(rig, scale=args.scale) as cluster:
        run = run_load(rig, cluster, int(args.minutes * 60), clients=args.clients, rate=args.rate, work=rig.root)
        print(f"{kind}: load done {run.summary()}", file=sys.stderr)
        assert run.mark is not None
        result = pitr_to_mark(rig, cluster, run.mark, rig.root)
        load_after = os.getloadavg()
        assert_exact(result, run.mark)
    report = result["report"]
    return {**run.summary(), "rpo_target_met": run.summary()["rpo_s"]["max"] <= 60,
            "pitr": {"target_time": run.mark.time.isoformat(), "marked_at_s": run.mark.elapsed_s,
                     "rows_before_t": len(run.mark.ids), "rows_total": result["source_rows_total"],
                     "restored_rows": len(result["restored_rows"]), "exact": True,
                     "replayed_to": report["replayed_to"], "last_commit_time": report["last_commit_time"],
                     "restore_seconds": report["seconds"], "cli_seconds": result["cli_seconds"],
                     "load_average_after": [round(x, 2) for x in load_after]}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=5)
    parser.add_argument("--storage", nargs="+", choices=["local", "s3"], default=["local", "s3"])
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--rate", type=int, default=200, help="pgbench -R: transactions/s over both scripts")
    parser.add_argument("--scale", type=int, default=1)
    args = parser.parse_args()
    base = make_base_dir("drp-bench-pitr-load-")
    results: dict[str, Any] = {"minutes": args.minutes, "clients": args.clients, "rate": args.rate,
                               "scale": args.scale, "cpus": os.cpu_count()}
    try:
        for kind in args.storage:
            with ExitStack() as stack:
                results[kind] = one(base, kind, args, stack)
            print(json.dumps({kind: results[kind]}), file=sys.stderr)
        print(json.dumps(results, indent=2))
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
