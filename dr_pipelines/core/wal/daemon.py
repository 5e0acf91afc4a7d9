"""`drp wal archiver`: a long-running process that archives what the tiny client hands it.

One Python process pays interpreter and import start-up once instead of per segment. It answers
``ok`` only once push_wal returned, i.e. the object and its sidecar are durably stored, so
PostgreSQL never marks a segment done that storage does not hold. While PostgreSQL waits for one
segment, the next ``.ready`` ones (pg_wal/archive_status) are pushed by a small worker pool, so
the ack for them is immediate when asked (pgBackRest's asynchronous archiving, with the ack kept).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import socketserver
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

from dr_pipelines.core.errors import ConfigError, DrpError
from dr_pipelines.core.storage import Storage
from dr_pipelines.core.wal.archive import PushResult, push_wal

MAX_REMEMBERED = 1024
# glibc's mallopt parameters (malloc.h) and the values the archiver sets: a push allocates ~16 MiB (the segment)
# plus ~22 MiB (zstd's bound-sized output, age's output); glibc serves that from fresh zeroed pages and
# gives them back after each push.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
KEEP_BELOW = 32 << 20  # glibc's largest mmap threshold (DEFAULT_MMAP_THRESHOLD_MAX on 64-bit)
SERVING_POLL_S = 0.02  # serving(): how long leaving its block can wait for the server thread


def reuse_freed_memory() -> bool:
    """Make glibc keep the pushes' freed buffers for the next push instead of returning them to the kernel.

    For the archiver process (`drp wal archiver` calls it once). By default each 16 MiB buffer is a fresh
    mmap, or, in a worker thread's arena, pages trimmed with madvise after the push, so every push
    page-faults and zeroes ~40 MiB again: perf showed faults, zeroing and trimming at ~15 % of the archiver's
    CPU (sys time 22 % of it, 6 % after). Buffers below 32 MiB then come from the heap, which is not
    trimmed below 128 MiB: peak RSS 201 MB instead of 190 MB with 4 workers. False without glibc's
    mallopt (another C library: nothing changes).
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(M_MMAP_THRESHOLD, KEEP_BELOW) == 1 and mallopt(M_TRIM_THRESHOLD, 4 * KEEP_BELOW) == 1


