"""Write load on an archiving cluster, the achieved RPO sampled every second, and an exact PITR check.

Shared by dr_pipelines_tests/test_pitr_load.py (45 s, local) and benchmarks/pitr_load.py (5 min,
local and S3). The cluster runs the documented settings (docs/wal.md): ``archive_timeout = 30s``,
``archive_command`` as ``drp wal archive-command`` prints it, ``drp wal archiver --switch-after 30``.

**Load.** ``pgbench -i`` tables plus ``ledger(id bigserial, committed_at timestamptz default
clock_timestamp())``; pgbench runs the built-in TPC-B script and a custom one inserting one ledger
row per transaction (weights 1:1), a few clients, rate-limited (``-R``) so the WAL to replay stays bounded.

**RPO, measured from the archive.** Every second: (1) the archive's newest committed segment (its
sidecar, read from storage; ``pg_stat_archiver.last_archived_wal`` is only the hint of which name to
read) gives the archived end LSN = the end of that segment; (2) one statement on the source reads
``max(committed_at)`` of the ledger and ``pg_current_wal_insert_lsn()``. The statement's snapshot is
taken before the function runs, so every row it sees has its commit record below that LSN: the
sample's row is archived once the archived end reaches the sample's LSN. The RPO at a sample is
``now - committed_at`` of the newest sample so known to be archived. It is an upper bound of the true
loss window: the LSN bound is late by the statement's duration, a newer archived row may exist between
samples (≤ 1 s) and ``committed_at`` (insert time) is a little before the commit.

**Exact PITR.** In the middle of the load a mark takes ``LOCK TABLE ledger IN EXCLUSIVE MODE``
(waits for inserts in flight to commit, blocks new ones), then reads T = ``clock_timestamp()`` and
every ledger id, then commits. Every ledger transaction before the lock committed (commit record
and commit timestamp) before T; every one after it takes its commit timestamp after the lock is
released, so after T. ``recovery_target_time = T`` stops at the first commit record timestamped
after T (any transaction's, TPC-B's included), which is after every earlier ledger commit and at or
before every later one. So the restored ledger must hold exactly the marked ids; and because
``committed_at`` (clock_timestamp() at the insert) lies between the lock's edges too, exactly the
rows with ``committed_at < T``. Without the lock, commit order differs from ``committed_at`` order
and from WAL order by concurrent commits, and no time comparison could be exact.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg

from dr_pipelines.cli.wal import archive_command
from dr_pipelines.core import context
from dr_pipelines.core.backup.physical import run_base_backup
from dr_pipelines.core.pg.cluster import LocalCluster
from dr_pipelines.core.restore.recovery import conf_value
from dr_pipelines.core.storage import Storage
from dr_pipelines.core.wal.archive import newest_committed
from dr_pipelines.core.wal.names import DEFAULT_SEGMENT_BYTES, Segment
from dr_pipelines.demo.archiving import pg_python
from dr_pipelines_tests.support.wal import WalRig

LEDGER = ("CREATE TABLE ledger (id bigserial PRIMARY KEY,"
          " committed_at timestamptz NOT NULL DEFAULT clock_timestamp());"
          " CREATE INDEX ledger_committed_at ON ledger (committed_at)")
LEDGER_SCRIPT = "INSERT INTO ledger DEFAULT VALUES;\n"
SWITCH_AFTER = "30"


def documented_settings(rig: WalRig) -> dict[str, str]:
    """The rig's archiving cluster with archive_timeout 30s and the line `drp wal archive-command` prints."""
    line = archive_command(rig.socket, python=pg_python(), drp=rig.drp_for_pg, config=rig.config)
    return {**rig.cluster_settings("30s"), "archive_command": conf_value(line)}


@dataclass
class Mark:
    """The PITR target: a time taken while no ledger insert could commit, and the ids committed before it."""

    time: datetime
    ids: list[int]
    elapsed_s: float


