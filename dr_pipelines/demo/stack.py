"""The demo stack: a local PostgreSQL seeded with clinic data, and `dagster dev` over this code location.

Everything lives under one folder (DRP_DEMO_DIR, default .drp/demo): the cluster, the
storage target, the Dagster instance. `drp demo down --purge` removes all of it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psycopg

from dr_pipelines.core.errors import ClusterError
from dr_pipelines.core.pg.cluster import LocalCluster, port_in_use
from dr_pipelines.core.processes import stop_process
from dr_pipelines.demo.archiving import DemoArchiving
from dr_pipelines.demo.schema import MIGRATIONS_DIR
from dr_pipelines.demo.ui import wait_until_served

DEMO_DB = "clinic"
REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class DemoPaths:
    root: Path

    @classmethod
    def default(cls) -> DemoPaths:
        return cls(Path(os.environ.get("DRP_DEMO_DIR", ".drp/demo")).resolve())

    @property
    def pg(self) -> Path:
        return self.root / "pg"

    @property
    def storage(self) -> Path:
        return self.root / "storage"

    @property
    def dagster_home(self) -> Path:
        return self.root / "dagster_home"

    @property
    def settings_file(self) -> Path:
        """The demo's settings for `drp` in a second terminal (see cli_settings_file)."""
        return self.root / "drp.yaml"

    @property
    def key_file(self) -> Path:
        """The demo's age identity. A real deployment keeps it off the backup host."""
        return self.root / "keys" / "backup-key.txt"

    @property
    def archiving(self) -> DemoArchiving:
        """WAL archiving from the start: the archiver's files under <demo>/wal (demo/archiving.py)."""
        return DemoArchiving(self.root, self.storage, self.settings_file)


def cluster_exists(paths: DemoPaths) -> bool:
    return (paths.pg / "PG_VERSION").exists()


def ensure_database(
    paths: DemoPaths,
    *,
    clinics: int,
    scale: float,
    seed: int = 42,
    port: int | None = None,
    progress: Callable[[str, int], None] | None = None,
) -> LocalCluster:
    """Create (or restart) the demo cluster and seed the clinic database once."""
    paths.root.mkdir(parents=True, exist_ok=True)
    os.chmod(paths.root, 0o755)  # the postgres OS user must traverse it when we are root
    if cluster_exists(paths):
        cluster = LocalCluster.attach(paths.pg)
        if not cluster.is_running():
            cluster.start(retry_other_port=port is None)
    else:
        cluster = LocalCluster.create(paths.pg, port=port, settings={"max_wal_size": "'2GB'"}, tcp_trust=True)
    if not database_exists(cluster, DEMO_DB):
        from dr_pipelines.demo.generate import seed_demo

        dsn = cluster.create_database(DEMO_DB)
        try:
            seed_demo(dsn, clinics=clinics, scale=scale, seed=seed, progress=progress)
        except BaseException:
            cluster.drop_database(DEMO_DB)  # nothing half-seeded is left for the next `demo up`
            raise
    return cluster


def database_exists(cluster: LocalCluster, name: str) -> bool:
    with psycopg.connect(cluster.dsn()) as conn:
        return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None


def demo_recipient(paths: DemoPaths) -> str:
    """The demo key pair's public key, generating the pair on first use."""
    from dr_pipelines.core.crypto import generate_identity_file, load_identities

    if not paths.key_file.exists():
        paths.key_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        return generate_identity_file(paths.key_file)
    return str(load_identities(paths.key_file)[0].to_public())


def demo_env(paths: DemoPaths, cluster: LocalCluster) -> dict[str, str]:
    """The environment the code location runs with in the demo."""
    return {
        "DRP_SOURCE_DSN": cluster.dsn(DEMO_DB),
        "DRP_ENCRYPTION_RECIPIENTS": demo_recipient(paths),
        "DRP_AGE_IDENTITY_FILE": str(paths.key_file),
        "DRP_VERIFICATION_PROBES_FILE": str(Path(__file__).with_name("probes.yaml")),
        "DRP_MIGRATIONS_DIR": str(MIGRATIONS_DIR),
        "DRP_STORAGE_URL": str(paths.storage),
        "DRP_WORK_DIR": str(paths.root / "work"),
        "DRP_SCHEDULES_RUNNING": "true",
        "DAGSTER_HOME": str(paths.dagster_home),
    }


