"""The README's demo command, end to end: seeded PostgreSQL, `dagster dev` serving this location, clean stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from dr_pipelines.core.pg.cluster import LocalCluster, free_port, port_in_use
from dr_pipelines.demo.status import demo_status
from dr_pipelines_tests.support.procs import drp, wait_for

REPO_ROOT = Path(__file__).resolve().parents[1]


def scripts_demo(*args: str, demo_dir: Path) -> subprocess.CompletedProcess[str]:
    """The README's / runbook's command, as a person types it."""
    env = {**os.environ, "DRP_DEMO_DIR": str(demo_dir), "DRP_VENV": str(Path(sys.executable).parent.parent)}
    return subprocess.run([str(REPO_ROOT / "scripts" / "demo"), *args], env=env, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.slow
def test_demo_up_serves_location_then_stops_cleanly(work_base: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    demo_dir = work_base / "demo"
    ui_port = free_port()
    ui_url = f"http://127.0.0.1:{ui_port}"
    monkeypatch.setenv("DRP_DEMO_DIR", str(demo_dir))
    log = (work_base / "demo.log").open("w")
    proc = subprocess.Popen(
        # Exactly the README's demo command (the venv already exists, so it only checks and starts).
        [str(REPO_ROOT / "scripts" / "demo"), "--clinics", "2", "--scale", "0.3", "--ui-port", str(ui_port)],
        env={**os.environ, "DRP_DEMO_DIR": str(demo_dir), "DRP_VENV": str(Path(sys.executable).parent.parent)},
        stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        report = wait_for(lambda: (r := demo_status(ui_url))["ok"] and r, timeout=180, what="demo UI", interval=2)
        assert report["database"]["clinics"] == 2
        assert report["newest_backup"] is not None  # the demo took a first backup
        assert "source_profile" in report["ui"]["assets"]
        assert set(report["ui"]["schedules"].values()) == {"RUNNING"}
        assert {"source_profile_hourly", "logical_backup_schedule"} <= set(report["ui"]["schedules"])
        assert set(report["ui"]["sensors"].values()) == {"RUNNING"}
        assert {"run_failure_alert", "rpo_breach_alert"} <= set(report["ui"]["sensors"])
        cli = scripts_demo("status", "--ui-url", ui_url, demo_dir=demo_dir)
        assert cli.returncode == 0, cli.stderr
        assert "serves location 'dr_pipelines'" in cli.stdout
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=90)
        log.close()
    assert code == 0, (work_base / "demo.log").read_text()[-3000:]
    assert not port_in_use(ui_port)
    cluster = LocalCluster.attach(demo_dir / "pg")
    assert not cluster.is_running()

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
