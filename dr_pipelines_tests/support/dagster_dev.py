"""`dagster dev` (webserver and daemon, as the demo runs it) on this code location over a given DAGSTER_HOME."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dr_pipelines.core.pg.cluster import free_port
from dr_pipelines.demo.stack import STOP_GRACE
from dr_pipelines.demo.ui import code_locations
from dr_pipelines_tests.support.procs import REPO, wait_for


def dagster_home(root: Path) -> Path:
    """<root>/dagster_home with the repository's dagster.yaml (SQLite storage, QueuedRunCoordinator, no telemetry)."""
    home = root / "dagster_home"
    home.mkdir(parents=True)
    (home / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text())
    return home


@contextmanager
def dagster_dev(home: Path, env: dict[str, str], log_path: Path) -> Iterator[str]:
    """The UI's URL once it serves the code location; on exit SIGINT (dagster dev stops its webserver, daemon,
    code servers and runs), then SIGKILL to the group after the demo's grace (stack.STOP_GRACE). A clean stop is
    the demo's to prove (test_demo_stack); here it sometimes ignored SIGINT for the whole minute the helper used to
    wait (seen in full runs: 62-63 s teardowns), which only held a worker."""
    port = free_port()
    log = log_path.open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "dagster", "dev", "-h", "127.0.0.1", "-p", str(port), "-w", str(REPO / "workspace.yaml")],
        cwd=REPO, env={**os.environ, **env, "DAGSTER_HOME": str(home)}, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: [loc for loc in code_locations(url) if loc.assets], timeout=120, what="dagster dev",
                 interval=0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=STOP_GRACE)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError):  # whatever is left in its session (code server, run workers)
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        log.close()
