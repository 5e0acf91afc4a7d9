"""Helpers shared by the benchmark scripts (imported as ``_common``: run the scripts by path).

- ``CLUSTER_SETTINGS``: the bulk-load settings every benchmark cluster uses, so numbers compare.
- ``make_base_dir``: a temp dir the ``postgres`` OS user can traverse (we may run as root).
- ``run_measured`` / ``Launch``: run a command as a child, returning its wall time, CPU time
  and peak RSS (measured by GNU time, so the number is the command's own, not ours).
- ``stats``, ``machine_info``: median/min summaries and the context a result needs.
- ``DrpPython`` (and ``add_cold_bytecode_flag``, ``BYTECODE_DOC``): run ``drp`` children as an installed
  drp runs, with a bytecode cache, so that drp and pgBackRest (a compiled binary) compare on equal terms.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
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


BYTECODE_DOC = """The ``drp`` processes run as an installed drp does: with Python's bytecode cache (a PYTHONPYCACHEPREFIX
under the base dir, filled by one untimed warm-up run). Without it, when PYTHONDONTWRITEBYTECODE is set
and nothing was compiled at install time (``uv pip install`` does not compile by default), every ``drp``
start compiles drp's and its libraries' sources again: ~0.35 s more CPU per start on this machine.
``--cold-bytecode`` keeps the environment as it is, to measure that case; the JSON's ``bytecode_cache``
says which."""


def add_cold_bytecode_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cold-bytecode", action="store_true",
                        help="run drp without a bytecode cache when the environment has none (PYTHONDONTWRITEBYTECODE)")


class DrpPython:
    """The Python environment of the benchmarks' ``drp`` children (see ``BYTECODE_DOC`` for why).

    ``cached`` False (``--cold-bytecode``) leaves the environment untouched. The cache is filled by the
    script's own untimed warm-up run of its drp command (the first run of an installed drp writes it), not by
    ``compileall`` of the whole virtualenv (~10 s, 190 MB here), so it holds what drp imports.
    """

    def __init__(self, base: Path, *, cached: bool = True) -> None:
        self.cached = cached
        self.prefix = base / "pycache"

    def env(self, env: Mapping[str, str]) -> dict[str, str]:
        """env for a drp child: with the cache prefix, and bytecode writing allowed so the warm-up fills it."""
        out = dict(env)
        if self.cached:
            out["PYTHONPYCACHEPREFIX"] = str(self.prefix)
            out.pop("PYTHONDONTWRITEBYTECODE", None)
        return out


@dataclass
class Measured:
    """One finished child process."""

    seconds: float  # wall clock, spawn to reap
    returncode: int
    maxrss_kb: int  # peak RSS of the command (or of its largest waited-for descendant)
    cpu_seconds: float  # user + system of the command and its waited-for descendants

    def as_dict(self) -> dict[str, Any]:
        return {"seconds": round(self.seconds, 3), "maxrss_kb": self.maxrss_kb, "cpu_seconds": round(self.cpu_seconds, 3)}


class Launch:
    """Start a command so that its peak RSS can be read afterwards.

    A child forked (or vforked) from this Python process inherits our RSS high-water mark:
    wait4() on it reports max(our RSS at the fork, its own). So the command runs under GNU
    ``/usr/bin/time`` (a ~2 MB process), which reports the command's own peak. Without it we
    fall back to wait4 and say so (``maxrss_exact`` False).
    """

    TIME = "/usr/bin/time"

    def __init__(self, cmd: Sequence[str], **popen: Any) -> None:
        self.exact = os.access(self.TIME, os.X_OK)
        self._out: str | None = None
        argv = list(cmd)
        if self.exact:
            fd, self._out = tempfile.mkstemp(prefix="bench-time-")
            os.close(fd)
            argv = [self.TIME, "-f", "%M %U %S", "-o", self._out, *argv]
        self.started = time.monotonic()
        self.proc = subprocess.Popen(argv, **popen)

    def reap(self) -> Measured:
        _, status, usage = os.wait4(self.proc.pid, 0)
        seconds = time.monotonic() - self.started
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        if not self._out:
            return Measured(seconds, self.proc.returncode, usage.ru_maxrss, usage.ru_utime + usage.ru_stime)
        try:
            last = Path(self._out).read_text().strip().splitlines()[-1]  # after "Command exited with ..." if any
            rss, user, system = last.split()
            return Measured(seconds, self.proc.returncode, int(rss), float(user) + float(system))
        finally:
            os.unlink(self._out)


def run_measured(
    cmd: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    stdout: IO[bytes] | int | None = subprocess.DEVNULL,
    input_bytes: bytes | None = None,
    capture: bool = False,
) -> tuple[Measured, bytes]:
    """Run cmd to completion; returns its measurements and (if capture) its stdout. stderr is inherited."""
    launch = Launch(
        cmd,
        stdin=subprocess.PIPE if input_bytes is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE if capture else stdout,
        env=env,
    )
    proc = launch.proc
    if input_bytes is not None:
        assert proc.stdin is not None
        proc.stdin.write(input_bytes)  # small: the child reads it all before it works
        proc.stdin.close()
    out = b""
    if capture:
        assert proc.stdout is not None
        out = proc.stdout.read()
        proc.stdout.close()
    return launch.reap(), out


def own_peak_rss_kb() -> int:
    """This process's own peak RSS (VmHWM), unlike getrusage(RUSAGE_SELF), which counts the parent's pre-exec RSS."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


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