def write_cli_settings(paths: DemoPaths, cluster: LocalCluster) -> Path:
    """Write the demo's settings where `drp` finds them (DemoPaths.settings_file), 0600, atomically.

    Rewritten at every `demo up`: the cluster may come back on another port. No secret in it:
    the demo cluster trusts local connections, and the key is referenced by path.
    """
    import yaml

    env = demo_env(paths, cluster)
    data = {name.removeprefix("DRP_").lower(): value for name, value in env.items()
            if name.startswith("DRP_") and name != "DRP_SCHEDULES_RUNNING"}
    target = paths.settings_file
    scratch = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write("# Written by `drp demo up` for `drp` in this checkout; see README (The CLI).\n")
            yaml.safe_dump(data, f, sort_keys=False)
        os.replace(scratch, target)
    finally:
        scratch.unlink(missing_ok=True)
    return target


def cli_settings_file() -> Path | None:
    """The demo's settings file when there is a demo here (DRP_DEMO_DIR, else ./.drp/demo), else None."""
    path = DemoPaths.default().settings_file
    return path if path.is_file() else None


def prepare_dagster_home(paths: DemoPaths) -> None:
    """DAGSTER_HOME with the repository's dagster.yaml (SQLite storage, telemetry off)."""
    paths.dagster_home.mkdir(parents=True, exist_ok=True)
    source = REPO_ROOT / "dagster.yaml"
    target = paths.dagster_home / "dagster.yaml"
    if source.exists():
        shutil.copyfile(source, target)
    else:
        target.write_text("telemetry:\n  enabled: false\n")


def check_ui_port(host: str, port: int) -> None:
    """Refuse early, before any seeding, if the UI's port is taken."""
    if port_in_use(port, host):
        raise ClusterError(
            f"port {port} on {host} is already in use, so the Dagster UI cannot start",
            fix="stop whatever listens there (another `drp demo up`?) or pass --ui-port",
        )


def restorable_backup(paths: DemoPaths) -> str | None:
    """The newest restorable backup in the demo's storage, read from the catalog (milliseconds).

    Lets a second `demo up` skip first_backup's subprocess, which imports Dagster and the code
    location only to find the backup already there (2-6 s before the UI could start).
    """
    from dr_pipelines.core.backup.catalog import list_backups, newest_restorable
    from dr_pipelines.core.storage import open_storage

    if not paths.storage.exists():
        return None
    newest = newest_restorable(list_backups(open_storage(str(paths.storage))))
    return newest.id if newest else None


def first_backup(paths: DemoPaths, cluster: LocalCluster) -> int:
    """Materialize the backup job once in the demo instance (skipped when a backup exists)."""
    prepare_dagster_home(paths)
    env = {**os.environ, **demo_env(paths, cluster)}
    return subprocess.run([sys.executable, "-m", "dr_pipelines.demo.first_backup"], env=env).returncode


STOP_GRACE = 10.0  # seconds `dagster dev` gets to stop on Ctrl-C before its whole session is killed


