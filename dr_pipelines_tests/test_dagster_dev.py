"""The tests that need a real `dagster dev` (webserver and daemon on this code location, a fresh DAGSTER_HOME with
the repository's dagster.yaml) share one, started once for this file: starting it takes 25-70 s, and it was started
twice when these were two files.

Full exports from the portal as Dagster runs: the clinic's `tenant_export` partition, launched through the
webserver's GraphQL API, followed by the portal's job. What is shown: the job records the run id; the run is in the
instance's history with the clinic's partition, its materialization carries the export id the job serves; the files
download byte for byte from storage and hold exactly the clinic's rows; the export's audit rows name the portal
credential and client address. A run that fails inside Dagster (here: the deployment's hourly limit is 1) turns the
job `failed` with the run's own reason, and a webserver that does not answer fails the job with a reason naming it.

The Dagster UI as a person sees it, in a real browser (these tests skip without Chromium): every asset group in the
graph, and logical_backup with its freshness policy (evaluated by the daemon: passing) and passing checks after the
demo's first backup. Saves the README's screenshots (docs/screenshots with DRP_UPDATE_SCREENSHOTS=1).
"""

from __future__ import annotations

import csv
import hashlib
import io
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import psycopg
import pytest
import yaml

from dr_pipelines.core.layout import export_prefix
from dr_pipelines.core.pg.cluster import LocalCluster, free_port
from dr_pipelines.core.settings import load_settings
from dr_pipelines.core.storage.local import LocalStorage
from dr_pipelines.definitions import build_definitions
from dr_pipelines.demo import first_backup
from dr_pipelines.portal.tokens import create_token
from dr_pipelines_tests.support.backup import Keys
from dr_pipelines_tests.support.browser import needs_chromium, screenshot
from dr_pipelines_tests.support.dagster_dev import dagster_dev, dagster_home
from dr_pipelines_tests.support.env import drp_env
from dr_pipelines_tests.support.portal import PortalServer
from dr_pipelines_tests.support.procs import wait_for

A = "1"


@pytest.fixture(scope="module")
def rig(work_base: Path, pg_cluster: LocalCluster, demo_template: str) -> Iterator[dict[str, Any]]:
    """A copy of the demo data and the demo's first backup (logical_backup and its checks) in a fresh DAGSTER_HOME,
    whose runs allow one export per clinic per hour; `dagster dev` over it (queued runs dequeued every second, the
    freshness daemon every 2 s instead of 30 s); a portal sending its full exports there."""
    root = work_base / f"dagster-dev-{uuid.uuid4().hex[:6]}"
    home = dagster_home(root)
    config = yaml.safe_load((home / "dagster.yaml").read_text())
    config["run_coordinator"]["config"]["dequeue_interval_seconds"] = 1  # the daemon starts queued runs sooner (5 s)
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    name = f"pd_{uuid.uuid4().hex[:10]}"
    dsn = pg_cluster.create_database(name, template=demo_template)
    common = {"source": dsn, "storage": root / "store", "work": root / "work"}
    env = {**drp_env(**common, keys=Keys.make(root / "keys"), export_max_per_hour=1), "DAGSTER_HOME": str(home)}
    try:
        with pytest.MonkeyPatch.context() as mp:
            for key, value in env.items():
                mp.setenv(key, value)
            assert first_backup.main() == 0  # exactly what `drp demo up` runs before the UI
        with dagster_dev(home, {**env, "FRESHNESS_DAEMON_INTERVAL_SECONDS": "2"}, root / "dagster-dev.log") as url:
            settings = load_settings(env=drp_env(**common, export_max_per_hour=0, portal_requests_per_minute=0,
                                                 portal_dagster_url=url))
            server = PortalServer(settings)
            try:
                with psycopg.connect(dsn, autocommit=True) as conn:
                    token = create_token(conn, A, expires_at=datetime.now(UTC) + timedelta(hours=1),
                                         created_by="test")[1]
                yield {"dsn": dsn, "url": url, "home": home, "server": server, "token": token, "common": common,
                       "storage": LocalStorage(root / "store"), "log": root / "dagster-dev.log"}
            finally:
                server.stop()
    finally:
        pg_cluster.drop_database(name)


def finished(server: PortalServer, token: str, job_id: str) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        job = server.get(f"/api/exports/{job_id}", token).json()
        return job if job["state"] in ("succeeded", "failed") else None
    return wait_for(done, timeout=120, what=f"export job {job_id}", interval=0.3)


