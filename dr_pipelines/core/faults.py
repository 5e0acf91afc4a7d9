"""Test-only fault injection: pause a real process at a named point so a test can kill -9 it there.

``DRP_TEST_PAUSE_AT=<point>`` makes the process print ``DRP_TEST_PAUSED <point>`` on stderr
and sleep when it reaches ``pause_point(<point>)``. Unset (always, outside tests), it does nothing.
"""

from __future__ import annotations

import os
import sys
import time

PAUSE_ENV = "DRP_TEST_PAUSE_AT"


def pause_point(point: str) -> None:
    if os.environ.get(PAUSE_ENV) == point:
        sys.stderr.write(f"DRP_TEST_PAUSED {point}\n")
        sys.stderr.flush()
        time.sleep(3600)
