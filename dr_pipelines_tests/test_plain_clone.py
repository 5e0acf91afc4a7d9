"""The suite in a user's plain clone: no ../shared beside it, so the pagila tests skip (saying
where the fixture was looked for) and leave nothing behind; templates appear only when complete."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from dr_pipelines.core.pg.cluster import LocalCluster
from dr_pipelines_tests.support.backup import template_database

REPO_ROOT = Path(__file__).resolve().parents[1]
PAGILA_TESTS = ["test_export_scope.py", "test_export_isolation.py", "test_backup_restore.py"]


def test_failed_template_build_leaves_nothing_then_a_good_one_is_built_once(pg_cluster: LocalCluster) -> None:
    def broken(dsn: str) -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE half (id int)")
        raise RuntimeError("fixture load failed halfway")

    with pytest.raises(RuntimeError, match="halfway"):
        template_database(pg_cluster, "tpl_atomic", broken)
    with psycopg.connect(pg_cluster.dsn()) as conn:
        left = conn.execute("SELECT datname FROM pg_database WHERE datname LIKE 'tpl_atomic%'").fetchall()
    assert left == []  # neither the template nor its scratch build

    builds: list[str] = []

    def good(dsn: str) -> None:
        builds.append(dsn)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE whole AS SELECT g AS id FROM generate_series(1, 42) g")

    assert template_database(pg_cluster, "tpl_atomic", good) == "tpl_atomic"
    assert template_database(pg_cluster, "tpl_atomic", good) == "tpl_atomic"
    assert len(builds) == 1
    with psycopg.connect(pg_cluster.dsn("tpl_atomic")) as conn:
        assert conn.execute("SELECT count(*), sum(id) FROM whole").fetchone() == (42, 903)
    pg_cluster.drop_database("tpl_atomic")


@pytest.mark.slow
def test_pagila_tests_skip_naming_the_missing_fixture(tmp_path: Path) -> None:
    """What `scripts/test` does in a clone without ../shared: skips with the path, no failure, no error."""
    missing = tmp_path / "no-shared" / "fixtures" / "pagila"
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["DRP_PAGILA_DIR"] = str(missing)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-k", "pagila",
         *[f"dr_pipelines_tests/{name}" for name in PAGILA_TESTS]],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    summary = result.stdout.strip().splitlines()[-1]
    assert result.returncode == 0, result.stdout[-3000:]
    assert "failed" not in summary and "error" not in summary, summary
    skipped = int(re.search(r"(\d+) skipped", summary).group(1))
    assert skipped >= 4, summary  # two export tests and the pagila variants of the backup tests
    assert re.search(r"passed", summary) is None, summary  # -k pagila selects only pagila tests
    assert f"the pagila fixture is not at {missing}" in result.stdout
    assert result.stdout.count("SKIPPED") >= 1


def test_browser_tests_skip_naming_chromium_when_absent(tmp_path: Path) -> None:
    """A clone on a machine without Chromium: the browser tests skip at collection (no cluster, no server started),
    saying which executable is missing and how to install it."""
    env = {**os.environ, "DRP_CHROMIUM": str(tmp_path / "no-chromium")}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
         "dr_pipelines_tests/test_browser_portal.py",
         "dr_pipelines_tests/test_dagster_dev.py::test_asset_graph_lists_every_group",
         "dr_pipelines_tests/test_dagster_dev.py::test_logical_backup_shows_passing_freshness_and_checks"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    summary = result.stdout.strip().splitlines()[-1]
    assert result.returncode == 0 and re.fullmatch(r"\d+ skipped in .*", summary), result.stdout[-3000:]
    assert f"no Chromium at {tmp_path / 'no-chromium'}" in result.stdout and "apt-get install chromium" in result.stdout