@pytest.mark.heavy(70)
def test_full_export_is_the_clinics_dagster_run_and_the_job_follows_it(rig: dict[str, Any]) -> None:
    server, token, dsn = rig["server"], rig["token"], rig["dsn"]
    created = server.request("POST", "/api/exports", token=token,
                             json_body={"formats": ["csv"], "tables": ["public.patients"]})
    assert created.status == 202, created.body
    job = finished(server, token, created.json()["job_id"])
    assert job["state"] == "succeeded", (job, rig["log"].read_text()[-3000:])
    with psycopg.connect(dsn) as conn:
        run_id = conn.execute("SELECT run_id FROM drp.portal_exports WHERE job_id = %s", (job["job_id"],)).fetchone()[0]
        want = conn.execute("SELECT id FROM patients WHERE clinic_id = %s ORDER BY id", (int(A),)).fetchall()
        audit = conn.execute("SELECT status, requester, credential_id, client_address, tenant_ids FROM"
                             " drp.export_audit WHERE export_id = %s AND request IS NULL ORDER BY id", (job["export_id"],)).fetchall()
    assert run_id and job["run_id"] == run_id

    # Dagster's own record: the run of tenant_export_job for the clinic's partition, and its materialization.
    instance = dg.DagsterInstance.from_config(str(rig["home"]))
    try:
        run = instance.get_run_by_id(run_id)
        assert run is not None and run.status == dg.DagsterRunStatus.SUCCESS and run.job_name == "tenant_export_job"
        assert run.tags["dagster/partition"] == A and run.tags["drp/portal_job"] == job["job_id"]
        event = instance.get_latest_materialization_event(dg.AssetKey("tenant_export"))
        assert event is not None and event.run_id == run_id
        materialization = event.asset_materialization
        assert materialization is not None and materialization.partition == A
        assert materialization.metadata["export_id"].value == job["export_id"]
        assert A in instance.get_dynamic_partitions("clinics")
    finally:
        instance.dispose()

    # Served exactly as a worker's export: the stored bytes, the clinic's rows and none other.
    (entry,) = job["files"]
    stored = rig["storage"].get_bytes(f"{export_prefix(job['export_id'])}/public.patients.csv")
    body = server.get(entry["href"], token)
    assert body.status == 200 and body.complete and body.body == stored
    assert entry["sha256"] == hashlib.sha256(stored).hexdigest()
    rows = list(csv.DictReader(io.StringIO(body.body.decode())))
    assert [(int(r["id"]),) for r in rows] == want and {r["clinic_id"] for r in rows} == {A}
    assert job["tables"] == [{"table": "public.patients", "rows": len(want)}]
    credential = server.get("/api/clinic", token).json()["credential"]
    assert [a[0] for a in audit] == ["started", "succeeded"]
    assert {(*a[1:4], tuple(a[4])) for a in audit} == {(credential["subject"], credential["id"], "127.0.0.1", (A,))}

    # A run that fails inside Dagster (its deployment allows one export an hour): the job fails with the run's reason.
    again = server.request("POST", "/api/exports", token=token, json_body={"formats": ["jsonl"]}).json()
    failed = finished(server, token, again["job_id"])
    assert failed["state"] == "failed" and failed["run_id"] and failed["run_id"] != run_id
    assert "in the last hour" in failed["error"] and "limit 1" in failed["error"], failed
    assert "Traceback" not in failed["error"]
    instance = dg.DagsterInstance.from_config(str(rig["home"]))
    try:
        assert instance.get_run_by_id(failed["run_id"]).status == dg.DagsterRunStatus.FAILURE  # type: ignore[union-attr]
    finally:
        instance.dispose()
    refused = server.get(f"/api/exports/{failed['job_id']}/files/x.jsonl", token)
    assert refused.status == 409 and refused.json()["error"]["code"] == "not_ready"


