"""Stopping a child process we started: ask (SIGTERM), wait a grace period, then insist (SIGKILL).

One home for the pattern the demo's archiver and portal, and the tests' moto server, all need:
a child that ignores SIGTERM must not keep its parent waiting forever.
"""

from __future__ import annotations

import subprocess


def stop_process(proc: subprocess.Popen, grace_s: float = 10) -> None:
    """Terminate ``proc`` if it still runs, kill it after ``grace_s`` seconds, and reap it."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
