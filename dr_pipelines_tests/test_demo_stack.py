"""The README's demo command, end to end: seeded PostgreSQL, `dagster dev` serving this location, clean stop."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dr_pipelines.core.pg.cluster import LocalCluster, free_port, port_in_use
from dr_pipelines.core.wal.names import sidecar_key
from dr_pipelines.demo import stack
from dr_pipelines.demo.stack import DemoPaths
from dr_pipelines.demo.status import demo_status
from dr_pipelines_tests.support.procs import drp, wait_for
from dr_pipelines_tests.support.wal import pid_alive, switch_wal

REPO_ROOT = Path(__file__).resolve().parents[1]


def scripts_demo(*args: str, demo_dir: Path) -> subprocess.CompletedProcess[str]:
    """The README's / runbook's command, as a person types it."""
    env = {**os.environ, "DRP_DEMO_DIR": str(demo_dir), "DRP_VENV": str(Path(sys.executable).parent.parent)}
    return subprocess.run([str(REPO_ROOT / "scripts" / "demo"), *args], env=env, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.slow
@pytest.mark.heavy(100)
def test_demo_up_serves_location_then_stops_cleanly(work_base: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    demo_dir = work_base / "demo"
    ui_port = free_port()
    ui_url = f"http://127.0.0.1:{ui_port}"
    portal_port = free_port()
    monkeypatch.setenv("DRP_DEMO_DIR", str(demo_dir))
    log = (work_base / "demo.log").open("w")
    proc = subprocess.Popen(
        # Exactly the README's demo command (the venv already exists, so it only checks and starts).
        [str(REPO_ROOT / "scripts" / "demo"), "--clinics", "2", "--scale", "0.3", "--ui-port", str(ui_port),
         "--portal-port", str(portal_port)],
        env={**os.environ, "DRP_DEMO_DIR": str(demo_dir), "DRP_VENV": str(Path(sys.executable).parent.parent)},
        stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        # The URL is announced only once the UI serves the location: asked right then, it answers.
        announced = f"Dagster UI: {ui_url}"
        wait_for(lambda: announced in (work_base / "demo.log").read_text(), timeout=180, what="UI URL", interval=0.2)
        report = demo_status(ui_url)
        assert report["ok"], report
        printed = (work_base / "demo.log").read_text()
        assert printed.index("starting the Dagster UI") < printed.index(announced)
        assert report["database"]["clinics"] == 2
        assert report["newest_backup"] is not None  # the demo took a first backup
        assert "source_profile" in report["ui"]["assets"]
        assert set(report["ui"]["schedules"].values()) == {"RUNNING"}
        assert {"source_profile_hourly", "logical_backup_schedule"} <= set(report["ui"]["schedules"])
        assert set(report["ui"]["sensors"].values()) == {"RUNNING"}
        assert {"run_failure_alert", "rpo_breach_alert", "wal_archive_watch"} <= set(report["ui"]["sensors"])
        # WAL archiving from the start: a commit and a switch reach storage through the demo's archiver
        archiving = DemoPaths(demo_dir).archiving
        archiver_pid = int(archiving.pid_file.read_text())
        # Started beside Dagster and not waited for (archive_command falls back to `drp wal push` meanwhile).
        try:
            wait_for(lambda: archiving.socket.exists() or not pid_alive(archiver_pid), timeout=90,
                     what="archiver socket", interval=0.2)
        except TimeoutError:
            raise AssertionError(archiving.log_file.read_text()[-3000:] + "\n" + str(archiving.socket)) from None
        assert pid_alive(archiver_pid) and archiving.socket.exists(), archiving.log_file.read_text()[-2000:]
        demo_pg = LocalCluster.attach(demo_dir / "pg")
        segment = switch_wal(demo_pg)
        wait_for(lambda: (demo_dir / "storage" / sidecar_key(segment)).exists(), timeout=60, what="archived segment",
                 interval=0.2)
        assert f"push done {segment}" in archiving.log_file.read_text()  # by the archiver, not the fallback
        # A second terminal while the UI runs (the README's CLI section; details in the test below).
        listed = subprocess.run([str(REPO_ROOT / "scripts" / "drp"), "backup", "list"], capture_output=True, text=True,
                                env=second_terminal_env(DRP_DEMO_DIR=str(demo_dir)), timeout=120)
        assert listed.returncode == 0 and report["newest_backup"] in listed.stdout, listed.stderr
        cli = scripts_demo("status", "--ui-url", ui_url, demo_dir=demo_dir)
        assert cli.returncode == 0, cli.stderr
        assert "serves location 'dr_pipelines'" in cli.stdout
        # The export portal beside the UI, and the demo token it printed works for its clinic.
        import urllib.request

        token = next(line.strip() for line in printed.splitlines() if line.startswith("drpt."))
        clinic = json.loads(urllib.request.urlopen(urllib.request.Request(
            f"http://127.0.0.1:{portal_port}/api/clinic", headers={"Authorization": f"Bearer {token}"}),
            timeout=30).read())
        assert clinic["clinic_id"] == "1" and "public.patients" in clinic["tables"]
        # The page the README points at: announced, and it serves the sign-in form.
        assert f"the clinics' page on http://127.0.0.1:{portal_port}/ " in " ".join(printed.split())
        page = urllib.request.urlopen(f"http://127.0.0.1:{portal_port}/", timeout=30)
        assert page.headers["Content-Type"].startswith("text/html") and b'<label for="token">' in page.read()
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=90)
        log.close()
    assert code == 0, (work_base / "demo.log").read_text()[-3000:]
    assert not port_in_use(ui_port) and not port_in_use(portal_port)
    cluster = LocalCluster.attach(demo_dir / "pg")
    assert not cluster.is_running()
    assert not pid_alive(archiver_pid)  # the archiver stopped with the demo

    # A second start skips the first-backup subprocess (the backup is in storage) and starts Dagster at once;
    # Ctrl-C while `dagster dev` loads the code location (which it ignored for minutes) stops everything.
    log = (work_base / "demo2.log").open("w")
    proc = subprocess.Popen(
        [str(REPO_ROOT / "scripts" / "demo"), "--ui-port", str(ui_port)],
        env={**os.environ, "DRP_DEMO_DIR": str(demo_dir), "DRP_VENV": str(Path(sys.executable).parent.parent)},
        stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        (dagster_dev,) = wait_for(lambda: [c for c in session_children(proc.pid) if b"dagster\x00dev" in cmdline(c)],
                                  timeout=120, what="dagster dev", interval=0.1)
        archiver_pid = int(archiving.pid_file.read_text())  # started before dagster dev
        wait_for(lambda: grpc_listening(dagster_dev), timeout=120, what="the code server loading the location",
                 interval=0.1)
        time.sleep(1.5)  # into the load: before the fix, dagster dev then left its code server running (or served on)
        proc.send_signal(signal.SIGINT)  # Ctrl-C (dagster dev gets it from drp: it has its own session)
        code = proc.wait(timeout=stack.STOP_GRACE + 10)
    finally:
        log.close()
        if proc.poll() is None:  # it hung: leave nothing running
            for leader in session_children(proc.pid):
                os.killpg(leader, signal.SIGKILL)
            proc.kill()
            proc.wait()
            LocalCluster.attach(demo_dir / "pg").stop()
            archiving.stop()
    printed = (work_base / "demo2.log").read_text()
    assert code == 0, printed[-3000:]
    assert session_members(dagster_dev) == []  # dagster dev, its code servers, webserver and daemon: all gone
    assert not LocalCluster.attach(demo_dir / "pg").is_running()
    assert not pid_alive(archiver_pid)
    assert f"demo: backup {report['newest_backup']} in storage, no first backup needed" in printed
    assert "a backup is already materialized" not in printed  # the old 2-6 s subprocess did not run

    # Restart reuses the seeded database (no second seeding), then down --purge removes everything.
    again = drp("demo", "up", "--no-ui", env={"DRP_DEMO_DIR": str(demo_dir)})
    assert again.returncode == 0, again.stderr
    assert "seeded" not in again.stderr
    assert LocalCluster.attach(demo_dir / "pg").is_running()
    status = drp("demo", "status", "--ui-url", ui_url, env={"DRP_DEMO_DIR": str(demo_dir)})
    assert status.returncode == 1  # database up, UI down: not ok
    assert "2 clinics" in status.stdout
    purged = scripts_demo("down", "--purge", demo_dir=demo_dir)
    assert purged.returncode == 0, purged.stderr
    assert not demo_dir.exists()


def session_children(pid: int) -> list[int]:
    """Children of pid that lead their own session (how the demo starts `dagster dev`)."""
    return [child for child, stat in _stats().items() if stat[1] == pid and stat[3] == child]


def session_members(sid: int) -> list[int]:
    """Live (not zombie) processes in session sid."""
    return [child for child, stat in _stats().items() if stat[3] == sid and stat[0] != "Z"]


def grpc_listening(sid: int) -> bool:
    """The code server (`dagster api grpc`) in session sid has made its socket (it is loading the location)."""
    for pid in session_members(sid):
        args = cmdline(pid).split(b"\x00")
        if b"grpc" in args and b"--socket" in args and Path(args[args.index(b"--socket") + 1].decode()).exists():
            return True
    return False


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _stats() -> dict[int, tuple]:
    """pid -> (state, ppid, pgrp, session) from /proc/<pid>/stat."""
    out = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            out[int(entry.name)] = (fields[0], int(fields[1]), int(fields[2]), int(fields[3]))
    return out


def test_code_location_loads_no_heavy_module() -> None:
    """`dagster dev` (and every run worker) imports the code location before the UI answers: the heavy
    libraries of exports, S3 and ADBC stay inside the assets that use them (a guard: ~0.5 s each at load)."""
    code = ("import sys, dr_pipelines.definitions\n"
            "print(','.join(sorted({n.split('.')[0] for n in sys.modules} & {'pyarrow', 'boto3', 'botocore', "
            "'adbc_driver_manager', 'adbc_driver_postgresql', 'pandas', 'numpy'})))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "", f"the code location imports {result.stdout.strip()} at load"


def test_demo_ui_port_in_use_is_a_clean_error(work_base: Path) -> None:
    import socket

    demo_dir = work_base / "demo-busy"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = drp("demo", "up", "--clinics", "1", "--scale", "0.1", "--ui-port", str(port),
                     env={"DRP_DEMO_DIR": str(demo_dir)})
    assert result.returncode != 0
    assert f"port {port}" in result.stderr and "--ui-port" in result.stderr
    assert "Traceback" not in result.stderr
    assert not demo_dir.exists()  # refused before anything was created


def second_terminal_env(**extra: str) -> dict[str, str]:
    """A new terminal: none of the demo's DRP_* variables (scripts/drp finds the venv through DRP_VENV here)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRP_") and k != "DAGSTER_HOME"}
    return {**env, "DRP_VENV": str(Path(sys.executable).parent.parent), **extra}


