"""Benchmark data retention: archive + verify + delete of >= 1 M audit_log rows, batch DELETE vs partition drop.

    .venv/bin/python benchmarks/archival.py                       # the ~1 GB demo (BENCHMARK_CLINICS x BENCHMARK_SCALE)
    .venv/bin/python benchmarks/archival.py --scale 2 --clinics 3 # a quick try

One throwaway cluster; the demo is seeded once into a template, then copied for each
strategy so both start from the same rows. Each strategy runs ``drp retention apply`` as a
child process under GNU time (its own peak RSS), with the policy ``public.audit_log:
archive-then-delete after --period`` as of the data's "today" (2025-11-01):

- ``batches``: ``--no-partition-drop``: rows deleted in primary-key batches of --batch-size;
- ``partitions``: whole expired monthly partitions detached and dropped.

Reported per strategy: rows archived and removed, wall seconds, rows/s, WAL generated
(pg_current_wal_lsn before/after), archive bytes, batches, the longest batch (the longest
time any one transaction held its locks: row locks for a batch, ACCESS EXCLUSIVE on the
partition for a drop), peak RSS, and the union check (rows left + archived == before).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import yaml
from _common import CLUSTER_SETTINGS, Launch, machine_info, make_base_dir

from dr_pipelines.core.pg.cluster import LocalCluster
from dr_pipelines.demo import generate as gen

AS_OF = "2025-11-01T00:00:00+00:00"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clinics", type=int, default=gen.BENCHMARK_CLINICS)
    parser.add_argument("--scale", type=float, default=gen.BENCHMARK_SCALE)
    parser.add_argument("--period", default="8 months", help="retention period (8 months: 2024-01..2025-02 expire)")
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--segment-rows", type=int, default=100_000, help="rows per archive object at most")
    parser.add_argument("--base-dir", type=Path, default=None)
    args = parser.parse_args(argv)

    base = make_base_dir("drp-bench-archival-", args.base_dir)
    cluster = LocalCluster.create(base / "pg", settings=CLUSTER_SETTINGS)
    try:
        started = time.monotonic()
        gen.seed_demo(cluster.create_database("clinic_template"), clinics=args.clinics, scale=args.scale, seed=42)
        seed_s = time.monotonic() - started
        policy = base / "retention.yaml"
        policy.write_text(yaml.safe_dump({"version": 1, "tables": {"public.audit_log": {
            "timestamp_column": "occurred_at", "period": args.period, "action": "archive-then-delete"}}}))
        report = {"params": vars(args) | {"base_dir": str(args.base_dir) if args.base_dir else None},
                  "seed_seconds": round(seed_s, 1), "machine": machine_info(cluster.dsn("clinic_template")),
                  "load_before": _uptime(), "strategies": {}}
        for name, flags in (("batches", ["--no-partition-drop"]), ("partitions", [])):
            dsn = cluster.create_database(f"clinic_{name}", template="clinic_template")
            report["strategies"][name] = _run(dsn, base / f"store_{name}", policy,
                                              [*flags, "--segment-rows", str(args.segment_rows)], args.batch_size)
        report["load_after"] = _uptime()
        json.dump(report, sys.stdout, indent=2)
        print()
    finally:
        cluster.remove()
        shutil.rmtree(base, ignore_errors=True)
    return 0


def _content(dsn: str) -> tuple[int, int]:
    with psycopg.connect(dsn) as conn:
        rows, total = conn.execute("SELECT count(*), coalesce(sum(hash_record_extended(t, 0)::numeric), 0)"
                                   " FROM public.audit_log AS t").fetchone()
    return int(rows), int(total) % (1 << 64)


def _run(dsn: str, store: Path, policy: Path, flags: list[str], batch_size: int) -> dict:
    before = _content(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CHECKPOINT")
        lsn0 = conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
    env = {**os.environ, "DRP_SOURCE_DSN": dsn, "DRP_STORAGE_URL": str(store),
           "DRP_RETENTION_POLICIES_FILE": str(policy)}
    drp = str(Path(sys.executable).parent / "drp")
    launch = Launch([drp, "retention", "apply", "--json", "--as-of", AS_OF, "--batch-size", str(batch_size), *flags],
                    env=env, stdout=subprocess.PIPE)
    out = launch.proc.stdout.read()  # type: ignore[union-attr]
    measured = launch.reap()
    if measured.returncode != 0:
        raise SystemExit(f"drp retention apply failed ({measured.returncode})")
    with psycopg.connect(dsn, autocommit=True) as conn:
        wal = conn.execute("SELECT pg_current_wal_lsn() - %s::pg_lsn", (lsn0,)).fetchone()[0]
    (t,) = json.loads(out)["tables"]
    after = _content(dsn)
    archived = t["archived_rows"]
    return {
        "rows_before": before[0], "rows_archived": archived, "rows_removed": t["deleted_rows"],
        "rows_left": after[0], "union_ok": after[0] + archived == before[0],
        "seconds": round(measured.seconds, 1), "rows_per_second": round(archived / measured.seconds),
        "wal_bytes": int(wal), "wal_mb": round(int(wal) / 2**20, 1), "archive_bytes": t["bytes"],
        "segments": t["segments"], "batches": t["batches"], "longest_batch_s": t["longest_batch_s"],
        "partitions_dropped": len(t["partitions_dropped"]), "peak_rss_mb": round(measured.maxrss_kb / 1024, 1),
        "peak_rss_exact": launch.exact, "cpu_seconds": round(measured.cpu_seconds, 1),
        "phase_seconds": t["seconds"],  # archive (select + Parquet + store), verify (read back), delete
    }


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


if __name__ == "__main__":
    raise SystemExit(main())
