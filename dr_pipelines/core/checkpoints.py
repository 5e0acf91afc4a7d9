"""Named checkpoints in long operations, with observers: none in production.

A retention apply passes ``after-write`` (objects and manifest stored, segment still
pending), ``after-archive`` (a segment verified, nothing deleted) and ``mid-delete`` (one
delete batch committed, more to come); an export passes ``export-after-first-file``; a WAL
push passes ``wal-after-object`` (stored, not committed) and ``wal-after-sidecar`` (committed,
PostgreSQL not yet told); a point-in-time restore ``base-extracting`` (part of the base backup unpacked) and ``pitr-recovering``
(PostgreSQL started on the extracted base, replaying).
Nothing in dr_pipelines observes them: the crash tests run `drp` through
dr_pipelines_tests/support/paused_drp.py, which registers an observer that stops the real
process at one checkpoint so the test can kill -9 it there.
"""

from __future__ import annotations

from collections.abc import Callable

_observers: list[Callable[[str], None]] = []


def observe(observer: Callable[[str], None]) -> None:
    """Call ``observer(point)`` at every checkpoint this process reaches from now on."""
    _observers.append(observer)


def unobserve(observer: Callable[[str], None]) -> None:
    """Stop calling ``observer`` (an in-process test that observed for one call)."""
    _observers.remove(observer)


def reached(point: str) -> None:
    """Tell the observers (if any) that the operation is at ``point``."""
    for observer in _observers:
        observer(point)
