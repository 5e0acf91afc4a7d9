"""Run PostgreSQL's archive recovery on an extracted base backup up to a target, then promote.

The server starts once, already listening where it will stay (127.0.0.1 and a unix socket in its
0700 data directory), so no restart follows the promotion. Until it is secured, pg_hba rejects every
TCP connection and trusts only the unix socket, whose directory nobody but the server's OS user and
root can enter (a data directory too deep for a socket path: a private 0700 folder instead). It
archives nothing: ``archive_mode = off`` and no archive command from the first start, so a test
restore can never push WAL into the production repository (pgBackRest's ``--archive-mode=off``).
WAL comes from this process: a WalFetcher (parallel prefetch into a private spool) serves
restore_command's stdlib client on a socket in a private folder (served_restore_command). Progress
is the WAL replayed (``pg_last_wal_replay_lsn``). After promotion (a new timeline) the superuser
gets a fresh random password (the SCRAM verifier is computed client-side, so the password never
reaches the server or its log), kept only in the passfile as for every cluster drp makes
(core/pg/cluster.py); pg_hba becomes scram-only and is reloaded, and a scram login over TCP proves
it took effect before anyone is handed the DSN. The recovery settings leave postgresql.auto.conf
after that reload: the running server keeps them in memory, unused once promoted (a later reload
only logs that they wait for a restart). A recovery that fails or ends before the target raises
PitrError with PostgreSQL's reason; the caller removes the directory.

``pause=True`` (a past database that is only read: a tenant restore's apply or --into-schema) stops
at the target instead (``recovery_target_action = 'pause'``): the server stays a read-only hot standby
on the same timeline, reached over the unix socket only (the 0700 folder above: TCP is still rejected,
no password exists). No promotion, no new timeline, no checkpoint after it, no password or pg_hba
change: ~0.2-0.3 s less at the end of the restore, and a copy nothing can write to.

``socket_only=True`` (a throwaway that is written but never served: a tenant restore's partial past
database, which marks indexes) promotes and then stays as the paused copy is reached: the superuser over
the private unix socket, TCP rejected by pg_hba, no password set. The scram switch, its reload and the
login proving it are skipped (~0.06 s); the recovery settings stay in postgresql.auto.conf (the copy is
never restarted: the lease sweep stops and deletes it).
"""

from __future__ import annotations

import contextlib
import os
import platform
import pwd
import re
import secrets
import shlex
import shutil
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

from dr_pipelines.core.checkpoints import reached
from dr_pipelines.core.errors import ClusterError
from dr_pipelines.core.pg.cluster import (
    MAX_SOCKET_PATH,
    SUPERUSER,
    LocalCluster,
    free_port,
    give_to_server,
    server_os_user,
    server_python,
    write_private,
)
from dr_pipelines.core.progress import Progress
from dr_pipelines.core.restore.targets import PitrError, RecoveryTarget
from dr_pipelines.core.wal.daemon import serving
from dr_pipelines.core.wal.names import format_lsn, parse_lsn
from dr_pipelines.core.wal.restore import WalFetcher

PHASE = "WAL replayed"
LAUNCH_GRACE_S = 15  # for postmaster.pid to appear after `pg_ctl start -W`
POLL_S = 0.02  # promotion: postmaster.pid's status, then one query on a kept connection (part of every restore's end)
PROGRESS_S = 0.1  # replay progress reported at most this often
# postmaster.pid's 8th line (PostgreSQL's pidfile.h, LOCK_FILE_LINE_PM_STATUS): "standby" once hot standby takes
# connections, "ready" once promoted; "starting" before, when a connection attempt would only be refused.
PM_STATUS_LINE = 8
PM_TAKES_CONNECTIONS = ("standby", "ready")
RELOAD_TIMEOUT_S = 30  # for the postmaster to load FINAL_HBA after pg_reload_conf()
LAUNCH_ATTEMPTS = 3  # the free port taken by someone else before the server bound it: another one
# The socket's directory is 0700 (the data directory, or a private folder): only the server's OS user and root.
# TCP is refused until the promoted server has a fresh superuser password and FINAL_HBA is loaded.
RECOVERY_HBA = ("local all all trust\n"
                "host all all 127.0.0.1/32 reject\n"
                "host all all ::1/128 reject\n")
