"""Local PostgreSQL clusters: the demo, the tests, verification restores, drills and --new-cluster restores.

initdb and postgres refuse to run as root, so when we are root every server command runs
as the ``postgres`` OS user (runuser) on a data directory it owns.

Authentication: a cluster gets scram-sha-256 for every connection (TCP and socket) with a
random superuser password, kept only in a libpq passfile (mode 0600) inside its data
directory; the DSNs carry ``passfile=``, never the password. Only the test harness and the
demo ask for ``tcp_trust=True``. Throwaway clusters hold restored health data, so they are
also leased: see core/pg/leases.py.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from dr_pipelines.core.errors import ClusterError
from dr_pipelines.core.pg.binaries import PgBinaries, find_pg_binaries

SUPERUSER = "postgres"
HOST = "127.0.0.1"
START_TIMEOUT_S = 60
MAX_SOCKET_PATH = 107  # sun_path limit (Linux): a longer socket path makes the server refuse to start
PASSFILE = "drp.pgpass"  # libpq passfile in the data directory: the only copy of the superuser's password


def free_port(host: str = HOST) -> int:
    """A TCP port nobody listens on right now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_in_use(port: int, host: str = HOST) -> bool:
    """Whether a server could not listen there; SO_REUSEADDR as servers use it, so TIME_WAIT is not 'in use'."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            return exc.errno in (errno.EADDRINUSE, errno.EACCES)
        return False


def server_os_user() -> str | None:
    """The OS user to run server commands as: 'postgres' when we are root, else ourselves."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(SUPERUSER)
    except KeyError:
        raise ClusterError(
            "running as root, and there is no 'postgres' OS user to run PostgreSQL as",
            fix="create it (`useradd --system postgres`) or run as a non-root user",
        ) from None
    return SUPERUSER


def server_python() -> str:
    """A Python 3 the server's OS user may execute (for stdlib-only helpers such as the WAL client):
    the system one when we are root (our interpreter may sit under /root)."""
    return "/usr/bin/python3" if server_os_user() and os.access("/usr/bin/python3", os.X_OK) else sys.executable


