"""restore_command side: fetch one WAL file, prefetching the next ones into a private spool.

Recovery asks for WAL files one at a time. Fetching the next N in parallel into a 0700 spool (files
0600: WAL is health data in clear) turns most requests into a local copy. Spool files older than
the requested one are swept: recovery never asks for them again. During `drp restore --pitr` the
restore process itself answers restore_command's stdlib client over a unix socket (WalFetcher,
daemon.serving): no drp process start-up per WAL file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from dr_pipelines.core.errors import ConfigError, DrpError
from dr_pipelines.core.pg.cluster import give_to_server
from dr_pipelines.core.storage import Storage
from dr_pipelines.core.wal.archive import WalNotArchivedError, fetch_wal, write_atomically
from dr_pipelines.core.wal.client import ABORT_RECOVERY_EXIT as ABORT_RECOVERY_EXIT  # `drp wal fetch` exits with it
from dr_pipelines.core.wal.names import Segment, WalNameError, timeline_of

SPOOL_MODE = 0o700
PREFETCH_THREADS = 4  # parallel fetches of the served restore_command (each is CPU: decrypt, decompress, hash)


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
    """Rename the spool copy into place; across file systems, copy it atomically, then drop it."""
    try:
        os.replace(src, dest)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        write_atomically(dest, src.read_bytes())
        src.unlink()


def _hand_over(spooled: Path, dest: Path) -> None:
    """``dest`` becomes the spooled file, which stays in the spool until _sweep (a hard link; a copy across
    file systems). PostgreSQL only reads restored files and renames or deletes them."""
    dest.unlink(missing_ok=True)
    try:
        os.link(spooled, dest)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        write_atomically(dest, spooled.read_bytes())


class WalFetcher:
    """Serves restore_command's client (core/wal/client.py ``fetch``) for one recovering data directory.

    A request is ``fetch<TAB>NAME<TAB>DEST``. Only WAL file names are accepted, and DEST must be a
    file directly in ``data_dir``/pg_wal (PostgreSQL passes pg_wal/RECOVERYXLOG or RECOVERYHISTORY,
    relative to the data directory, which the client makes absolute): whoever reaches the socket can
    make this process write decrypted WAL there and nowhere else. The file is handed to the server's
    OS user (we may be root, PostgreSQL runs as postgres) before the answer, so the server can read it.
    Answers "ok SOURCE", "missing …" (not in the archive: end of recovery); failures raise, which the
    socket server reports as "error …" (the client exits 200 and PostgreSQL aborts recovery).
    """

    def __init__(self, storage: Storage, identities: Sequence[object], data_dir: Path, *, spool: Path | None = None,
                 prefetch: int = 0) -> None:
        self.storage, self.identities = storage, identities
        self.pg_wal = Path(os.path.realpath(data_dir / "pg_wal"))
        self.spool, self.prefetch = (prepare_spool(spool) if spool else None), prefetch if spool else 0
        self.lock = threading.Lock()  # PostgreSQL asks one file at a time; the spool is not shared safely
        self.pool = ThreadPoolExecutor(max_workers=max(1, min(self.prefetch, PREFETCH_THREADS)),
                                       thread_name_prefix="wal-prefetch")
        self.ahead: dict[str, Future[None]] = {}  # prefetches started, by name

    def answer(self, line: str) -> str:
        name, dest = self.parse(line)
        with self.lock:
            try:
                source = self._restore(name, dest)
            except WalNotArchivedError as exc:
                return "missing " + str(exc).splitlines()[0]
            give_to_server(dest)
        return f"ok {source}"

    def _restore(self, name: str, dest: Path) -> str:
        """Like restore_wal, but the prefetches outlive the request: the answer does not wait for them.

        A process per request (`drp wal fetch --spool`) must finish its prefetches before it exits; this
        server keeps fetching the next segments while PostgreSQL replays the one it was given.

        The file handed over stays in the spool (a hard link) until a later one is found: at the end of
        archive recovery PostgreSQL asks for the next segment (missing: the end of the archive), then for
        the last one a second time (to begin the new timeline from it), and that answer is then a link
        instead of a second fetch, decryption and 16 MiB write.
        """
        if self.spool is None:
            fetch_wal(self.storage, self.identities, name, dest)
            return "archive"
        source = self._from_spool(name, dest, self.spool)
        _sweep(self.spool, name)  # only once found: a missing one ends recovery, which may ask the last again
        return source

    def _from_spool(self, name: str, dest: Path, spool: Path) -> str:
        for old in [n for n in self.ahead if n < name]:
            del self.ahead[old]
        started = self.ahead.pop(name, None)
        spooled = spool / name
        if started is None and not spooled.exists():
            # PostgreSQL waits for this one: fetch it before starting prefetches that would share the CPU with it
            # (the first request of a restore); none after a failure (the end of the archive).
            fetch_wal(self.storage, self.identities, name, spooled)
            self._prefetch_after(name, spool)
            _hand_over(spooled, dest)
            return "archive"
        self._prefetch_after(name, spool)
        if started is not None:
            started.result()  # _prefetch leaves failures to the real fetch below
        if spooled.exists():
            _hand_over(spooled, dest)
            return "spool"
        fetch_wal(self.storage, self.identities, name, spooled)
        _hand_over(spooled, dest)
        return "archive"

    def _prefetch_after(self, name: str, spool: Path) -> None:
        """Start fetching the next segments into the spool, those not already there or on their way."""
        for following in _following(name, self.prefetch):
            if following not in self.ahead and not (spool / following).exists():
                self.ahead[following] = self.pool.submit(_prefetch, self.storage, self.identities, following, spool)

    def parse(self, line: str) -> tuple[str, Path]:
        """The WAL name and destination of a request, or ConfigError/WalNameError."""
        parts = line.split("\t")
        if len(parts) != 3 or parts[0] != "fetch":
            raise ConfigError(f"not a fetch request: {line[:80]!r}", fix="use the drp client (core/wal/client.py)")
        name, dest = parts[1], Path(parts[2])
        timeline_of(name)  # WalNameError for anything but a WAL file name (no "/", no "..")
        if not dest.is_absolute() or dest.name in ("", ".", "..") or Path(os.path.realpath(dest.parent)) != self.pg_wal:
            raise ConfigError(f"refusing to write WAL file {name} to {str(dest)[:200]}: not a file in {self.pg_wal}",
                              fix="restore_command must pass %p, which PostgreSQL sets inside the recovering pg_wal")
        return name, dest

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