FINAL_HBA = ("local all all scram-sha-256\n"
             "host all all 127.0.0.1/32 scram-sha-256\n"
             "host all all ::1/128 scram-sha-256\n")
# Cleared when recovery starts and kept off: a recovered copy never archives (or streams from) anywhere.
NO_ARCHIVING = {"archive_mode": "off", "archive_command": "''", "archive_library": "''", "primary_conninfo": "''",
                "primary_slot_name": "''"}
FETCH_SOCKET = "drp-fetch"  # beside .s.PGSQL.PORT and shorter: fits wherever socket_dir_in said that fits
SYNCFS_REPORTS_ERRORS = (5, 8)  # Linux: syncfs() returns writeback errors from 5.8 on (PostgreSQL's docs)
RECOVERY_KEYS = ("recovery_init_sync_method", "restore_command", "recovery_target", "recovery_target_time", "recovery_target_lsn",
                 "recovery_target_xid", "recovery_target_name", "recovery_target_inclusive", "recovery_target_action",
                 "recovery_target_timeline")


@dataclass(frozen=True)
class RecoveryResult:
    data_dir: Path
    port: int
    timeline: int  # the new one, begun by the promotion (paused: 0 here; restore_to_point fills in the one replayed)
    replayed_to: str  # the last LSN replayed
    last_commit_time: str | None  # of the last transaction replayed: what the restore holds up to
    seconds: float
    running: bool
    dsn: str | None  # with the passfile, when running (paused, socket_only: the superuser over the private unix socket)
    paused: bool = False  # a read-only hot standby at the target (recover(pause=True))


def conf_value(text: str) -> str:
    """A postgresql.conf string literal."""
    return "'" + text.replace("\\", "\\\\").replace("'", "''") + "'"


def served_restore_command(sock: Path) -> str:
    """restore_command: the stdlib client (``python -I -S``, milliseconds) asks the WalFetcher on ``sock``.

    No fallback to `drp wal fetch`: restore_command exists only while the restore that serves it runs;
    with the socket gone that restore died, and nobody would secure (scram) or follow the promoted
    server. Exit 200 makes PostgreSQL abort instead, and the postgres OS user never needs drp's settings
    or the age identity.
    """
    from dr_pipelines.core.wal import client

    parts = [server_python(), "-I", "-S", client.__file__, "fetch", str(sock), "-"]
    return " ".join(shlex.quote(p) for p in parts) + " %f %p"


def _start_sync() -> dict[str, str]:
    """The first start after a base backup fsyncs the whole data directory (it was not shut down cleanly):
    one fsync per file, thousands of device flushes (2.6-2.8 s on the 1 GB benchmark here), or one syncfs()
    of the file system (0.04-0.9 s). The extraction already started the writeback of every file it wrote
    (core/restore/untar.py), so syncfs finds little left. Only where syncfs reports write errors; the
    setting leaves postgresql.auto.conf with the other recovery settings (the source's choice stays in
    postgresql.conf)."""
    release = platform.release() if platform.system() == "Linux" else ""
    try:
        version = tuple(int(part) for part in release.split("-")[0].split(".")[:2])
    except ValueError:
        return {}
    return {"recovery_init_sync_method": "syncfs"} if version >= SYNCFS_REPORTS_ERRORS else {}


def configure_recovery(data_dir: Path, target: RecoveryTarget, *, restore_command: str, socket_dir: Path,
                       port: int, timeline: str = "latest", extra: Mapping[str, str] | None = None,
                       pause: bool = False) -> None:
    """recovery.signal plus the settings: restore_command, the target, promote (or ``pause``) at it, archiving off,
    listening on 127.0.0.1 and in ``socket_dir`` (0700: the data directory or a private folder), with
    RECOVERY_HBA (TCP rejected). The base backup's own postgresql.auto.conf is kept underneath (its
    tuning), ``extra`` (plain postgresql.conf values, e.g. fsync off for a throwaway) on top; they stay
    after promotion."""
    give_to_server(data_dir)
    os.chmod(data_dir, 0o700)  # it may hold the trusted socket: never group-readable (initdb -g)
    cluster = LocalCluster(data_dir=data_dir, port=port)
    settings = {
        **_without(cluster.read_settings(), RECOVERY_KEYS), **_start_sync(), **(extra or {}),
        **cluster.listen_settings(), "unix_socket_directories": conf_value(str(socket_dir)),
        **NO_ARCHIVING, "hot_standby": "on",
        "restore_command": conf_value(restore_command),
        **{k: conf_value(v) for k, v in target.settings().items()},
        "recovery_target_action": "'pause'" if pause else "'promote'", "recovery_target_timeline": conf_value(timeline),
    }
    cluster.write_settings(settings)
    for name in ("standby.signal", "postmaster.pid", "postmaster.opts", cluster.log_file.name):  # the source's log too
        (data_dir / name).unlink(missing_ok=True)
    _write_hba(data_dir, RECOVERY_HBA)
    (data_dir / "recovery.signal").write_text("")
    give_to_server(data_dir)


