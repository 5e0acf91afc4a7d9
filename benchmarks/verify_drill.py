"""Verification restore and DR drill time on the demo database, split into cluster, fetch, restore and checks.

Usage: python benchmarks/verify_drill.py [--dsn DSN | --clinics N --scale S] [--repeat N]
Prints JSON on stdout (numbers for docs/benchmarks.md) and a summary on stderr. Without
--dsn it creates a throwaway cluster, seeds the demo database, and removes it at the end.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from _common import CLUSTER_SETTINGS, machine_info, make_base_dir, stats
from pyrage import x25519

from dr_pipelines.core.backup.catalog import find_backup
from dr_pipelines.core.backup.logical import run_logical_backup
from dr_pipelines.core.pg.cluster import LocalCluster
from dr_pipelines.core.storage import open_storage
from dr_pipelines.core.verify.checks import load_probes
from dr_pipelines.core.verify.drill import run_drill
from dr_pipelines.core.verify.restore import verify_backup
from dr_pipelines.demo import generate as gen

PROBES = Path(__file__).resolve().parents[1] / "dr_pipelines" / "demo" / "probes.yaml"


def split(report, total: float) -> dict:  # type: ignore[no-untyped-def]
    """Where the time went; 'cluster' is initdb, start, stop and removal of the throwaway cluster."""
    parts = {"fetch": report.fetch_seconds, "restore": report.restore_seconds, "checks": report.checks_seconds}
    parts["cluster_and_other"] = total - sum(parts.values())
    return {k: round(v, 2) for k, v in parts.items()} | {
        "total": round(total, 2), "per_check": {c.name: c.seconds for c in report.checks}, "passed": report.passed}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", help="benchmark an existing database instead of seeding one")
    parser.add_argument("--clinics", type=int, default=gen.BENCHMARK_CLINICS)
    parser.add_argument("--scale", type=float, default=gen.BENCHMARK_SCALE)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--base-dir", default="/var/tmp")
    args = parser.parse_args()

    base = make_base_dir("drp-bench-verify-", args.base_dir)
    cluster = None
    try:
        dsn = args.dsn
        if dsn is None:
            cluster = LocalCluster.create(base / "source", settings=CLUSTER_SETTINGS)
            dsn = cluster.create_database("clinic")
            gen.seed_demo(dsn, clinics=args.clinics, scale=args.scale)
        identity = x25519.Identity.generate()
        storage = open_storage(str(base / "storage"))
        run_logical_backup(dsn, storage, [str(identity.to_public())])
        entry = find_backup(storage, None)
        probes = load_probes(PROBES)
        verifications, drills = [], []
        for _ in range(args.repeat):
            t0 = time.monotonic()
            report = verify_backup(storage, entry, [identity], base / "work", probes=probes, record=False)
            verifications.append(split(report, time.monotonic() - t0))
            t0 = time.monotonic()
            drill = run_drill(storage, [identity], base / "work", rto_target_minutes=240, rpo_target_minutes=60,
                              probes=probes)
            assert drill.verification is not None
            drills.append(split(drill.verification, time.monotonic() - t0) | {"rto_seconds": round(drill.rto_seconds, 2)})
        result = {
            "benchmark": "verify_drill",
            "database_size_bytes": entry.manifest.source["database_size_bytes"],  # type: ignore[union-attr]
            "stored_bytes": entry.stored_bytes,
            "verification": {"runs": verifications, "total": stats([v["total"] for v in verifications], 2)},
            "drill": {"runs": drills, "rto": stats([d["rto_seconds"] for d in drills], 2)},
            "machine": machine_info(dsn),
        }
        json.dump(result, sys.stdout, indent=2)
        sys.stdout.write("\n")
        v, d = verifications[-1], drills[-1]
        print(f"verification {v['total']}s (fetch {v['fetch']}, restore {v['restore']}, checks {v['checks']}, "
              f"cluster {v['cluster_and_other']}); drill RTO {d['rto_seconds']}s", file=sys.stderr)
        return 0
    finally:
        if cluster is not None:
            cluster.remove()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
