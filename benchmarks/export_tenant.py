"""One clinic's export (CSV, Parquet, JSON Lines) against plain COPY of the same rows, at two sizes.

Usage: python benchmarks/export_tenant.py [--scale-small S] [--scale-large S] [--repeat N]

The baseline is psql running ``COPY (SELECT * FROM <table> WHERE <the same tenant filter>)
TO STDOUT (FORMAT csv, HEADER)`` for every tenant-owned table into /dev/null: the rows
drp exports, with nothing else done. ``drp export`` runs as a person runs it (the installed
entry point, output to a local storage directory); it additionally renders types, hashes
every file, counts and checksums the tenant's rows in the same snapshot and writes the
manifest and audit rows. Throughput ratio = baseline seconds / drp seconds (1.0 = as fast).
Peak RSS is the child's own (GNU time). Two database sizes show whether memory stays flat.
Prints JSON on stdout and a summary on stderr.
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
from _common import CLUSTER_SETTINGS, Launch, machine_info, make_base_dir, run_measured, stats
from psycopg import sql

from dr_pipelines.core.pg.cluster import LocalCluster
from dr_pipelines.core.pg.tools import client_tool
from dr_pipelines.core.tenancy import TENANTS_SETTING, discover_scope, tenant_select
from dr_pipelines.demo import generate as gen

BIN = Path(sys.executable).parent
CLINIC = "1"  # the larger clinic with seed 2 (weights 1.25 and 0.69)
SEED = 2


def baseline_script(dsn: str) -> tuple[str, int]:
    """The psql script (set the tenant, one COPY per table) and the number of rows it copies."""
    lines = [f"SELECT set_config('{TENANTS_SETTING}', '{{{CLINIC}}}', false);"]
    rows = 0
    with psycopg.connect(dsn) as conn:
        scope = discover_scope(conn)
        conn.execute("SELECT set_config(%s, %s, false)", (TENANTS_SETTING, "{" + CLINIC + "}"))
        for t in scope.tables:
            query = tenant_select(t, scope)
            rows += conn.execute(sql.SQL("SELECT count(*) FROM ({}) AS q").format(query)).fetchone()[0]
            lines.append(sql.SQL("COPY ({}) TO STDOUT (FORMAT csv, HEADER);").format(query).as_string(conn))
    return "\n".join(lines) + "\n", rows


def run_baseline(dsn: str, script: str) -> dict:  # type: ignore[type-arg]
    with psycopg.connect(dsn) as conn:
        major = conn.info.server_version // 10000
    psql = client_tool("psql", major)
    measured, _ = run_measured([str(psql), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", dsn, "-f", "-"],
                               input_bytes=script.encode())
    assert measured.returncode == 0, "baseline COPY failed"
    return measured.as_dict()


VARIANTS = {"csv": ("csv",), "parquet": ("parquet",), "jsonl": ("jsonl",),
            "csv+checksums": ("csv", "--checksums"), "parquet+checksums": ("parquet", "--checksums")}


def run_drp(dsn: str, variant: str, target: Path) -> dict:  # type: ignore[type-arg]
    env = {**os.environ, "DRP_SOURCE_DSN": dsn, "DRP_EXPORT_MAX_PER_HOUR": "0", "DRP_STORAGE_URL": str(target)}
    fmt, *extra = VARIANTS[variant]
    launch = Launch([str(BIN / "drp"), "export", "--clinic", CLINIC, "--format", fmt, *extra, "--json"], env=env,
                    stdout=subprocess.PIPE)
    out = launch.proc.stdout.read()  # type: ignore[union-attr]
    measured = launch.reap()
    assert measured.returncode == 0, f"drp export {variant} failed"
    summary = json.loads(out)
    shutil.rmtree(target, ignore_errors=True)
    return measured.as_dict() | {"rows": summary["rows"], "bytes": summary["bytes"]}


def bench_size(cluster: LocalCluster, base: Path, scale: float, repeat: int) -> dict:  # type: ignore[type-arg]
    name = f"clinic_{int(scale)}"
    dsn = cluster.create_database(name)
    t0 = time.monotonic()
    gen.seed_demo(dsn, clinics=2, scale=scale, seed=SEED)
    seeded = time.monotonic() - t0
    script, rows = baseline_script(dsn)
    runs: dict[str, list[dict]] = {"copy": []} | {v: [] for v in VARIANTS}  # type: ignore[type-arg]
    for _ in range(repeat):
        runs["copy"].append(run_baseline(dsn, script))
        for fmt in VARIANTS:
            runs[fmt].append(run_drp(dsn, fmt, base / "out"))
            assert runs[fmt][-1]["rows"] == rows, (fmt, runs[fmt][-1]["rows"], rows)
    copy_s = stats([r["seconds"] for r in runs["copy"]])["median"]
    result = {"scale": scale, "clinic_rows": rows, "seed_seconds": round(seeded, 1),
              "copy": {"seconds": stats([r["seconds"] for r in runs["copy"]]),
                       "rows_per_second": round(rows / copy_s)}}
    for fmt in VARIANTS:
        secs = stats([r["seconds"] for r in runs[fmt]])
        result[fmt] = {"seconds": secs, "rows_per_second": round(rows / secs["median"]),
                       "throughput_vs_copy": round(copy_s / secs["median"], 3),
                       "peak_rss_mib": round(max(r["maxrss_kb"] for r in runs[fmt]) / 1024, 1),
                       "bytes": runs[fmt][-1]["bytes"]}
    cluster.drop_database(name)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale-small", type=float, default=252.0)  # ~1 M rows in the clinic
    parser.add_argument("--scale-large", type=float, default=1260.0)  # ~5 M rows in the clinic
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--base-dir", default="/var/tmp")
    args = parser.parse_args()
    base = make_base_dir("drp-bench-export-", args.base_dir)
    cluster = LocalCluster.create(base / "pg", settings=CLUSTER_SETTINGS)
    try:
        dsn = cluster.create_database("postgres_probe")
        sizes = [bench_size(cluster, base, s, args.repeat) for s in (args.scale_small, args.scale_large)]
        result = {"benchmark": "export_tenant", "sizes": sizes, "load_before": os.getloadavg(),
                  "machine": machine_info(dsn)}
        json.dump(result, sys.stdout, indent=2)
        sys.stdout.write("\n")
        for s in sizes:
            print(f"{s['clinic_rows']:,} rows: COPY {s['copy']['rows_per_second']:,} rows/s; " + "; ".join(
                f"{f} {s[f]['throughput_vs_copy']:.2f}x COPY, {s[f]['peak_rss_mib']} MiB" for f in
                VARIANTS), file=sys.stderr)
        return 0
    finally:
        cluster.remove()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