def recover(data_dir: Path, target: RecoveryTarget, *, restore_command: str | None = None,
            fetcher: WalFetcher | None = None, start_lsn: int = 0,
            target_lsn: int | None = None, keep_running: bool = True, port: int | None = None,
            progress: Progress | None = None, timeline: str = "latest", socket_dir: Path | None = None,
            settings: Mapping[str, str] | None = None, pause: bool = False, socket_only: bool = False) -> RecoveryResult:
    """Recover ``data_dir`` (an extracted base backup) to ``target`` and promote; PitrError if it cannot.

    WAL comes from ``fetcher``, served on a socket in ``socket_dir`` while the server recovers
    (served_restore_command), or from a ready-made ``restore_command``.

    On success the server runs on 127.0.0.1 with scram (``keep_running``) or is stopped cleanly; it is
    started once (see the module docstring). On failure the server is stopped; removing the directory
    is the caller's (it knows if it made it). ``socket_dir``: a private folder for the fetch socket (in
    the caller's lease, so a killed run's is swept), and for the server's own when the data directory
    is too deep for one; default a new one under the temp dir, removed at the end. ``settings``: see
    configure_recovery's ``extra``. ``pause``: stay a read-only hot standby at the target (see the module
    docstring); it needs a target (time, LSN, xid, name or immediate) and ``keep_running``. ``socket_only``:
    promoted but left reachable over the private socket only (module docstring; needs ``keep_running``).
    """
    if pause and (target.kind == "latest" or not keep_running):
        raise TypeError("recover(pause=True) needs a target short of the archive's end and keep_running")
    if socket_only and not keep_running:
        raise TypeError("recover(socket_only=True) needs keep_running")
    started = time.monotonic()
    own_socket_dir = socket_dir is None
    if socket_dir is None:
        socket_dir = Path(tempfile.mkdtemp(prefix="drp-pitr-"))  # short: a socket path has a 107-byte limit
    give_to_server(socket_dir)
    cluster = LocalCluster(data_dir=data_dir, port=port or free_port())
    server_sockets = data_dir if _socket_fits(data_dir) else socket_dir
    try:
        if not cluster.passfile.exists():
            write_private(cluster.passfile, "")  # marks it as ours for the lease sweep from the first moment
        with contextlib.ExitStack() as serve:
            if fetcher is not None:
                sock = socket_dir / FETCH_SOCKET
                serve.enter_context(serving(fetcher, sock, owner_uid=_server_uid()))
                restore_command = served_restore_command(sock)
            if not restore_command:
                raise TypeError("recover() needs a fetcher or a restore_command")
            for attempt in range(1, LAUNCH_ATTEMPTS + 1):
                configure_recovery(data_dir, target, restore_command=restore_command, socket_dir=server_sockets,
                                   port=cluster.port, timeline=timeline, extra=settings, pause=pause)
                cluster.launch()
                reached("pitr-recovering")
                try:
                    replayed, last_commit, paused = _follow(cluster, server_sockets, start_lsn, target_lsn, progress)
                    break
                except PitrError:
                    if attempt == LAUNCH_ATTEMPTS or not _port_taken(cluster):
                        raise
                    cluster.port = free_port()  # it bound nothing and recovered nothing: start again elsewhere
            if paused:  # read-only at the target: nothing to secure, restore_command is never run again
                new_timeline = 0  # SQL cannot tell a standby's replay timeline: restore_to_point's lineage does
            elif socket_only:  # promoted; pg_hba still rejects TCP and trusts only the private socket
                with _connect(server_sockets, cluster.port) as conn:
                    new_timeline = int(conn.execute(
                        "SELECT pg_walfile_name(pg_current_wal_lsn())").fetchone()[0][:8], 16)
            else:
                new_timeline = _secure(cluster, server_sockets)  # restore_command is never run again once promoted
        if not keep_running:
            cluster.stop()
    except BaseException:
        with contextlib.suppress(ClusterError):
            cluster.stop("immediate")
        raise
    finally:
        if own_socket_dir:
            shutil.rmtree(socket_dir, ignore_errors=True)
    dsn = (_socket_dsn(server_sockets, cluster.port) if paused or socket_only
           else cluster.dsn() if keep_running else None)
    return RecoveryResult(data_dir=data_dir, port=cluster.port, timeline=new_timeline, replayed_to=replayed,
                          last_commit_time=last_commit, seconds=time.monotonic() - started, running=keep_running,
                          dsn=dsn, paused=paused)


