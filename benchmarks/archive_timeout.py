"""Does archive_timeout bound the archive lag of a commit on PostgreSQL? Measured, not assumed.

    PYTHONPATH=. .venv/bin/python benchmarks/archive_timeout.py [--timeout 5] [--seconds 30]

A fresh cluster archives with ``cp`` (no drp in the path: this measures PostgreSQL alone), with
``archive_timeout`` = --timeout seconds and the default checkpoint_timeout (5 min). Phases:

- ``after-start``: right after the server started, one small autocommit INSERT a second for --seconds;
- ``after-wakeup``: the same after ``pg_reload_conf()`` (which sets the checkpointer's latch);
- ``single-commit``: one INSERT after an idle pause, then nothing;
- ``open-transaction``: one INSERT a second inside one transaction never committed.

For every commit: the segment that holds it, and the time from the commit until that segment's file
is in the archive directory (polled every 50 ms; given up --timeout * 4 + 10 s after the commit).
Also the checkpointer's first sleep, read from /proc (Linux): PostgreSQL 15's checkpointer computes
it while the startup process is still running, when archive_timeout is not considered, so it
sleeps a whole checkpoint_timeout unless something wakes it (docs/wal.md). Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import threading
import time
from pathlib import Path

import psycopg
from _common import make_base_dir, stats

from dr_pipelines.core.pg.cluster import LocalCluster


class ArchiveWatch:
    """Polls the archive directory; remembers when each file first appeared (monotonic seconds)."""

    def __init__(self, directory: Path) -> None:
        self.directory, self.seen = directory, {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(0.05):
            now = time.monotonic()
            for name in os.listdir(self.directory):
                self.seen.setdefault(name, now)

    def wait(self, name: str, deadline: float) -> float | None:
        while time.monotonic() < deadline:
            if name in self.seen:
                return self.seen[name]
            time.sleep(0.05)
        return None


def commit_lags(conn: psycopg.Connection, watch: ArchiveWatch, commits: list[tuple[float, str]],
                limit: float) -> dict[str, object]:
    lags = []
    for at, segment in commits:
        arrived = watch.wait(segment, at + limit)
        lags.append(None if arrived is None else round(arrived - at, 2))
    done = [lag for lag in lags if lag is not None]
    summary = stats(done, 2) if done else None
    if summary:
        summary.pop("all", None)
    return {"commits": len(commits), "archived": len(done), "given_up_after_s": limit, "lag_s": summary,
            "max_lag_s": max(done) if done else None, "per_commit": list(zip([s for _, s in commits], lags, strict=True))}


def commit_each_second(conn: psycopg.Connection, seconds: int) -> list[tuple[float, str]]:
    commits = []
    for _ in range(seconds):
        segment = conn.execute("INSERT INTO probe DEFAULT VALUES"
                               " RETURNING pg_walfile_name(pg_current_wal_insert_lsn())").fetchone()[0]
        commits.append((time.monotonic(), segment))
        time.sleep(1)
    return commits


def checkpointer_sleep_ms(conn: psycopg.Connection) -> int | None:
    """The timeout of the epoll_wait the checkpointer sits in (/proc/PID/syscall, Linux, same user or root)."""
    pid = conn.execute("SELECT pid FROM pg_stat_activity WHERE backend_type = 'checkpointer'").fetchone()[0]
    try:
        fields = Path(f"/proc/{pid}/syscall").read_text().split()
    except OSError:
        return None
    return int(fields[4], 16) if fields and fields[0] == "232" else None  # 232: epoll_wait on x86_64


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--timeout", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=30)
    args = parser.parse_args()
    base = make_base_dir("drp-archive-timeout-")
    archive = base / "archive"
    archive.mkdir(mode=0o777)
    os.chmod(archive, 0o777)
    settings = {"wal_level": "replica", "archive_mode": "on", "archive_timeout": f"'{args.timeout}s'",
                "archive_command": f"'cp %p {archive}/%f'"}
    cluster = LocalCluster.create(base / "pg", settings=settings, tcp_trust=True)
    watch = ArchiveWatch(archive)
    result: dict[str, object] = {"archive_timeout_s": args.timeout}
    limit = 4 * args.timeout + 10
    try:
        with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
            result["server_version"] = conn.execute("SHOW server_version").fetchone()[0]
            conn.execute("CREATE TABLE probe (id bigserial PRIMARY KEY, at timestamptz DEFAULT now())")
            conn.execute("SELECT pg_switch_wal()")
            time.sleep(1)

            result["checkpointer_sleep_ms"] = checkpointer_sleep_ms(conn)
            result["after-start"] = commit_lags(conn, watch, commit_each_second(conn, args.seconds), limit)
            conn.execute("SELECT pg_reload_conf()")
            time.sleep(1)
            result["after-wakeup"] = commit_lags(conn, watch, commit_each_second(conn, args.seconds), limit)

            time.sleep(2 * args.timeout)  # idle: nothing to switch
            segment = conn.execute("INSERT INTO probe DEFAULT VALUES"
                                   " RETURNING pg_walfile_name(pg_current_wal_insert_lsn())").fetchone()[0]
            result["single-commit"] = commit_lags(conn, watch, [(time.monotonic(), segment)], limit)

            time.sleep(2 * args.timeout)
            writes = []
            with psycopg.connect(cluster.dsn()) as txn:  # one transaction, never committed
                for _ in range(min(args.seconds, 3 * args.timeout)):
                    segment = txn.execute("INSERT INTO probe DEFAULT VALUES"
                                          " RETURNING pg_walfile_name(pg_current_wal_insert_lsn())").fetchone()[0]
                    writes.append((time.monotonic(), segment))
                    time.sleep(1)
                result["open-transaction"] = commit_lags(conn, watch, writes, limit)
                txn.rollback()
    finally:
        watch.stop.set()
        cluster.remove()
        shutil.rmtree(base, ignore_errors=True)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
