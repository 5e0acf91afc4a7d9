"""Helpers shared by the benchmark scripts (imported as ``_common``: run the scripts by path).

- ``CLUSTER_SETTINGS``: the bulk-load settings every benchmark cluster uses, so numbers compare.
- ``make_base_dir``: a temp dir the ``postgres`` OS user can traverse (we may run as root).
- ``run_measured``: run a command as a child, returning its wall time, CPU time and peak RSS
  (from ``wait4``, so the numbers belong to that child and the descendants it waited for).
- ``stats``, ``machine_info``: median/min summaries and the context a result needs.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import psycopg

# Cluster settings for a bulk load: fewer checkpoints, room for the indexes in memory.
# Durability settings stay at their defaults (fsync on, synchronous_commit on, logged tables).
CLUSTER_SETTINGS = {
    "max_wal_size": "'8GB'",
    "checkpoint_timeout": "'30min'",
    "shared_buffers": "'1GB'",
    "maintenance_work_mem": "'512MB'",
    "wal_buffers": "'64MB'",
}


def make_base_dir(prefix: str, base_dir: Path | str | None = None) -> Path:
    """A new temp dir (in base_dir, else the system default), mode 755: the postgres OS user must reach it."""
    if base_dir is not None:
        Path(base_dir).mkdir(parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix=prefix, dir=base_dir))
    os.chmod(base, 0o755)
    return base


@dataclass
class Measured:
    """One finished child process."""

    seconds: float  # wall clock, spawn to reap
    returncode: int
    maxrss_kb: int  # peak RSS of the child (or of its largest waited-for descendant)
    cpu_seconds: float  # user + system of the child and its waited-for descendants

    def as_dict(self) -> dict[str, Any]:
        return {"seconds": round(self.seconds, 3), "maxrss_kb": self.maxrss_kb, "cpu_seconds": round(self.cpu_seconds, 3)}


def reap(proc: subprocess.Popen, started: float) -> Measured:
    """wait4 the process (instead of Popen.wait) to get its own resource usage."""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return Measured(time.monotonic() - started, proc.returncode, usage.ru_maxrss, usage.ru_utime + usage.ru_stime)


def run_measured(
    cmd: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    stdout: IO[bytes] | int | None = subprocess.DEVNULL,
    input_bytes: bytes | None = None,
    capture: bool = False,
) -> tuple[Measured, bytes]:
    """Run cmd to completion; returns its measurements and (if capture) its stdout. stderr is inherited."""
    started = time.monotonic()
    proc = subprocess.Popen(
        list(cmd),
        stdin=subprocess.PIPE if input_bytes is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE if capture else stdout,
        env=env,
    )
    if input_bytes is not None:
        assert proc.stdin is not None
        proc.stdin.write(input_bytes)  # small: the child reads it all before it works
        proc.stdin.close()
    out = b""
    if capture:
        assert proc.stdout is not None
        out = proc.stdout.read()
        proc.stdout.close()
    return reap(proc, started), out


def stats(values: Sequence[float], digits: int = 3) -> dict[str, Any]:
    return {
        "median": round(statistics.median(values), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
        "all": [round(v, digits) for v in values],
    }


def machine_info(dsn: str) -> dict[str, Any]:
    with psycopg.connect(dsn) as conn:
        server = conn.execute("SHOW server_version").fetchone()[0]
    return {"cpus": os.cpu_count(), "python": platform.python_version(), "postgres": server}