def _socket_fits(folder: Path) -> bool:
    return len(os.fsencode(f"{folder}/.s.PGSQL.65535")) <= MAX_SOCKET_PATH


def _port_taken(cluster: LocalCluster) -> bool:
    """Whether the server exited because its TCP port was taken (between free_port and its bind)."""
    log = cluster.log_tail(50)
    return "could not bind" in log or "could not create any TCP/IP sockets" in log


def socket_dir_in(folder: Path) -> Path | None:
    """``folder``/sock (0700) when a socket path there fits the 107-byte limit, else None (use the temp dir)."""
    path = folder / "sock"
    if not _socket_fits(path):
        return None
    path.mkdir(mode=0o700)
    return path


def _server_uid() -> int | None:
    """Who may connect to our sockets besides root: PostgreSQL's OS user (None: ourselves)."""
    owner = server_os_user()
    return pwd.getpwnam(owner).pw_uid if owner else None


def _socket_dsn(socket_dir: Path, port: int, dbname: str = "postgres") -> str:
    """The superuser over the trusted socket (RECOVERY_HBA): in a 0700 folder, so only the server's OS user and root."""
    return psycopg.conninfo.make_conninfo(host=str(socket_dir), port=str(port), user=SUPERUSER, dbname=dbname)


def _connect(socket_dir: Path, port: int) -> psycopg.Connection:
    """The superuser over the trusted socket (RECOVERY_HBA), while the server recovers."""
    return psycopg.connect(_socket_dsn(socket_dir, port), autocommit=True, connect_timeout=5)


def _follow(cluster: LocalCluster, socket_dir: Path, start_lsn: int, target_lsn: int | None,
            progress: Progress | None) -> tuple[str, str | None, bool]:
    """Poll until promoted (or paused at the target: the third value); report replay progress; on the server's
    exit, raise with its reason.

    Every POLL_S: postmaster.pid (the server's own status line says when connections are taken and when
    it is promoted), then, once connections are taken, one query on a kept connection; so promotion is
    seen within ~POLL_S without a refused connection attempt or a backend start per poll. Autocommit and a
    query that reads no table: between polls the session holds no snapshot or lock that could delay
    replay. A connection the server drops is made again at the next poll."""
    total = target_lsn - start_lsn if target_lsn and target_lsn > start_lsn else None
    launched, seen, reported = time.monotonic(), False, 0.0
    conn: psycopg.Connection | None = None
    try:
        while True:
            status = _pm_status(cluster.data_dir)
            if status is not None:
                seen = True
            elif (seen or time.monotonic() - launched > LAUNCH_GRACE_S) and not cluster.is_running():
                raise _failure(cluster)
            if status not in (*PM_TAKES_CONNECTIONS, ""):  # "": status unknown, so try connecting
                time.sleep(POLL_S)
                continue
            try:
                if conn is None:
                    conn = _connect(socket_dir, cluster.port)
                in_recovery, replay, last_commit, paused = conn.execute(
                    "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text, pg_last_xact_replay_timestamp(),"
                    " pg_is_in_recovery() AND pg_get_wal_replay_pause_state() = 'paused'"
                ).fetchone()
            except psycopg.OperationalError:
                if conn is not None:
                    conn.close()
                    conn = None
                time.sleep(POLL_S)  # not consistent yet, or the server went away (checked above)
                continue
            now = time.monotonic()
            if replay and progress and (not in_recovery or paused or now - reported >= PROGRESS_S):
                progress(PHASE, max(0, parse_lsn(replay) - start_lsn), total)
                reported = now
            if not in_recovery or paused:
                return replay or format_lsn(start_lsn), last_commit.isoformat() if last_commit else None, paused
            time.sleep(POLL_S)
    finally:
        if conn is not None:
            conn.close()


