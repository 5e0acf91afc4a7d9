"""The Dagster UI as a person sees it, in a real browser: every asset group in the graph, and logical_backup with
its freshness policy (evaluated by the daemon: passing) and passing checks after the demo's first backup.
Saves the README's screenshots (docs/screenshots with DRP_UPDATE_SCREENSHOTS=1)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from dr_pipelines.core.pg.cluster import LocalCluster
from dr_pipelines.definitions import build_definitions
from dr_pipelines.demo import first_backup
from dr_pipelines_tests.support.backup import Keys
from dr_pipelines_tests.support.browser import needs_chromium, screenshot
from dr_pipelines_tests.support.dagster_dev import dagster_dev, dagster_home
from dr_pipelines_tests.support.env import drp_env
from dr_pipelines_tests.support.procs import wait_for

pytestmark = needs_chromium


@pytest.fixture(scope="module")
def dagster_ui(work_base: Path, pg_cluster: LocalCluster, demo_template: str) -> Iterator[str]:
    """The demo's UI, lean: a copy of the seeded clinic database, the demo's first backup (logical_backup and its
    checks) in a fresh DAGSTER_HOME, and `dagster dev` on this code location over that instance."""
    root = work_base / f"dagster-ui-{uuid.uuid4().hex[:6]}"
    home = dagster_home(root)
    name = f"ui_{uuid.uuid4().hex[:10]}"
    dsn = pg_cluster.create_database(name, template=demo_template)
    env = {**drp_env(source=dsn, storage=root / "storage", keys=Keys.make(root / "keys"), work=root / "work"),
           "DAGSTER_HOME": str(home)}
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        assert first_backup.main() == 0  # exactly what `drp demo up` runs before the UI
    try:
        # `dagster dev` as the demo runs it (webserver and daemon), the freshness daemon every 2 s instead of 30 s.
        with dagster_dev(home, {**env, "FRESHNESS_DAEMON_INTERVAL_SECONDS": "2"}, root / "dagster-dev.log") as url:
            yield url
    finally:
        pg_cluster.drop_database(name)


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


def test_asset_graph_lists_every_group(dagster_ui: str, browser: object, work_base: Path) -> None:
    defs = build_definitions()
    groups = {node.group_name for node in defs.resolve_asset_graph().asset_nodes}
    assert {"source", "backups", "verification", "drills", "status", "exports", "wal"} <= groups
    page = open_ui(browser, dagster_ui + "/asset-groups")
    for group in sorted(groups):
        # Each group twice: in the sidebar tree and as a collapsed node of the graph.
        names = page.get_by_text(group, exact=True)
        names.first.wait_for(timeout=30_000)
        assert names.count() >= 2, f"asset group {group!r} is not both in the sidebar and in the graph"
    assert page.get_by_text("Global asset lineage").is_visible()
    screenshot(page, "dagster-asset-graph", work_base / "screenshots")
    page.close()


def test_logical_backup_shows_passing_freshness_and_checks(dagster_ui: str, browser: object,
                                                                  work_base: Path) -> None:
    page = open_ui(browser, dagster_ui + "/assets/logical_backup")
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
    page.goto(dagster_ui + "/assets/logical_backup?view=checks")
    page.get_by_text(f"Checks ({len(checks)})").wait_for(timeout=30_000)
    for check in checks:
        # The check's list entry: its name and its latest result beside it.
        entry = page.locator("span", has=page.locator(f"[title='{check}']")).first
        assert "Succeeded" in entry.inner_text(), (check, entry.inner_text())
    page.get_by_text("Passed", exact=True).wait_for(timeout=10_000)  # the selected check's latest evaluation
    screenshot(page, "dagster-logical-backup-checks", work_base / "screenshots")
    page.close()