def test_a_dagster_webserver_that_does_not_answer_fails_the_job_readably(demo_db: str, tmp_path: Path) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    server = PortalServer(load_settings(env=drp_env(source=demo_db, storage=tmp_path / "store", work=tmp_path / "work",
                                                    export_max_per_hour=0, portal_dagster_url=nowhere)))
    try:
        with psycopg.connect(demo_db, autocommit=True) as conn:
            token = create_token(conn, A, expires_at=datetime.now(UTC) + timedelta(hours=1), created_by="test")[1]
        job = server.request("POST", "/api/exports", token=token, json_body={"formats": ["csv"]}).json()
        job = finished(server, token, job["job_id"])
    finally:
        server.stop()
    assert job["state"] == "failed" and job["run_id"] is None
    assert job["error"].startswith(f"the Dagster webserver at {nowhere} is not answering"), job
    assert not (tmp_path / "store").exists() or not any((tmp_path / "store").rglob("manifest.json"))  # nothing ran
    # A job whose run cannot be asked about keeps its last state across a restart; without Dagster it is closed.
    with psycopg.connect(demo_db, autocommit=True) as conn:
        conn.execute("UPDATE drp.portal_exports SET state = 'running', run_id = 'r-1', error = NULL WHERE job_id = %s",
                     (job["job_id"],))
    without_dagster = load_settings(env=drp_env(source=demo_db, storage=tmp_path / "store", work=tmp_path / "work"))
    for settings, state in ((server.settings, "running"), (without_dagster, "failed")):
        again = PortalServer(settings)
        try:
            seen = again.get(f"/api/exports/{job['job_id']}", token).json()
        finally:
            again.stop()
        assert seen["state"] == state and seen["run_id"] == "r-1", seen
    assert "portal_dagster_url unset" in seen["error"]


def open_ui(browser: object, url: str) -> object:
    """A page on the UI at a README-sized viewport, Dagster's first-visit newsletter dialog dismissed."""
    page = browser.new_page(viewport={"width": 1280, "height": 800})  # type: ignore[attr-defined]
    page.goto(url)
    skip = page.get_by_role("button", name="Skip")
    try:
        skip.click(timeout=5_000)
    except Exception:  # noqa: BLE001 - the dialog is shown once per browser profile, or not at all
        pass
    return page


@needs_chromium
@pytest.mark.heavy(15)
def test_asset_graph_lists_every_group(rig: dict[str, Any], browser: object, work_base: Path) -> None:
    defs = build_definitions()
    groups = {node.group_name for node in defs.resolve_asset_graph().asset_nodes}
    assert {"source", "backups", "verification", "drills", "status", "exports", "wal"} <= groups
    page = open_ui(browser, rig["url"] + "/asset-groups")
    for group in sorted(groups):
        # Each group twice: in the sidebar tree and as a collapsed node of the graph.
        names = page.get_by_text(group, exact=True)
        names.first.wait_for(timeout=30_000)
        assert names.count() >= 2, f"asset group {group!r} is not both in the sidebar and in the graph"
    assert page.get_by_text("Global asset lineage").is_visible()
    screenshot(page, "dagster-asset-graph", work_base / "screenshots")
    page.close()


@needs_chromium
@pytest.mark.heavy(15)
def test_logical_backup_shows_passing_freshness_and_checks(rig: dict[str, Any], browser: object,
                                                                  work_base: Path) -> None:
    page = open_ui(browser, rig["url"] + "/assets/logical_backup")
    # The cron policy of the default backup_cron (02:00 UTC): deadline two hours later, a day's window.
    page.get_by_text("Deadline: At 04:00 AM UTC").wait_for(timeout=30_000)
    assert page.get_by_text("Fresh if materialized no earlier than 24 hours before each deadline").is_visible()
    assert page.get_by_text("backup_id", exact=True).is_visible()  # the first backup's materialization metadata

    def evaluated_passing() -> bool:
        # The daemon's first freshness evaluation lands within seconds; the page shows it after a reload.
        page.reload()
        page.get_by_text("Deadline: At 04:00 AM UTC").wait_for(timeout=30_000)
        return page.get_by_text("Passing", exact=True).count() == 2  # the status row and the policy panel

    wait_for(evaluated_passing, timeout=90, what="logical_backup's freshness evaluated as passing", interval=1)
    assert page.get_by_text("Not evaluated").count() == 0
    screenshot(page, "dagster-logical-backup", work_base / "screenshots")

    checks = sorted(node.key.name for node in build_definitions().resolve_asset_graph().asset_check_nodes
                    if node.key.asset_key.to_user_string() == "logical_backup")
    assert checks == ["manifest_complete", "objects_present"]
    page.goto(rig["url"] + "/assets/logical_backup?view=checks")
    page.get_by_text(f"Checks ({len(checks)})").wait_for(timeout=30_000)
    for check in checks:
        # The check's list entry: its name and its latest result beside it.
        entry = page.locator("span", has=page.locator(f"[title='{check}']")).first
        assert "Succeeded" in entry.inner_text(), (check, entry.inner_text())
    page.get_by_text("Passed", exact=True).wait_for(timeout=10_000)  # the selected check's latest evaluation
    screenshot(page, "dagster-logical-backup-checks", work_base / "screenshots")
    page.close()
