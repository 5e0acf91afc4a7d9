"""`drp` that stops at one checkpoint: ``python -m dr_pipelines_tests.support.paused_drp POINT ARGS...``.

Runs the real CLI with ARGS after registering a checkpoint observer (core/checkpoints.py):
at POINT it prints ``DRP_TEST_PAUSED POINT`` on stderr and sleeps, so a test can kill -9
the process there. Production code never registers an observer; this module is the only one.

A paused process exits (status 143) on SIGTERM. Without that, `drp wal archiver` paused in a push
ignored it: its SIGTERM handler shuts the server down and waits for in-flight pushes (right in
production), and the paused push never finishes, so a failed kill test left it holding the socket.
The handler the command installs still runs; the pause sees the signal through a wakeup fd
(signal.set_wakeup_fd, written by the interpreter for every signal that has a Python handler).
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time
from collections.abc import Callable

from dr_pipelines.cli import main
from dr_pipelines.core import checkpoints
from dr_pipelines_tests.support.procs import PAUSED

PAUSE_S = 3600


def pause_at(point: str, signals: int | None = None) -> Callable[[str], None]:
    """An observer stopping at ``point``; with ``signals`` (a wakeup fd's read end), SIGTERM ends the pause."""
    def observer(reached: str) -> None:
        if reached != point:
            return
        sys.stderr.write(f"{PAUSED} {point}\n")
        sys.stderr.flush()
        deadline = time.monotonic() + PAUSE_S
        while (left := deadline - time.monotonic()) > 0:
            if signals is None:
                time.sleep(left)
            elif select.select([signals], [], [], left)[0] and signal.SIGTERM in os.read(signals, 64):
                os._exit(128 + signal.SIGTERM)  # as if killed there: nothing after the checkpoint runs

    return observer


def watch_signals() -> int:
    """A pipe the interpreter writes every handled signal's number to; its read end (main thread only)."""
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
    return read_end


if __name__ == "__main__":
    checkpoints.observe(pause_at(sys.argv.pop(1), watch_signals()))
    main()