def run_ui(paths: DemoPaths, cluster: LocalCluster, *, host: str, port: int,
           on_ready: Callable[[str, str | None], None], waiting: Callable[[float], None],
           archiver: subprocess.Popen[bytes] | None = None) -> int:
    """Run `dagster dev` in the foreground until interrupted, then stop it and the cluster cleanly.

    on_ready(url, problem) is called once the UI answers (problem set if the location failed to
    load); waiting(seconds) meanwhile, so nobody opens a URL that does not answer yet. The WAL
    ``archiver`` (DemoArchiving.start) is stopped after the cluster.
    Ctrl-C or SIGTERM is passed on as SIGINT; `dagster dev` interrupted while it loads the code
    location ignores it (for minutes), so after STOP_GRACE, or at a second Ctrl-C, its session
    is killed. The cluster and the archiver are stopped in every case.
    """
    prepare_dagster_home(paths)
    env = {**os.environ, **demo_env(paths, cluster)}
    workspace = REPO_ROOT / "workspace.yaml"
    target = ["-w", str(workspace)] if workspace.exists() else ["-m", "dr_pipelines.definitions"]
    cmd = [sys.executable, "-m", "dagster", "dev", "-h", host, "-p", str(port), *target]
    child = subprocess.Popen(cmd, env=env, cwd=REPO_ROOT if workspace.exists() else None, start_new_session=True)
    stop_asked: list[float] = []  # when the first Ctrl-C / SIGTERM came

    def forward(signum: int, _frame: object) -> None:
        _signal_group(child, signal.SIGKILL if stop_asked else signal.SIGINT)
        stop_asked.append(time.monotonic())

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    code: int | None = None
    try:
        url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::', '') else host}:{port}"
        served = wait_until_served(url, alive=lambda: child.poll() is None and not stop_asked, waiting=waiting)
        if served is not None:
            on_ready(f"http://{host}:{port}", served.error)
        code = _wait_stopping(child, stop_asked)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if child.poll() is None:  # left by an exception: stop it the same way
            _signal_group(child, signal.SIGINT)
            _wait_stopping(child, [time.monotonic()])
        _signal_group(child, signal.SIGKILL)  # whatever dagster dev left in its session (code server, run workers)
        cluster.stop()  # PostgreSQL archives what is ready before it exits, through the archiver
        paths.archiving.stop(archiver)
    # An interrupt that dagster dev did not handle itself is still a clean stop.
    return 0 if stop_asked or code in (0, -signal.SIGINT, 130) else code


def _wait_stopping(child: subprocess.Popen, stop_asked: list[float]) -> int:
    """Wait for child; once a stop was asked, kill its session if it is still there after STOP_GRACE."""
    while True:
        try:
            return child.wait(timeout=0.2)
        except subprocess.TimeoutExpired:
            if stop_asked and time.monotonic() - stop_asked[0] > STOP_GRACE:
                _signal_group(child, signal.SIGKILL)


def start_portal(paths: DemoPaths, cluster: LocalCluster, *, host: str, port: int) -> subprocess.Popen[bytes]:
    """`drp portal serve` beside the Dagster UI (docs/portal.md), its output in <demo>/portal.log."""
    env = {**os.environ, **demo_env(paths, cluster), "DRP_EXPORT_MAX_PER_HOUR": "0"}
    log = open(paths.root / "portal.log", "ab")  # noqa: SIM115 - handed to the child
    try:
        code = "import sys; from dr_pipelines.cli import main; sys.argv[0] = 'drp'; main()"
        return subprocess.Popen([sys.executable, "-c", code, "portal", "serve", "--host", host, "--port", str(port)],
                                env=env, cwd=REPO_ROOT, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    finally:
        log.close()


def stop_portal(child: subprocess.Popen[bytes]) -> None:
    stop_process(child, 15)


def demo_token(cluster: LocalCluster) -> tuple[str, str]:
    """A one-day portal token for the demo's first clinic: (clinic id, token)."""
    from datetime import UTC, datetime, timedelta

    from dr_pipelines.core.pg.connect import connect
    from dr_pipelines.portal.tokens import create_token

    with connect(cluster.dsn(DEMO_DB), autocommit=True) as conn:
        clinic = str(conn.execute("SELECT min(id) FROM clinics").fetchone()[0])
        return clinic, create_token(conn, clinic, expires_at=datetime.now(UTC) + timedelta(days=1),
                                    created_by="drp demo", label="demo")[1]


def _signal_group(child: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(child.pid, sig)
    except ProcessLookupError:
        pass


def down(paths: DemoPaths, *, purge: bool) -> str:
    """Stop the demo cluster; with purge, remove the whole demo folder."""
    if not paths.root.exists():
        return "no demo here"
    if cluster_exists(paths):
        cluster = LocalCluster.attach(paths.pg)
        if purge:
            cluster.remove()
        else:
            cluster.stop()
    paths.archiving.stop()  # left running by a `demo up` that was killed
    if purge:
        shutil.rmtree(paths.root)
        return f"demo removed ({paths.root})"
    return "demo cluster stopped (data kept; `drp demo up` restarts it)"