@pytest.mark.heavy(35)
def test_cli_in_a_second_terminal_sees_the_demo(work_base: Path) -> None:
    """The README: while the demo runs, `scripts/drp status | backup list | health` (or `drp` in the
    checkout) use the demo's database and storage, not the defaults (localhost:5432, ./.drp/storage)."""
    import json
    import stat

    from dr_pipelines.core.backup.catalog import list_backups
    from dr_pipelines.core.storage import open_storage

    checkout = work_base / "checkout"  # the demo as scripts/demo makes it: ./.drp/demo of the checkout
    checkout.mkdir()
    demo_dir = checkout / ".drp" / "demo"
    up = subprocess.run([str(Path(sys.executable).parent / "drp"), "demo", "up", "--no-ui", "--clinics", "1",
                         "--scale", "0.1"], cwd=checkout, env=second_terminal_env(DRP_PG_BIN_DIR=os.environ.get(
                             "DRP_PG_BIN_DIR", "")), capture_output=True, text=True, timeout=300)
    try:
        assert up.returncode == 0, up.stderr
        port = LocalCluster.attach(demo_dir / "pg").port
        settings_file = demo_dir / "drp.yaml"
        assert stat.S_IMODE(settings_file.stat().st_mode) == 0o600
        assert "password" not in settings_file.read_text() and "AGE-SECRET-KEY" not in settings_file.read_text()
        (backup,) = [e.id for e in list_backups(open_storage(str(demo_dir / "storage"))) if e.complete]

        elsewhere = work_base / "elsewhere"  # scripts/drp works from any directory
        elsewhere.mkdir(exist_ok=True)
        env = second_terminal_env(DRP_DEMO_DIR=str(demo_dir))

        def scripts_drp(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([str(REPO_ROOT / "scripts" / "drp"), *args], cwd=elsewhere, env=env,
                                  capture_output=True, text=True, timeout=120)

        readme = (REPO_ROOT / "README.md").read_text()
        assert "```bash\nscripts/drp status\nscripts/drp backup list\nscripts/drp health\n```" in readme  # as tested
        status = json.loads(scripts_drp("status", "--json").stdout)
        assert status["newest_restorable"] == backup and status["backups"] == 1
        assert status["storage"] == f"file://{demo_dir / 'storage'}"
        listed = scripts_drp("backup", "list")
        assert listed.returncode == 0 and backup in listed.stdout, listed.stderr
        health = scripts_drp("health", "--json")
        report = json.loads(health.stdout)
        assert report["reachable"] and report["target"] == f"127.0.0.1:{port}/clinic", health.stderr
        assert "clinic" in {d["name"] for d in report["sections"]["databases"]["databases"]}
        shown = scripts_drp("config", "show")
        assert f"settings from: defaults < {settings_file} (the demo started in this checkout)" in shown.stdout

        # `drp` itself, in the checkout, does the same; any DRP_* setting or DRP_CONFIG turns the demo file off.
        bare = subprocess.run([str(Path(sys.executable).parent / "drp"), "status", "--json"], cwd=checkout,
                              env=second_terminal_env(), capture_output=True, text=True, timeout=120)
        assert json.loads(bare.stdout)["newest_restorable"] == backup, bare.stderr
        assert "using the demo's settings" in bare.stderr
        other = subprocess.run([str(REPO_ROOT / "scripts" / "drp"), "config", "show", "--json"], cwd=elsewhere,
                               env={**env, "DRP_STORAGE_URL": str(work_base / "other")}, capture_output=True,
                               text=True, timeout=60)
        shown_other = json.loads(other.stdout)
        assert shown_other["storage_url"] == str(work_base / "other")
        assert shown_other["source_dsn"] == "user=postgres dbname=clinic host=127.0.0.1 port=5432"  # the default
    finally:
        purged = drp("demo", "down", "--purge", env={"DRP_DEMO_DIR": str(demo_dir)})
    assert purged.returncode == 0, purged.stderr
