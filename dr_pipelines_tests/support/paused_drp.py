"""`drp` that stops at one checkpoint: ``python -m dr_pipelines_tests.support.paused_drp POINT ARGS...``.

Runs the real CLI with ARGS after registering a checkpoint observer (core/checkpoints.py):
at POINT it prints ``DRP_TEST_PAUSED POINT`` on stderr and sleeps, so a test can kill -9
the process there. Production code never registers an observer; this module is the only one.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

from dr_pipelines.cli import main
from dr_pipelines.core import checkpoints
from dr_pipelines_tests.support.procs import PAUSED


def pause_at(point: str) -> Callable[[str], None]:
    def observer(reached: str) -> None:
        if reached == point:
            sys.stderr.write(f"{PAUSED} {point}\n")
            sys.stderr.flush()
            time.sleep(3600)

    return observer


if __name__ == "__main__":
    checkpoints.observe(pause_at(sys.argv.pop(1)))
    main()
