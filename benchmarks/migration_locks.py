"""Migration lock impact: the estimate (lint + impact.py) against the measured lock time on the demo database.

    .venv/bin/python benchmarks/migration_locks.py                  # throwaway cluster, ~1 GB demo data
    .venv/bin/python benchmarks/migration_locks.py --keep           # ... and leave it running (prints its DSN)
    .venv/bin/python benchmarks/migration_locks.py --dsn 'host=127.0.0.1 port=5432 dbname=clinic' --calibrate

Each case is a migration statement that does work under its lock (a rewrite, an index build,
a validating scan, a foreign-key validation). It is linted and estimated from the live sizes,
then run inside a transaction on the database and timed from just before the statement to
just after it (the lock is taken at its start and held to the end: no other session competes),
then rolled back, so the database is unchanged and reusable. Before each run: CHECKPOINT; each
case runs --warmup times unrecorded first, so every case meets the same (warm) caches.

Prints one JSON document on stdout (cases with estimate, measured median, ratio) and a summary
on stderr. ``--calibrate`` also prints the ``Calibration`` that would make each kind of work's
median ratio 1 (paste it into dr_pipelines/core/migrate/impact.py as DEFAULT_CALIBRATION).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _common import CLUSTER_SETTINGS, machine_info, make_base_dir, stats

from dr_pipelines.core.migrate.impact import DEFAULT_CALIBRATION, Calibration, estimate
from dr_pipelines.core.migrate.lint import LintConfig, lint_sql
from dr_pipelines.core.pg.cluster import LocalCluster
from dr_pipelines.core.pg.connect import connect, redact_dsn
from dr_pipelines.demo import generate as gen

# name -> (setup statements run first in the same transaction, the timed statement)
CASES: dict[str, tuple[tuple[str, ...], str]] = {
    "rewrite audit_log (partitioned, largest)": ((), "ALTER TABLE audit_log ALTER COLUMN entity_id TYPE numeric"),
    "rewrite invoice_lines": ((), "ALTER TABLE invoice_lines ALTER COLUMN line_no TYPE integer"),
    "rewrite clinical_notes (TOAST)": ((), "ALTER TABLE clinical_notes ALTER COLUMN created_at TYPE timestamptz(0)"),
    "rewrite appointments": ((), "ALTER TABLE appointments ALTER COLUMN created_at TYPE timestamptz(0)"),
    "index build audit_log": ((), "CREATE INDEX bench_idx ON audit_log (entity, occurred_at)"),
    "index build invoice_lines": ((), "CREATE INDEX bench_idx ON invoice_lines (code, description)"),
    "fk validation invoice_lines -> invoices": (
        (), "ALTER TABLE invoice_lines ADD CONSTRAINT bench_fk FOREIGN KEY (clinic_id, invoice_id) "
            "REFERENCES invoices (clinic_id, id)"),
    "fk validation audit_log -> clinics": (
        (), "ALTER TABLE audit_log ADD CONSTRAINT bench_fk FOREIGN KEY (clinic_id) REFERENCES clinics (id)"),
    "set not null scan audit_log": (
        ("ALTER TABLE audit_log ALTER COLUMN entity DROP NOT NULL",),
        "ALTER TABLE audit_log ALTER COLUMN entity SET NOT NULL"),
    "check scan invoice_lines": ((), "ALTER TABLE invoice_lines ADD CONSTRAINT bench_ck CHECK (description <> '')"),
}
FIELDS = {"rewrite": "rewrite_mb_s", "index-build": "index_build_mb_s", "scan": "scan_mb_s",
          "fk-validation": "fk_validation_mb_s"}
LINT = LintConfig(use_squawk=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", help="use this existing demo database instead of seeding a throwaway cluster")
    parser.add_argument("--clinics", type=int, default=gen.BENCHMARK_CLINICS)
    parser.add_argument("--scale", type=float, default=gen.BENCHMARK_SCALE)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--repeat", type=int, default=2, help="timed runs per case (median)")
    parser.add_argument("--warmup", type=int, default=1, help="unrecorded runs per case first (caches)")
    parser.add_argument("--base-dir", type=Path, default=Path("/var/tmp"), help="where the throwaway cluster goes")
    parser.add_argument("--keep", action="store_true", help="leave the seeded cluster running; print its DSN")
    parser.add_argument("--only", nargs="*", help="run the cases whose name contains one of these words")
    parser.add_argument("--calibrate", action="store_true", help="print the Calibration the measurements imply")
    args = parser.parse_args(argv)

    cluster: LocalCluster | None = None
    base: Path | None = None
    try:
        dsn = args.dsn
        seeding = None
        if dsn is None:
            base = make_base_dir("drp-bench-locks-", args.base_dir)
            cluster = LocalCluster.create(base / "pg", settings=CLUSTER_SETTINGS)
            dsn = cluster.create_database("clinic")
            started = time.monotonic()
            gen.seed_demo(dsn, clinics=args.clinics, scale=args.scale, seed=args.seed)
            seeding = round(time.monotonic() - started, 1)
            _log(f"seeded the demo database in {seeding} s")
        cases = {k: v for k, v in CASES.items() if not args.only or any(w in k for w in args.only)}
        load_start = _uptime()
        results = [_case(dsn, name, setup, stmt, args.repeat, args.warmup) for name, (setup, stmt) in cases.items()]
        report: dict[str, Any] = {
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "database_bytes": _db_size(dsn), "cases": results,
            "calibration_used": dataclasses.asdict(DEFAULT_CALIBRATION),
            "calibration_implied": dataclasses.asdict(implied(results)),
            "params": {"dsn": redact_dsn(args.dsn) if args.dsn else None, "clinics": args.clinics,
                       "scale": args.scale, "seed": args.seed, "repeat": args.repeat, "warmup": args.warmup,
                       "seeding_seconds": seeding},
            "machine": {**machine_info(dsn), "uptime_start": load_start, "uptime_end": _uptime(),
                        "cluster_settings": None if args.dsn else CLUSTER_SETTINGS},
        }
        if args.keep and cluster:
            report["kept"] = {"dsn": cluster.dsn("clinic"), "data_dir": str(cluster.data_dir)}
        json.dump(report, sys.stdout, indent=2)
        print()
        _summary(results)
        if args.calibrate:
            print(f"DEFAULT_CALIBRATION = {implied(results)!r}", file=sys.stderr)
    finally:
        if cluster and not args.keep:
            cluster.remove()
            if base:
                shutil.rmtree(base, ignore_errors=True)
    return 0


def _case(dsn: str, name: str, setup: tuple[str, ...], stmt: str, repeat: int, warmup: int) -> dict[str, Any]:
    report = lint_sql(stmt, config=LINT)
    info = report.statements[0]
    with connect(dsn, autocommit=True) as conn:
        impact = estimate(conn, report)[0]
    measured = []
    for _ in range(warmup + repeat):
        with connect(dsn, autocommit=True) as conn:
            conn.execute("CHECKPOINT")
        with connect(dsn) as conn:  # one transaction, rolled back: the database is left as it was
            for s in setup:
                conn.execute(s)
            started = time.monotonic()
            conn.execute(stmt)
            measured.append(time.monotonic() - started)
            conn.rollback()
    measured = measured[warmup:]
    median = statistics.median(measured)
    row = {"case": name, "sql": stmt, "lock": info.lock, "work": list(info.work), "table": impact.table,
           "rows": impact.rows, "bytes": impact.bytes, "findings": [f.rule for f in report.findings],
           "estimate_seconds": round(impact.seconds, 2), "measured_seconds": stats(measured, 2),
           "ratio_estimate_to_measured": round(impact.seconds / median, 2) if median else None,
           "severity": impact.severity, "text": impact.text}
    _log(f"{name}: estimate {impact.seconds:.1f} s, measured {median:.1f} s, ratio {row['ratio_estimate_to_measured']}")
    return row


def implied(results: list[dict[str, Any]], current: Calibration = DEFAULT_CALIBRATION) -> Calibration:
    """The throughputs that make each kind of work's median estimate/measured ratio 1.

    An estimate is bytes / throughput, so the throughput that matches a measurement is the one used
    times estimate / measured. A case doing several kinds of work is left out (its time cannot be split).
    """
    changes: dict[str, float] = {}
    for work, field_name in FIELDS.items():
        ratios = [r["ratio_estimate_to_measured"] for r in results if r["work"] == [work]
                  and r["ratio_estimate_to_measured"]]
        if ratios:
            changes[field_name] = round(getattr(current, field_name) * statistics.median(ratios), 1)
    when = dt.date.today().isoformat()
    return dataclasses.replace(current, **changes, measured=f"benchmarks/migration_locks.py, {when}, "
                                                            f"{os.cpu_count()} cores")


def _summary(results: list[dict[str, Any]]) -> None:
    _log(f"{'case':45} {'lock':22} {'MB':>7} {'estimate s':>10} {'measured s':>10} {'ratio':>6}")
    for r in results:
        _log(f"{r['case']:45} {r['lock']:22} {r['bytes'] / 2**20:7.0f} {r['estimate_seconds']:10.1f} "
             f"{r['measured_seconds']['median']:10.1f} {r['ratio_estimate_to_measured']:6}")


def _db_size(dsn: str) -> int:
    with connect(dsn) as conn:
        return conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def _log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
