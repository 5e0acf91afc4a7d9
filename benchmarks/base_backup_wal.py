"""How much WAL does a base backup write, and what is it? Plain pg_basebackup against drp's run_base_backup.

    PYTHONPATH=. .venv/bin/python benchmarks/base_backup_wal.py [--scale 10] [--fresh] [--autovacuum]

One cluster (wal_level=replica, archive_mode=on, archive_command '/bin/true' so `-X none` does not wait,
wal_keep_size 4GB so pg_waldump finds every segment) loaded with ``pgbench -i -s SCALE``, then (unless
--fresh) ``VACUUM (FREEZE, ANALYZE)`` and ``CHECKPOINT``. Then, one after the other: ``pg_basebackup -D -
-Ft -X none --checkpoint=fast`` (discarded), drp's ``run_base_backup`` into a temporary local storage, and
pg_basebackup again. For each: how far the insert position moved, which segments it spans, the records
pg_waldump finds in that range (``--stats``), and the SWITCH / CHECKPOINT / BACKUP_END records.
docs/backups.md ("WAL written by a base backup") quotes the results.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
from collections import Counter
from collections.abc import Callable

import psycopg
from _common import make_base_dir

from dr_pipelines.core.backup.physical import run_base_backup
from dr_pipelines.core.crypto import generate_identity_file
from dr_pipelines.core.pg.binaries import find_pg_binaries
from dr_pipelines.core.pg.cluster import LocalCluster
from dr_pipelines.core.storage.local import LocalStorage

MARKERS = ("SWITCH", "CHECKPOINT", "BACKUP_END")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=int, default=10)
    parser.add_argument("--fresh", action="store_true", help="no VACUUM (FREEZE, ANALYZE) + CHECKPOINT after the load")
    parser.add_argument("--autovacuum", action="store_true", help="leave autovacuum on")
    parser.add_argument("--base-dir", default=None)
    args = parser.parse_args()
    base = make_base_dir("bench-bbwal-", args.base_dir)
    bins = find_pg_binaries()
    cluster = LocalCluster.create(base / "pg", tcp_trust=True, settings={
        "wal_level": "replica", "archive_mode": "on", "archive_command": "'/bin/true'", "wal_keep_size": "'4GB'",
        "autovacuum": "on" if args.autovacuum else "off", "fsync": "off"})
    try:
        subprocess.run([bins.tool("pgbench"), "-i", "-q", "-s", str(args.scale), cluster.dsn()], check=True,
                       capture_output=True)

        def sql(query: str) -> tuple | None:  # type: ignore[type-arg]
            with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
                cur = conn.execute(query)
                return cur.fetchone() if cur.description else None

        if not args.fresh:
            sql("VACUUM (FREEZE, ANALYZE)")
            sql("CHECKPOINT")
        print(f"database: {sql('SELECT pg_size_pretty(pg_database_size(current_database()))')[0]}")  # type: ignore[index]
        identity = base / "key.txt"
        recipient = generate_identity_file(identity)
        basebackup = [bins.tool("pg_basebackup"), "-d", cluster.dsn(), "-D", "-", "-Ft", "-X", "none", "--checkpoint=fast"]
        runs: list[tuple[str, Callable[[], object]]] = [
            ("pg_basebackup -X none --checkpoint=fast", lambda: subprocess.run(basebackup, check=True,
                                                                              stdout=subprocess.DEVNULL,
                                                                              stderr=subprocess.DEVNULL)),
            ("drp run_base_backup", lambda: run_base_backup(cluster.dsn(), LocalStorage(base / "storage"), [recipient])),
            ("pg_basebackup again", lambda: subprocess.run(basebackup, check=True, stdout=subprocess.DEVNULL,
                                                           stderr=subprocess.DEVNULL)),
        ]
        query = "SELECT pg_current_wal_insert_lsn()::text, pg_walfile_name(pg_current_wal_insert_lsn())"
        for label, run in runs:
            start, start_seg = sql(query)  # type: ignore[misc]
            run()
            end, end_seg = sql(query)  # type: ignore[misc]
            moved = sql(f"SELECT pg_wal_lsn_diff('{end}', '{start}')::bigint")[0]  # type: ignore[index]
            print(f"== {label}: {start} ({start_seg}) -> {end} ({end_seg}): position moved {moved / 2**20:.1f} MiB")
            dump = [bins.tool("pg_waldump"), "-p", str(cluster.data_dir / "pg_wal"), "-s", start, "-e", end]
            # pg_waldump exits non-zero when the end lies in a segment not written yet; its records are still printed
            records = [line for line in subprocess.run(dump, capture_output=True, text=True).stdout.splitlines()
                       if line.startswith("rmgr:")]
            total = sum(int(re.search(r"len \(rec/tot\):\s*\d+/\s*(\d+)", line).group(1))  # type: ignore[union-attr]
                        for line in records)
            kinds = Counter(line.split()[1] for line in records)
            print(f"   {len(records)} records, {total:,} bytes (with page images): {dict(kinds)}")
            print("\n".join(line[:160] for line in records if any(m in line for m in MARKERS)))
    finally:
        cluster.remove()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
