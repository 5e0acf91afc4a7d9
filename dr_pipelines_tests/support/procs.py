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
