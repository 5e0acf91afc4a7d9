"""Running our own commands as real subprocesses, and waiting for things to come up."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")
BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[2]
PAUSED = "DRP_TEST_PAUSED"  # what support/paused_drp.py prints when it stops at a checkpoint


def drp(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the installed `drp` entry point; never raises on a non-zero exit."""
    return subprocess.run(
        [str(BIN / "drp"), *args], capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
    )


def wait_for(probe: Callable[[], T | None], *, timeout: float, what: str, interval: float = 1.0) -> T:
    """Call probe until it returns something truthy; its last exception is reported on timeout."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = probe()
            if result:
                return result
        except Exception as exc:  # noqa: BLE001 - reported below
            last = exc
        time.sleep(interval)
    raise TimeoutError(f"{what} not ready after {timeout}s (last error: {last!r})")


def start_paused(args: list[str], env: dict[str, str], point: str, timeout: float = 60) -> subprocess.Popen[str]:
    """Start `drp args` stopping at checkpoint ``point`` and return it once paused there (alive: the caller kills it)."""
    proc = subprocess.Popen([sys.executable, "-m", "dr_pipelines_tests.support.paused_drp", point, *args],
                            env={**os.environ, **env, "PYTHONPATH": _with_repo(os.environ.get("PYTHONPATH"))},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_line(proc, f"{PAUSED} {point}", timeout)
    except AssertionError as exc:
        proc.kill()
        proc.wait()
        raise AssertionError(f"drp {' '.join(args)} never reached {point}: {exc}") from None
    return proc


def wait_for_line(proc: subprocess.Popen[str], marker: str, timeout: float) -> str:
    """Read ``proc``'s stderr until a line containing ``marker``; the text read (AssertionError if none in time).

    Reads the pipe a byte at a time, never past the marker's newline: a buffered ``readline()`` after
    ``select()`` pulls every line already written into Python's buffer, so when the marker arrived with an
    earlier line (a loaded machine: the reader was late) it sat there while ``select()`` waited on an empty
    pipe, and the wait timed out although the process had printed it. Lines after the marker stay in the
    pipe for the caller. Do not mix with ``proc.stderr.readline()`` before this (its buffer is not seen here).
    """
    import select

    assert proc.stderr is not None
    fd, deadline, seen, line = proc.stderr.fileno(), time.monotonic() + timeout, "", b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], min(0.5, max(0.0, deadline - time.monotonic())))
        if not ready:
            continue
        byte = os.read(fd, 1)
        if byte and byte != b"\n":
            line += byte
            continue
        seen += line.decode(errors="replace") + ("\n" if byte else "")
        if marker in line.decode(errors="replace"):
            return seen
        line = b""
        if not byte:  # end of file: the process closed stderr (exited)
            break
    raise AssertionError(f"no {marker!r} within {timeout} s: {(seen + line.decode(errors='replace'))[-2000:]}")


def _with_repo(pythonpath: str | None) -> str:
    """PYTHONPATH with this checkout first, so `-m dr_pipelines_tests...` imports from any working directory."""
    return os.pathsep.join([str(REPO), *([pythonpath] if pythonpath else [])])
