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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psycopg

from dr_pipelines.core.errors import ClusterError
from dr_pipelines.core.pg.cluster import LocalCluster, port_in_use
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


def first_backup(paths: DemoPaths, cluster: LocalCluster) -> int:
    """Materialize the backup job once in the demo instance (skipped when a backup exists)."""
    prepare_dagster_home(paths)
    env = {**os.environ, **demo_env(paths, cluster)}
    return subprocess.run([sys.executable, "-m", "dr_pipelines.demo.first_backup"], env=env).returncode


def run_ui(paths: DemoPaths, cluster: LocalCluster, *, host: str, port: int,
           on_ready: Callable[[str, str | None], None], waiting: Callable[[float], None],
           archiver: subprocess.Popen[bytes] | None = None) -> int:
    """Run `dagster dev` in the foreground until interrupted, then stop it and the cluster cleanly.

    on_ready(url, problem) is called once the UI answers (problem set if the location failed to
    load); waiting(seconds) meanwhile, so nobody opens a URL that does not answer yet. The WAL
    ``archiver`` (DemoArchiving.start) is stopped after the cluster.
    """
    prepare_dagster_home(paths)
    env = {**os.environ, **demo_env(paths, cluster)}
    workspace = REPO_ROOT / "workspace.yaml"
    target = ["-w", str(workspace)] if workspace.exists() else ["-m", "dr_pipelines.definitions"]
    cmd = [sys.executable, "-m", "dagster", "dev", "-h", host, "-p", str(port), *target]
    child = subprocess.Popen(cmd, env=env, cwd=REPO_ROOT if workspace.exists() else None, start_new_session=True)

    def forward(signum: int, _frame: object) -> None:
        _signal_group(child, signal.SIGINT)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::', '') else host}:{port}"
        served = wait_until_served(url, alive=lambda: child.poll() is None, waiting=waiting)
        if served is not None:
            on_ready(f"http://{host}:{port}", served.error)
        code = child.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if child.poll() is None:
            _signal_group(child, signal.SIGINT)
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                _signal_group(child, signal.SIGKILL)
                child.wait()
        cluster.stop()  # PostgreSQL archives what is ready before it exits, through the archiver
        paths.archiving.stop(archiver)
    # An interrupt that dagster dev did not handle itself is still a clean stop.
    return 0 if code in (0, -signal.SIGINT, 130) else code


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
    if child.poll() is None:
        child.terminate()
        try:
            child.wait(timeout=15)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


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
