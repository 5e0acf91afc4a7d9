"""restore_command side: fetch one WAL file, prefetching the next ones into a private spool.

Recovery asks for segments one at a time, each through a new process. Fetching the next N in
parallel into a 0700 spool (files 0600: WAL is health data in clear) turns most requests into a
local rename. Spool files older than the requested one are swept: recovery never asks for them again.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from dr_pipelines.core.errors import ConfigError, DrpError
from dr_pipelines.core.storage import Storage
from dr_pipelines.core.wal.archive import WalNotArchivedError, fetch_wal, write_atomically
from dr_pipelines.core.wal.names import Segment, WalNameError

SPOOL_MODE = 0o700
# restore_command's exit status for a file that exists but cannot be used (corrupt, undecryptable, storage
# down): above 125, PostgreSQL aborts recovery instead of reading it as "end of archive" and promoting short.
ABORT_RECOVERY_EXIT = 200


def prepare_spool(spool: Path) -> Path:
    """Create the spool 0700, or refuse one others can read (it holds WAL in clear)."""
    spool.mkdir(mode=SPOOL_MODE, parents=True, exist_ok=True)
    mode = spool.stat().st_mode & 0o777
    if mode & 0o077:
        raise ConfigError(f"WAL spool {spool} is readable by others (mode {oct(mode)}): it holds WAL in clear",
                          fix=f"chmod 700 {spool} or choose another --spool")
    return spool


def restore_wal(storage: Storage, identities: Sequence[object], name: str, dest: Path, *,
                spool: Path | None = None, prefetch: int = 0) -> str:
    """Put WAL file ``name`` at ``dest``; returns "spool" or "archive" (where it came from)."""
    following = _following(name, prefetch) if spool else []
    source = "archive"
    with ThreadPoolExecutor(max_workers=max(1, min(len(following), 8))) as pool:
        if spool is not None:
            prepare_spool(spool)
            _sweep(spool, name)
            wanted = _refill(spool, following)
            prefetches = [pool.submit(_prefetch, storage, identities, s, spool) for s in wanted]
            cached = spool / name
            if cached.exists():
                _move(cached, dest)
                source = "spool"
        if source == "archive":
            fetch_wal(storage, identities, name, dest)
        if spool is not None:
            for future in prefetches:
                future.result()
    return source


def _following(name: str, count: int) -> list[str]:
    try:
        segment = Segment.parse(name)
    except WalNameError:
        return []  # history and .partial files: no "next one"
    return [s.name for s in segment.following(count)]


def _refill(spool: Path, following: list[str]) -> list[str]:
    """What to prefetch now: nothing while at least half the window is spooled, else every missing one.

    Topping up one segment per request would fetch one at a time (each call waits for its fetches);
    refilling in batches keeps the fetches parallel.
    """
    missing = [s for s in following if not (spool / s).exists()]
    return missing if len(missing) > len(following) // 2 else []


def _prefetch(storage: Storage, identities: Sequence[object], name: str, spool: Path) -> None:
    """Fetch into the spool; a missing or damaged file is left for the real request to report."""
    with contextlib.suppress(WalNotArchivedError, DrpError):
        fetch_wal(storage, identities, name, spool / name)


def _sweep(spool: Path, requested: str) -> None:
    for entry in spool.iterdir():
        if entry.name < requested:  # also leftover temp files (".name…"): recovery is past them
            entry.unlink(missing_ok=True)


def _move(src: Path, dest: Path) -> None:
    """Copy into place atomically, then drop the spool copy (a rename would need both on one file system)."""
    write_atomically(dest, src.read_bytes())
    src.unlink()
