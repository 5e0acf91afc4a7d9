"""One clinic's rows over HTTP from the export portal against psql's COPY TO STDOUT, and 20 downloads at once.

Usage: python benchmarks/portal_stream.py [--scale S] [--repeat N] [--concurrent 20]

Baseline: psql running ``COPY (SELECT * FROM <table> WHERE <the same tenant filter>) TO STDOUT
(FORMAT csv, HEADER)`` for every tenant-owned table into /dev/null (as benchmarks/export_tenant.py).
Portal: ``drp portal serve`` (the installed entry point, a separate process), and curl fetching
``GET /api/data/<table>?format=csv`` for every table one after the other into /dev/null: the same
rows, rendered as ``drp export`` renders them, with snapshot, scope, audit rows per request.
Ratio = COPY seconds / portal seconds (1.0 = as fast). Then ``--concurrent`` curls download the
clinic's largest table at the same time: each one's seconds (none starved: max / median), and
the portal's peak RSS (VmHWM of its process) over the whole run. Prints JSON on stdout and a
summary on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
from _common import CLUSTER_SETTINGS, machine_info, make_base_dir, stats
from export_tenant import CLINIC, SEED, baseline_script, run_baseline

from dr_pipelines.core.pg.cluster import LocalCluster, free_port
from dr_pipelines.core.tenancy import TENANTS_SETTING, discover_scope, tenant_select
from dr_pipelines.demo import generate as gen
from dr_pipelines.portal.tokens import create_token

BIN = Path(sys.executable).parent


def curl(url: str, token: str) -> float:
    t0 = time.monotonic()
    subprocess.run(["curl", "-sS", "-f", "-o", "/dev/null", "-H", f"Authorization: Bearer {token}", url], check=True)
    return time.monotonic() - t0


def vm_hwm_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def largest_table(dsn: str) -> str:
    from psycopg import sql

    with psycopg.connect(dsn) as conn:
        scope = discover_scope(conn)
        conn.execute("SELECT set_config(%s, %s, false)", (TENANTS_SETTING, "{" + CLINIC + "}"))
        counts = {t.name: conn.execute(sql.SQL("SELECT count(*) FROM ({}) AS q").format(tenant_select(t, scope)))
                  .fetchone()[0] for t in scope.tables}
    return max(counts, key=counts.__getitem__)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1260.0)  # ~5 M rows in the clinic
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--concurrent", type=int, default=20)
    parser.add_argument("--base-dir", default="/var/tmp")
    args = parser.parse_args()
    base = make_base_dir("drp-bench-portal-", args.base_dir)
    cluster = LocalCluster.create(base / "pg", settings=CLUSTER_SETTINGS)
    server = None
    try:
        dsn = cluster.create_database("clinic")
        t0 = time.monotonic()
        gen.seed_demo(dsn, clinics=2, scale=args.scale, seed=SEED)
        seeded = time.monotonic() - t0
        script, rows = baseline_script(dsn)
        with psycopg.connect(dsn, autocommit=True) as conn:
            token = create_token(conn, CLINIC, expires_at=datetime.now(UTC) + timedelta(hours=6), created_by="bench")[1]
            tables = [t.name for t in discover_scope(conn).tables]
        port = free_port()
        env = {**os.environ, "DRP_SOURCE_DSN": dsn, "DRP_STORAGE_URL": str(base / "store"),
               "DRP_PORTAL_REQUESTS_PER_MINUTE": "0", "DRP_PORTAL_MAX_STREAMS": str(max(args.concurrent, 8))}
        server = subprocess.Popen([str(BIN / "drp"), "portal", "serve", "--port", str(port)], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while subprocess.run(["curl", "-s", "-f", "-o", "/dev/null", f"{url}/api/health"]).returncode != 0:
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError("the portal did not start")
            time.sleep(0.2)
        copy_runs, portal_runs = [], []
        for _ in range(args.repeat):
            copy_runs.append(run_baseline(dsn, script)["seconds"])
            t0 = time.monotonic()
            for table in tables:
                curl(f"{url}/api/data/{table}?format=csv", token)
            portal_runs.append(time.monotonic() - t0)
        big = largest_table(dsn)
        with ThreadPoolExecutor(args.concurrent) as pool:
            t0 = time.monotonic()
            each = list(pool.map(lambda _: curl(f"{url}/api/data/{big}?format=csv", token), range(args.concurrent)))
            wall = time.monotonic() - t0
        peak = vm_hwm_kb(server.pid)
        copy_s, portal_s = stats(copy_runs)["median"], stats(portal_runs)["median"]
        result = {"benchmark": "portal_stream", "scale": args.scale, "clinic_rows": rows, "tables": len(tables),
                  "seed_seconds": round(seeded, 1),
                  "copy": {"seconds": stats(copy_runs), "rows_per_second": round(rows / copy_s)},
                  "portal_csv": {"seconds": stats(portal_runs), "rows_per_second": round(rows / portal_s),
                                 "throughput_vs_copy": round(copy_s / portal_s, 3)},
                  "concurrent": {"downloads": args.concurrent, "table": big, "wall_seconds": round(wall, 2),
                                 "each_seconds": stats(each),
                                 "slowest_vs_median": round(max(each) / stats(each)["median"], 2)},
                  "portal_peak_rss_mib": round(peak / 1024, 1), "load_after": os.getloadavg(),
                  "machine": machine_info(dsn)}
        json.dump(result, sys.stdout, indent=2)
        sys.stdout.write("\n")
        print(f"{rows:,} rows in {len(tables)} tables: COPY {copy_s:.2f} s, portal CSV {portal_s:.2f} s "
              f"({copy_s / portal_s:.2f}x COPY); {args.concurrent} concurrent downloads of {big}: "
              f"{wall:.1f} s, slowest {max(each):.1f} s vs median {stats(each)['median']:.1f} s; "
              f"portal peak RSS {peak / 1024:.0f} MiB", file=sys.stderr)
        return 0
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
        cluster.remove()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