@dataclass
class LocalCluster:
    """One PostgreSQL cluster in ``data_dir``, listening on 127.0.0.1:``port``.

    Password (scram) authentication unless created with ``tcp_trust`` (tests and the demo
    only): a restored copy is health data, and any local user can reach 127.0.0.1.
    """

    data_dir: Path
    port: int
    settings: Mapping[str, str] = field(default_factory=dict)
    binaries: PgBinaries = field(default_factory=find_pg_binaries)
    tcp_trust: bool = False

    @property
    def passfile(self) -> Path:
        return self.data_dir / PASSFILE

    @property
    def log_file(self) -> Path:
        return self.data_dir / "server.log"

    @property
    def socket_dir(self) -> Path:
        return self.data_dir

    def dsn(self, dbname: str = "postgres", user: str = SUPERUSER) -> str:
        """libpq DSN; the password stays in the passfile (out of argv, logs and DSNs)."""
        params = {"host": HOST, "port": str(self.port), "user": user, "dbname": dbname}
        if not self.tcp_trust:
            params["passfile"] = str(self.passfile)
        return psycopg.conninfo.make_conninfo(**params)

    # -- lifecycle -------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        data_dir: Path | str,
        *,
        port: int | None = None,
        settings: Mapping[str, str] | None = None,
        start: bool = True,
        tcp_trust: bool = False,
        binaries: PgBinaries | None = None,
    ) -> LocalCluster:
        """initdb a new cluster (and start it) with `binaries` (default: find_pg_binaries()).
        Removes whatever it made if any step fails.

        ``tcp_trust`` lets anyone on this machine connect without a password: only for the
        test harness and the demo, never for a cluster holding a restored backup.
        """
        data_dir = Path(data_dir).resolve()
        binaries = binaries or find_pg_binaries()
        if port is not None and port_in_use(port):
            raise ClusterError(
                f"port {port} on {HOST} is already in use",
                fix="choose another port, or leave it out to let drp pick a free one",
            )
        if data_dir.exists() and any(data_dir.iterdir()):
            raise ClusterError(
                f"data directory {data_dir} exists and is not empty",
                fix="choose a new directory or remove the old cluster first",
            )
        cluster = cls(data_dir=data_dir, port=port or free_port(), settings=dict(settings or {}), binaries=binaries,
                      tcp_trust=tcp_trust)
        created_dir = not data_dir.exists()
        try:
            cluster._initdb()
            if start:
                cluster.start(retry_other_port=port is None)
        except BaseException:
            cluster.remove(missing_ok=True, keep_dir=not created_dir)
            raise
        return cluster

    @classmethod
    def attach(cls, data_dir: Path | str) -> LocalCluster:
        """A cluster made earlier (by create) in data_dir; its port is read from its config."""
        data_dir = Path(data_dir).resolve()
        conf = data_dir / "postgresql.auto.conf"
        if not (data_dir / "PG_VERSION").exists():
            raise ClusterError(f"no PostgreSQL cluster in {data_dir}", fix="create one first (drp demo up)")
        port = None
        for line in _read_as_owner(conf).splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "port":
                port = int(value.strip().strip("'"))
        if port is None:
            raise ClusterError(f"cluster in {data_dir} has no port configured", fix="recreate it")
        return cls(data_dir=data_dir, port=port, tcp_trust=not (data_dir / PASSFILE).exists())

    def _initdb(self) -> None:
        owner = server_os_user()
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if owner:
            _ensure_reachable(self.data_dir, owner)
            shutil.chown(self.data_dir, owner, owner)
        cmd = [
            self.binaries.tool("initdb"),
            "-D", str(self.data_dir),
            "-U", SUPERUSER,
            "--encoding=UTF8",
            "--locale=C.UTF-8",
            "--data-checksums",
            "--no-instructions",
        ]
        if self.settings.get("fsync") == "off":
            cmd.append("--no-sync")  # a cluster that never fsyncs gains nothing from a synced initdb (~1 s)
        if self.tcp_trust:
            self._run([*cmd, "--auth=trust"], what="initdb")
        else:
            password = secrets.token_urlsafe(32)
            with _password_file(password, owner) as pwfile:
                self._run([*cmd, "--auth=scram-sha-256", f"--pwfile={pwfile}"], what="initdb")
            write_private(self.passfile, f"*:*:*:{SUPERUSER}:{password}\n")
        self.write_settings({**self.listen_settings(), "fsync": "on", **self.settings})

    def listen_settings(self) -> dict[str, str]:
        """Port, 127.0.0.1 and the socket directory, as every cluster drp makes listens."""
        return {
            "port": str(self.port),
            "listen_addresses": f"'{HOST}'",
            # Clients connect over TCP; a data directory too deep for a socket path gets no socket.
            "unix_socket_directories": f"'{self.socket_dir}'"
            if len(os.fsencode(f"{self.socket_dir}/.s.PGSQL.65535")) <= MAX_SOCKET_PATH else "''",
        }

    def write_settings(self, settings: Mapping[str, str]) -> None:
        """Write postgresql.auto.conf (replacing it); values are literal config syntax."""
        body = "".join(f"{k} = {v}\n" for k, v in settings.items())
        self._run(["tee", str(self.data_dir / "postgresql.auto.conf")], what="write settings", stdin=body)

    def start(self, *, retry_other_port: bool = False) -> None:
        """Start and wait until it accepts connections; on failure the message carries the log tail."""
        for attempt in range(3):
            if port_in_use(self.port):
                if not retry_other_port:
                    raise ClusterError(
                        f"port {self.port} on {HOST} is already in use",
                        fix="stop whatever listens there, or create the cluster on another port",
                    )
                self.port = free_port()
                self.write_settings({**self._auto_conf(), "port": str(self.port)})
            try:
                self._run(
                    [self.binaries.tool("pg_ctl"), "-D", str(self.data_dir), "-l", str(self.log_file),
                     "-w", "-t", str(START_TIMEOUT_S), "start"],
                    what="pg_ctl start",
                )
                break
            except ClusterError:
                if attempt == 2 or not retry_other_port or not port_in_use(self.port):
                    raise
        self._wait_ready()

    def launch(self) -> None:
        """pg_ctl start without waiting: an archive recovery can run for hours, and its caller follows it."""
        self._run([self.binaries.tool("pg_ctl"), "-D", str(self.data_dir), "-l", str(self.log_file), "-W", "start"],
                  what="pg_ctl start")

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                with psycopg.connect(self.dsn(), connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise ClusterError(
                        f"PostgreSQL in {self.data_dir} did not accept connections within {START_TIMEOUT_S}s"
                        f"\n{self.log_tail()}",
                        fix="read the server log above",
                    ) from None
                time.sleep(0.2)

    def is_running(self) -> bool:
        result = subprocess.run(
            self._as_owner([self.binaries.tool("pg_ctl"), "-D", str(self.data_dir), "status"]),
            capture_output=True, text=True,
        )
        return result.returncode == 0

    def stop(self, mode: str = "fast") -> None:
        """Stop if running; escalate to immediate if a fast shutdown hangs."""
        if not (self.data_dir / "postmaster.pid").exists():
            return
        if mode == "immediate" and self._quit_now():
            return
        try:
            self._run([self.binaries.tool("pg_ctl"), "-D", str(self.data_dir), "-m", mode, "-w", "-t", "60", "stop"],
                      what="pg_ctl stop")
        except ClusterError:
            if mode == "immediate" or not self.is_running():
                if self.is_running():
                    raise
                return
            self.stop("immediate")

    def _quit_now(self, timeout: float = 60) -> bool:
        """An immediate shutdown as ``pg_ctl -m immediate -w`` does it (SIGQUIT to the pid in postmaster.pid),
        waiting for the pid file to go with 10 ms polls instead of pg_ctl's 100 ms: every throwaway cluster is
        removed this way. False (the caller falls back to pg_ctl) when the file or the process cannot be read
        or signalled, or the server is still there after ``timeout``."""
        pidfile = self.data_dir / "postmaster.pid"
        try:
            pid = int(pidfile.read_text().split("\n", 1)[0])
            os.kill(pid, signal.SIGQUIT)
        except (OSError, ValueError):
            return False
        deadline = time.monotonic() + timeout
        while pidfile.exists():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def remove(self, *, missing_ok: bool = True, keep_dir: bool = False) -> None:
        """Stop and delete the cluster's files (the directory itself unless keep_dir)."""
        if not self.data_dir.exists():
            if missing_ok:
                return
            raise ClusterError(f"no cluster in {self.data_dir}", fix="nothing to remove")
        with contextlib.suppress(ClusterError):
            self.stop("immediate")  # its files are deleted next: no shutdown checkpoint needed
        for attempt in range(5):  # a child the server started (a restore_command) may still write a last file
            if attempt and not self.data_dir.exists():
                return
            try:
                if keep_dir:
                    for child in self.data_dir.iterdir():
                        shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
                else:
                    shutil.rmtree(self.data_dir)
                return
            except (FileNotFoundError, OSError) as exc:
                if attempt == 4 or (not isinstance(exc, FileNotFoundError) and exc.errno != errno.ENOTEMPTY):
                    raise
                time.sleep(0.5)

    # -- conveniences ----------------------------------------------------------------------

    def create_database(self, name: str, *, template: str = "template1") -> str:
        """CREATE DATABASE name; returns its DSN."""
        from psycopg import sql

        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(template)))
        return self.dsn(name)

    def drop_database(self, name: str) -> None:
        from psycopg import sql

        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = _read_as_owner(self.log_file)
        except (ClusterError, OSError):
            return "(no server log)"
        return "\n".join(text.splitlines()[-lines:])

    def read_settings(self) -> dict[str, str]:
        """postgresql.auto.conf as written (values in config syntax), to change some and write it back."""
        return self._auto_conf()

    def _auto_conf(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for line in _read_as_owner(self.data_dir / "postgresql.auto.conf").splitlines():
            key, sep, value = line.partition("=")
            if sep and not key.strip().startswith("#"):
                out[key.strip()] = value.strip()
        return out

    def _as_owner(self, cmd: list[str]) -> list[str]:
        owner = server_os_user()
        return ["runuser", "-u", owner, "--", *cmd] if owner else cmd

    def _run(self, cmd: list[str], *, what: str, stdin: str | None = None) -> None:
        result = subprocess.run(self._as_owner(cmd), input=stdin, capture_output=True, text=True, cwd="/")
        if result.returncode != 0:
            detail = (result.stderr or result.stdout).strip()
            if what.startswith("pg_ctl start"):
                detail = f"{detail}\n{self.log_tail()}"
            raise ClusterError(f"{what} failed for {self.data_dir}: {detail}", fix=_fix_for(detail))

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


@contextlib.contextmanager
def _password_file(password: str, owner: str | None) -> Iterator[Path]:
    """initdb's --pwfile: 0600 in a private 0700 folder, readable by the server's OS user, deleted after."""
    folder = Path(tempfile.mkdtemp(prefix="drp-initdb-"))
    try:
        path = folder / "pw"
        write_private(path, password + "\n")
        if owner:
            shutil.chown(folder, owner, owner)
            shutil.chown(path, owner, owner)
        yield path
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def give_to_server(path: Path) -> None:
    """Hand a directory tree (an extracted base backup, a socket folder) to the server's OS user, when we are root."""
    owner = server_os_user()
    if not owner:
        return
    user = pwd.getpwnam(owner)
    os.chown(path, user.pw_uid, user.pw_gid)
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            os.chown(os.path.join(root, name), user.pw_uid, user.pw_gid, follow_symlinks=False)


def write_private(path: Path, text: str) -> None:
    """Create `path` with mode 0600 from the start (no window where it is readable by others)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _fix_for(detail: str) -> str:
    lowered = detail.lower()
    if "address already in use" in lowered or "could not bind" in lowered:
        return "another server uses the port: stop it or choose another port"
    if "permission denied" in lowered:
        return "make the directory and its parents reachable by the user running PostgreSQL"
    if "no space left" in lowered:
        return "free disk space where the data directory lives"
    return "read the PostgreSQL output above"


def _read_as_owner(path: Path) -> str:
    try:
        return path.read_text()
    except PermissionError:
        owner = server_os_user()
        if not owner:
            raise
        result = subprocess.run(["runuser", "-u", owner, "--", "cat", str(path)], capture_output=True, text=True)
        if result.returncode != 0:
            raise ClusterError(f"cannot read {path}: {result.stderr.strip()}", fix="check permissions") from None
        return result.stdout


def _ensure_reachable(path: Path, owner: str) -> None:
    """Every parent of the data directory must be traversable by the server's OS user."""
    for parent in path.parents:
        mode = parent.stat().st_mode
        if parent.stat().st_uid == pwd.getpwnam(owner).pw_uid:
            continue
        if not mode & 0o001:
            raise ClusterError(
                f"the PostgreSQL OS user '{owner}' cannot reach {path}: {parent} is not traversable (mode {oct(mode & 0o777)})",
                fix=f"choose a data directory under a world-traversable path, or `chmod o+x {parent}`",
            )


@contextlib.contextmanager
def ephemeral_cluster(base_dir: Path | str, name: str = "cluster", **kwargs: object) -> Iterator[LocalCluster]:
    """A cluster that is removed when the block ends, also on error."""
    cluster = LocalCluster.create(Path(base_dir) / name, **kwargs)  # type: ignore[arg-type]
    try:
        yield cluster
    finally:
        cluster.remove()