class Archiver:
    """Pushes WAL files with a worker pool; one job per name at a time, failed jobs retried on request."""

    def __init__(self, storage: Storage, recipients: Sequence[object], *, workers: int = 4, read_ahead: int = 8,
                 log: Callable[[str], None] = lambda line: None) -> None:
        self.storage, self.recipients = storage, recipients
        self.read_ahead = read_ahead
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="wal-push")
        self.jobs: dict[str, Future[PushResult]] = {}
        self.lock = threading.Lock()
        self.log = log

    def push(self, path: Path) -> PushResult:
        """Archive ``path`` (and start its successors); returns once it is durably stored."""
        future = self._submit(path)
        self._start_read_ahead(path)
        try:
            return future.result()
        finally:
            with self.lock:
                if self.jobs.get(path.name) is future:
                    del self.jobs[path.name]  # acked or failed: a new request pushes (or no-ops) again

    def answer(self, line: str) -> str:
        """The client's request: an absolute WAL path; "ok STATUS" once stored."""
        line = line.strip()
        if not line.startswith("/"):
            raise ConfigError(f"expected an absolute WAL path, got {line[:80]!r}", fix="use the drp client")
        return f"ok {self.push(Path(line)).status}"

    def _submit(self, path: Path) -> Future[PushResult]:
        with self.lock:
            future = self.jobs.get(path.name)
            if future is None or (future.done() and future.exception() is not None):
                future = self.pool.submit(self._push_one, path)
                self.jobs[path.name] = future
            if len(self.jobs) > MAX_REMEMBERED:  # read-ahead results PostgreSQL never asked for
                for name in sorted(n for n, f in self.jobs.items() if f.done())[: MAX_REMEMBERED // 2]:
                    del self.jobs[name]
            return future

    def _push_one(self, path: Path) -> PushResult:
        started = time.monotonic()
        self.log(f"push start {path.name}")
        try:
            result = push_wal(self.storage, self.recipients, path)
        except Exception as exc:
            self.log(f"push failed {path.name}: {str(exc).splitlines()[0]}")
            raise
        phases = " ".join(f"{phase} {ms:.1f}" for phase, ms in result.cpu_ms.items())
        self.log(f"push done {path.name} {result.status} {1000 * (time.monotonic() - started):.0f} ms; cpu ms: {phases}")
        return result

    def _start_read_ahead(self, path: Path) -> None:
        if self.read_ahead <= 0:
            return
        status = path.parent / "archive_status"
        try:
            ready = sorted(e.name[: -len(".ready")] for e in os.scandir(status) if e.name.endswith(".ready"))
        except OSError:
            return
        for name in [n for n in ready if n > path.name][: self.read_ahead]:
            self._submit(path.parent / name)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


class SegmentSwitcher:
    """Closes the open WAL segment once it has held writes for ``every`` seconds: the RPO bound.

    A backstop to archive_timeout, which PostgreSQL ignores for up to checkpoint_timeout after every
    server start (the checkpointer's first sleep, docs/wal.md). A tick switches when the segment is the same as at the previous
    tick and a transaction id was assigned since (so an idle server, whose WAL holds only
    housekeeping records, is left alone). The first tick (at start, or after a lost connection)
    cannot know what the open segment holds, so it counts as "written": the next tick switches if
    the segment is still open; a commit made just before the archiver started is otherwise never
    switched out on a server that then goes quiet (pg_switch_wal() is a no-op on an unwritten
    segment, so this costs nothing when idle). Needs pg_switch_wal() rights (superuser or GRANT EXECUTE).
    """

    def __init__(self, dsn: str, every: float, log: Callable[[str], None]) -> None:
        self.dsn, self.every, self.log = dsn, every, log
        self.stop = threading.Event()
        self.switches = 0
        self._thread = threading.Thread(target=self._run, name="wal-switcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self.stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        previous: tuple[str, int] | None = None
        while not self.stop.wait(self.every):
            try:
                previous = self._tick(previous)
            except DrpError as exc:  # the server restarting is not our failure: try again next tick
                self.log(f"switcher: {str(exc).splitlines()[0]}")
                previous = None
            except Exception as exc:  # noqa: BLE001 - logged, the archiver keeps serving
                self.log(f"switcher: {type(exc).__name__}: {exc}")
                previous = None

    def _tick(self, previous: tuple[str, int] | None) -> tuple[str, int]:
        from dr_pipelines.core.pg.connect import connect

        with connect(self.dsn, autocommit=True, connect_timeout=5) as conn:
            query = "SELECT pg_walfile_name(pg_current_wal_lsn()), pg_snapshot_xmax(pg_current_snapshot())::text::bigint"
            segment, next_xid = conn.execute(query).fetchone()
            if previous is None:
                return segment, -1  # unknown content: switch on the next tick unless it has moved on
            if previous[0] == segment and next_xid > previous[1]:
                conn.execute("SELECT pg_switch_wal()")
                self.switches += 1
                self.log(f"forced WAL switch: {segment} held writes for {self.every:.0f} s")
                segment, next_xid = conn.execute(query).fetchone()
        return segment, next_xid


class Service(Protocol):
    """What a socket serves: one request line in, one reply line out ("ok …", "missing …")."""

    def answer(self, line: str) -> str: ...

    def close(self) -> None: ...


class _Handler(socketserver.StreamRequestHandler):
    server: _Server

    def handle(self) -> None:
        line = self.rfile.readline(65536).decode(errors="replace").rstrip("\n")
        try:
            reply = self.server.service.answer(line).replace("\n", " ") + "\n"
        except DrpError as exc:
            reply = "error " + " | ".join(str(exc).splitlines()) + "\n"
        except Exception as exc:  # noqa: BLE001 - reported to the client, which fails the command
            reply = f"error {type(exc).__name__}: {exc}\n".replace("\n", " ").rstrip() + "\n"
        with contextlib.suppress(OSError):
            self.wfile.write(reply.encode())


class _Server(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True
    service: Service


def prepare_socket(sock_path: Path, owner_uid: int | None = None) -> None:
    """The socket's directory must be private (0700) and owned by ``owner_uid`` (default: us): whoever
    can connect can make us read (archiver) or write (fetch server) files."""
    directory = sock_path.parent
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = directory.stat()
    mode = info.st_mode & 0o777
    owner = os.geteuid() if owner_uid is None else owner_uid
    if mode & 0o077:
        raise ConfigError(f"socket directory {directory} is accessible by others (mode {oct(mode)})",
                          fix=f"chmod 700 {directory}, owned by the PostgreSQL OS user")
    if info.st_uid != owner:
        raise ConfigError(f"socket directory {directory} is owned by uid {info.st_uid}, not by uid {owner}: "
                          "its owner controls who can connect",
                          fix=f"run the archiver as the PostgreSQL OS user and `chown` {directory} to it (mode 700)")
    if sock_path.exists():
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(sock_path))
        except OSError:
            sock_path.unlink()  # left by a killed server
        else:
            raise ConfigError(f"a server already listens on {sock_path}", fix="stop it first, or use another --socket")
        finally:
            probe.close()


def check_source_archives(dsn: str, log: Callable[[str], None]) -> None:
    """Refuse to start for a source that archives nothing (WalArchivingOffError); warn on another archive_command.

    A server that cannot be reached (not started yet, a role without pg_monitor) is only logged: the
    archiver must be up before PostgreSQL asks it for anything.
    """
    import psycopg

    from dr_pipelines.core.wal.status import archiving_warnings, read_pg_wal_state, require_archiving

    try:
        state = read_pg_wal_state(dsn)
    except (DrpError, psycopg.Error) as exc:
        log(f"cannot check the source's archive settings: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
        return
    require_archiving(state)
    for warning in archiving_warnings(state):
        log(f"WARNING: {warning}")


def _bind(service: Service, sock_path: Path, owner_uid: int | None) -> _Server:
    """Listen on ``sock_path`` (0600, given to ``owner_uid``: the only user besides root who may connect)."""
    prepare_socket(sock_path, owner_uid)
    server = _Server(str(sock_path), _Handler)
    server.service = service
    os.chmod(sock_path, 0o600)
    if owner_uid is not None and owner_uid != os.geteuid():
        os.chown(sock_path, owner_uid, -1)
    return server


def _close(server: _Server, sock_path: Path) -> None:
    server.server_close()
    with contextlib.suppress(FileNotFoundError):
        sock_path.unlink()
    server.service.close()


def serve(archiver: Service, sock_path: Path, *, ready: Callable[[], None] = lambda: None) -> None:
    """Serve in the foreground until SIGTERM/SIGINT (`drp wal archiver`); in-flight requests finish before exit."""
    server = _bind(archiver, sock_path, None)

    def stop(*_: object) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    ready()
    try:
        server.serve_forever(poll_interval=0.5)
    finally:
        _close(server, sock_path)


@contextlib.contextmanager
def serving(service: Service, sock_path: Path, *, owner_uid: int | None = None) -> Iterator[None]:
    """Serve from a background thread for the life of the block (the recovery's WAL fetches).

    Leaving the block waits for serve_forever to see the shutdown, which it checks once per
    SERVING_POLL_S: the restore that serves returns only then, so the interval is short (an idle
    select() wake-up 50 times a second; it was 0.2 s, ~0.1 s of every restore's end)."""
    server = _bind(service, sock_path, owner_uid)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": SERVING_POLL_S},
                              name="drp-serve", daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        thread.join()
        _close(server, sock_path)


def stderr_log(line: str) -> None:
    sys.stderr.write(f"{time.strftime('%H:%M:%S')} {line}\n")
    sys.stderr.flush()