@dataclass
class LoadRun:
    seconds: float
    rpo: list[float] = field(default_factory=list)  # one per second of load
    mark: Mark | None = None
    pgbench: str = ""
    load_average: list[tuple[float, float, float]] = field(default_factory=list)  # start, mark, end
    wal_bytes: int = 0

    def summary(self) -> dict[str, Any]:
        ordered = sorted(self.rpo)
        return {"load_seconds": self.seconds, "samples": len(self.rpo),
                "rpo_s": {"max": round(ordered[-1], 1), "p99": round(ordered[int(0.99 * (len(ordered) - 1))], 1),
                          "median": round(statistics.median(ordered), 1)},
                "wal_mb": round(self.wal_bytes / 2**20), "tps": tps_of(self.pgbench),
                "load_average": [[round(x, 2) for x in la] for la in self.load_average]}


def tps_of(pgbench_output: str) -> float | None:
    for line in pgbench_output.splitlines():
        if line.startswith("tps = "):
            return round(float(line.split()[2]), 1)
    return None


@contextmanager
def load_cluster(rig: WalRig, *, scale: int = 1) -> Iterator[LocalCluster]:
    """An archiving cluster (documented settings, the archiver running) with pgbench tables, the ledger and
    a base backup in the rig's storage taken before any load."""
    cluster = LocalCluster.create(rig.root / "pg", settings=documented_settings(rig), tcp_trust=True)
    try:
        with rig.archiver("--switch-after", SWITCH_AFTER, DRP_SOURCE_DSN=cluster.dsn()):  # the switcher's server
            pgbench_init(cluster, scale)
            with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
                conn.execute(LEDGER)
            settings = rig.settings()
            run_base_backup(cluster.dsn(), context.storage(settings), settings.encryption_recipients)
            yield cluster
    finally:
        cluster.remove()


