"""Benchmark the demo data generator: a throwaway cluster, ``seed_demo`` at the benchmark scale, JSON out.

    .venv/bin/python benchmarks/demo_generate.py                 # ~1 GB: BENCHMARK_CLINICS x BENCHMARK_SCALE
    .venv/bin/python benchmarks/demo_generate.py --scale 1 --clinics 3 --keep

Prints one JSON document: seconds per phase (migrations, generation, analyze, total), database
size (pg_database_size) and per-table sizes (tables with their indexes and TOAST; a partitioned
table with all its partitions), rows per table, rows/s and the peak RSS of this Python process.

``--indexes-after-load`` measures the alternative load strategy for comparison: secondary
indexes and foreign keys are dropped after the migrations, the data is loaded, then they are
recreated (their time is reported as "rebuild" and counted in the total). ``seed_demo`` itself
always loads into the fully migrated schema.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import sys
import time
from pathlib import Path

import psycopg
from _common import CLUSTER_SETTINGS, make_base_dir

from dr_pipelines.core.pg.cluster import LocalCluster
from dr_pipelines.demo import generate as gen
from dr_pipelines.demo.schema import MIGRATIONS_DIR


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clinics", type=int, default=gen.BENCHMARK_CLINICS)
    parser.add_argument("--scale", type=float, default=gen.BENCHMARK_SCALE)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--keep", action="store_true", help="leave the cluster running and print its DSN")
    parser.add_argument("--base-dir", type=Path, default=None, help="where to create the cluster (default: a temp dir)")
    parser.add_argument("--default-settings", action="store_true", help="do not tune the cluster for bulk loading")
    parser.add_argument("--indexes-after-load", action="store_true",
                        help="compare: drop secondary indexes and FKs before loading, recreate them after")
    args = parser.parse_args(argv)

    base = make_base_dir("drp-bench-", args.base_dir)  # mode 755: the postgres OS user must reach it
    settings = {} if args.default_settings else CLUSTER_SETTINGS
    cluster = LocalCluster.create(base / "pg", settings=settings)
    try:
        dsn = cluster.create_database("clinic")
        timings: dict[str, float] = {}
        started = time.monotonic()
        if args.indexes_after_load:
            counts = _seed_indexes_after_load(dsn, args, timings)
        else:
            counts = gen.seed_demo(dsn, clinics=args.clinics, scale=args.scale, seed=args.seed, timings=timings)
        total = time.monotonic() - started
        report = _report(dsn, args, timings, total, counts, settings)
        if args.keep:
            report["kept"] = {"dsn": cluster.dsn("clinic"), "data_dir": str(cluster.data_dir)}
        json.dump(report, sys.stdout, indent=2)
        print()
    finally:
        if not args.keep:
            cluster.remove()
            shutil.rmtree(base, ignore_errors=True)
    return 0


def _report(dsn: str, args: argparse.Namespace, timings: dict[str, float], total: float,
            counts: dict[str, int], settings: dict[str, str]) -> dict:
    with psycopg.connect(dsn) as conn:
        db_size = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
        server = conn.execute("SHOW server_version").fetchone()[0]
        tables = {}
        for table in gen.TABLES:
            tables[table] = int(conn.execute(
                "SELECT coalesce((SELECT sum(pg_total_relation_size(relid)) FROM pg_partition_tree(%(t)s::regclass)),"
                " pg_total_relation_size(%(t)s::regclass))",
                {"t": f"public.{table}"},
            ).fetchone()[0])
    rows = sum(counts.values())
    return {
        "params": {"clinics": args.clinics, "scale": args.scale, "seed": args.seed,
                   "indexes_after_load": args.indexes_after_load},
        "seconds": {**{k: round(v, 2) for k, v in timings.items()}, "total": round(total, 2)},
        "database_size_bytes": db_size,
        "database_size_mb": round(db_size / 2**20, 1),
        "table_size_bytes": tables,
        "rows": counts,
        "rows_total": rows,
        "rows_per_second": round(rows / timings["generation"]) if timings.get("generation") else None,
        "peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "postgres": server},
        "cluster_settings": settings,
    }


def _seed_indexes_after_load(dsn: str, args: argparse.Namespace, timings: dict[str, float]) -> dict[str, int]:
    """The comparison strategy: migrate, drop secondary indexes and FKs, load, recreate, analyze."""
    from dr_pipelines.core.migrate.runner import migrate

    t0 = time.monotonic()
    migrate(dsn, MIGRATIONS_DIR)
    t1 = time.monotonic()
    with psycopg.connect(dsn, autocommit=True) as conn:
        # Only objects on the parent tables: partitions' copies come and go with them.
        fks = conn.execute("""
            SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid)
            FROM pg_constraint
            WHERE contype = 'f' AND connamespace = 'public'::regnamespace AND conparentid = 0
            ORDER BY conrelid::regclass::text, conname""").fetchall()
        indexes = conn.execute("""
            SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid)
            FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid
            WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p')
              AND NOT c.relispartition
              AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid)
            ORDER BY 1""").fetchall()
        for table, name, _ in fks:
            conn.execute(f'ALTER TABLE {table} DROP CONSTRAINT "{name}"')
        for name, _ in indexes:
            conn.execute(f"DROP INDEX {name}")
    t2 = time.monotonic()
    counts = gen.generate(dsn, clinics=args.clinics, scale=args.scale, seed=args.seed)
    t3 = time.monotonic()
    with psycopg.connect(dsn, autocommit=True) as conn:
        for _, definition in indexes:
            # pg_get_indexdef says ON ONLY for a partitioned table's index; we want it on every partition.
            conn.execute(definition.replace(" ON ONLY ", " ON ", 1))
        for table, name, definition in fks:
            conn.execute(f'ALTER TABLE {table} ADD CONSTRAINT "{name}" {definition}')
    t4 = time.monotonic()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("ANALYZE")
    t5 = time.monotonic()
    timings.update(migrations=(t1 - t0) + (t2 - t1), generation=t3 - t2, rebuild=t4 - t3, analyze=t5 - t4)
    return counts


if __name__ == "__main__":
    sys.exit(main())