def _pm_status(data_dir: Path) -> str | None:
    """postmaster.pid's status ("starting", "standby", "ready", ...); "" if unknown (no such line yet, or the
    file not readable by us); None if there is no postmaster.pid (not started yet, or exited)."""
    try:
        lines = (data_dir / "postmaster.pid").read_text().splitlines()
    except FileNotFoundError:
        return None
    except OSError:
        return ""
    return lines[PM_STATUS_LINE - 1].strip() if len(lines) >= PM_STATUS_LINE else ""


_REASONS = re.compile(r"FATAL|PANIC|error:|could not restore|restore_command|recovery ended|  fix:")


def _failure(cluster: LocalCluster) -> PitrError:
    """PostgreSQL's own reason, with the fetch errors it logged (drp wal fetch writes to the server log)."""
    log = cluster.log_tail(200).splitlines()
    lines = [line.strip() for line in log if _REASONS.search(line)][-8:]
    text = "\n".join(lines) or "\n".join(log[-10:])
    if "recovery ended before configured recovery target was reached" in text:
        return PitrError("recovery ended before the target was reached: the archive holds no WAL up to it (the "
                         f"server was stopped, nothing is left running)\n{text}",
                         fix="choose an earlier target, or restore everything archived with --latest")
    return PitrError(f"recovery failed and was stopped (nothing is left running):\n{text}",
                     fix="read the reason above: a damaged or missing WAL file is named there; `drp wal verify` checks the archive")


def _secure(cluster: LocalCluster, socket_dir: Path) -> int:
    """A random superuser password (passfile only), FINAL_HBA loaded and proven by a scram login over
    TCP, the recovery settings out of postgresql.auto.conf; the new timeline. No restart: the server
    already listens where it stays."""
    password = secrets.token_urlsafe(32)
    with _connect(socket_dir, cluster.port) as conn:
        verifier = conn.pgconn.encrypt_password(password.encode(), SUPERUSER.encode(), b"scram-sha-256")
        conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(SUPERUSER),
                                                                 sql.Literal(verifier.decode())))
        walfile, loaded = conn.execute(
            "SELECT pg_walfile_name(pg_current_wal_lsn()), pg_conf_load_time()").fetchone()
        cluster.passfile.unlink(missing_ok=True)
        write_private(cluster.passfile, f"*:*:*:{SUPERUSER}:{password}\n")
        _write_hba(cluster.data_dir, FINAL_HBA)
        give_to_server(cluster.data_dir)
        # postgresql.auto.conf is still what the server started with: the reload changes pg_hba only
        conn.execute("SELECT pg_reload_conf()")
    _await_reload(cluster, loaded)
    cluster.write_settings({**_without(cluster.read_settings(), RECOVERY_KEYS), **cluster.listen_settings(),
                            **NO_ARCHIVING})
    return int(walfile[:8], 16)


def _await_reload(cluster: LocalCluster, before: object) -> None:
    """Until a scram login over TCP works on a postmaster that reloaded after ``before`` (RECOVERY_HBA
    rejects TCP, so the first success is FINAL_HBA's)."""
    deadline = time.monotonic() + RELOAD_TIMEOUT_S
    while True:
        try:
            with psycopg.connect(cluster.dsn(), connect_timeout=5) as conn:
                if conn.execute("SELECT pg_conf_load_time() > %s", (before,)).fetchone()[0]:
                    return
        except psycopg.OperationalError:
            pass
        if time.monotonic() > deadline:
            raise PitrError(f"the recovered server did not load its scram-only pg_hba.conf within {RELOAD_TIMEOUT_S}s "
                            f"(it was stopped)\n{cluster.log_tail(10)}",
                            fix="read the server log above; retry the restore")
        time.sleep(0.02)


def _write_hba(data_dir: Path, text: str) -> None:
    path = data_dir / "pg_hba.conf"
    path.write_text(text)
    path.chmod(0o600)


def _without(settings: Mapping[str, str], keys: tuple[str, ...]) -> dict[str, str]:
    return {k: v for k, v in settings.items() if k not in keys}