def pgbench(cluster: LocalCluster, *args: str, **popen: Any) -> subprocess.Popen[str]:
    """A pgbench load run against the cluster over TCP, returned running (``pgbench_init`` makes the tables)."""
    if "-i" in args:
        raise ValueError("pgbench -i goes through pgbench_init, which waits for it")
    return subprocess.Popen(_pgbench_cmd(cluster, args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            **popen)


def pgbench_init(cluster: LocalCluster, scale: int) -> None:
    """``pgbench -i -q -s scale``, waited for. (pgbench() once ran -i to the end and then started it a second
    time in the background: that second run dropped, reloaded and re-indexed the tables while benchmarks/
    pitr_restore.py took its base backups, ~160 MB of index-build WAL that only drp's earlier backup replayed.)"""
    done = subprocess.run(_pgbench_cmd(cluster, ("-i", "-q", "-s", str(scale))), capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"pgbench -i failed (exit {done.returncode}): {done.stderr.strip()[-2000:]}")


def _pgbench_cmd(cluster: LocalCluster, args: tuple[str, ...]) -> list[str]:
    return [str(cluster.binaries.bin_dir / "pgbench"), "-h", "127.0.0.1", "-p", str(cluster.port), "-U", "postgres",
            *args, "postgres"]


def archived_end(storage: Storage, hint: str | None) -> int:
    """The end LSN of the newest segment whose sidecar (the commit) is in the archive; 0 when none."""
    sidecar = newest_committed(storage, hint)
    return (Segment.parse(sidecar.name).number() + 1) * DEFAULT_SEGMENT_BYTES if sidecar else 0


def take_mark(dsn: str, t0: float) -> Mark:
    with psycopg.connect(dsn) as conn:
        conn.execute("LOCK TABLE ledger IN EXCLUSIVE MODE")
        at = conn.execute("SELECT clock_timestamp()").fetchone()[0]
        ids = [r[0] for r in conn.execute("SELECT id FROM ledger ORDER BY id")]
    return Mark(at, ids, round(time.monotonic() - t0, 1))


def run_load(rig: WalRig, cluster: LocalCluster, seconds: int, *, clients: int = 3, rate: int = 200,
             work: Path) -> LoadRun:
    """pgbench (TPC-B + ledger inserts) for ``seconds``, sampling the RPO every second and marking the middle."""
    script = work / "ledger.sql"
    script.write_text(LEDGER_SCRIPT)
    run = LoadRun(seconds, load_average=[os.getloadavg()])
    storage = context.storage(rig.settings())
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        start_lsn, started_at = conn.execute("SELECT pg_current_wal_insert_lsn(), clock_timestamp()").fetchone()
        load = pgbench(cluster, "-n", "-c", str(clients), "-j", "2", "-T", str(seconds), "-R", str(rate),
                       "-b", "tpcb-like@1", "-f", f"{script}@1")
        output: list[str] = []
        reader = threading.Thread(target=lambda: output.append(load.stdout.read() if load.stdout else ""), daemon=True)
        reader.start()
        t0 = time.monotonic()
        samples: list[tuple[int, datetime]] = []  # (LSN bound, newest committed_at), in sampling order
        newest_archived: datetime | None = None
        try:
            while load.poll() is None:
                tick = time.monotonic()
                hint = conn.execute("SELECT last_archived_wal FROM pg_stat_archiver").fetchone()[0]
                end = archived_end(storage, hint)
                now, newest, lsn = conn.execute(
                    "SELECT clock_timestamp(), (SELECT max(committed_at) FROM ledger),"
                    " pg_current_wal_insert_lsn() - '0/0'::pg_lsn").fetchone()
                samples.append((int(lsn), newest))
                while samples and samples[0][0] <= end:
                    newest_archived = samples.pop(0)[1] or newest_archived
                if tick - t0 >= 1:  # the first second: pgbench is still connecting
                    since = newest_archived or started_at  # nothing of the load archived yet: all of it at risk
                    run.rpo.append((now - since).total_seconds())
                if run.mark is None and tick - t0 >= seconds / 2:
                    run.mark = take_mark(cluster.dsn(), t0)
                    run.load_average.append(os.getloadavg())
                time.sleep(max(0.0, 1 - (time.monotonic() - tick)))
        finally:
            if load.poll() is None:
                load.terminate()
            load.wait()
            reader.join()
        run.pgbench = "".join(output)
        assert load.returncode == 0, run.pgbench
        run.wal_bytes = int(conn.execute("SELECT pg_current_wal_insert_lsn() - %s", (start_lsn,)).fetchone()[0])
    run.load_average.append(os.getloadavg())
    return run


def pitr_to_mark(rig: WalRig, cluster: LocalCluster, mark: Mark, where: Path) -> dict[str, Any]:
    """`drp restore --pitr --time T --new-cluster`, then the restored ledger against the mark; the
    restored cluster is removed. Returns the restore's report and what was compared."""
    started = time.monotonic()
    run = rig.drp("restore", "--pitr", "--time", mark.time.isoformat(), "--new-cluster", str(where / "restored"),
                  "--json", timeout=1800, DRP_WORK_DIR=str(where / "work"))
    seconds = time.monotonic() - started
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    port = int(psycopg.conninfo.conninfo_to_dict(report["dsn"])["port"])
    try:
        with psycopg.connect(report["dsn"]) as conn:
            rows = conn.execute("SELECT id, committed_at FROM ledger ORDER BY id").fetchall()
    finally:
        LocalCluster(data_dir=Path(report["data_dir"]), port=port).remove()
    with psycopg.connect(cluster.dsn()) as conn:
        before = conn.execute("SELECT id, committed_at FROM ledger WHERE committed_at < %s ORDER BY id",
                              (mark.time,)).fetchall()
        source_same = conn.execute("SELECT id, committed_at FROM ledger WHERE id = ANY(%s) ORDER BY id",
                                   (mark.ids,)).fetchall()
        source_total = conn.execute("SELECT count(*) FROM ledger").fetchone()[0]
    return {"report": report, "cli_seconds": round(seconds, 1), "restored_rows": rows, "marked_ids": mark.ids,
            "source_rows_before_t": before, "source_rows_marked": source_same,
            "source_rows_total": source_total,
            "checksum": hashlib.sha256(repr(rows).encode()).hexdigest()}


def assert_exact(result: dict[str, Any], mark: Mark) -> None:
    """The restored ledger is exactly the rows committed before T: the marked ids, with the source's values,
    and the same as the source's rows with committed_at < T."""
    rows = result["restored_rows"]
    assert [r[0] for r in rows] == mark.ids, "restored ids differ from the ids committed before T"
    assert rows == result["source_rows_marked"], "restored rows differ from the source's"
    assert rows == result["source_rows_before_t"], "restored rows differ from the source's rows with committed_at < T"
    assert all(r[1] < mark.time for r in rows)
    assert len(rows) < result["source_rows_total"], "no row was committed after T: the check would prove nothing"
