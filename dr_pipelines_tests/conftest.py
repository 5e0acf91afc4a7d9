"""Shared fixtures: real PostgreSQL clusters from our own harness, S3 over HTTP from moto's server."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dr_pipelines.core.pg.binaries import PgBinaries, installed_pg_binaries
from dr_pipelines.core.pg.cluster import LocalCluster
from dr_pipelines_tests.support.browser import browser  # noqa: F401  (fixture)
from dr_pipelines_tests.support.clusters import TEST_CLUSTER_SETTINGS
from dr_pipelines_tests.support.env import drp_env
from dr_pipelines_tests.support.s3 import s3_bucket, s3_server  # noqa: F401  (fixtures)

REPO_ROOT = Path(__file__).resolve().parents[1]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--pg-majors", default="all",
        help="PostgreSQL majors for the per-major tests (pg_binaries_of_major), e.g. 15,17; default: every installed",
    )


def pytest_configure(config: pytest.Config) -> None:
    """Files are handed to xdist workers in the order pytest_collection_modifyitems below gives them: xdist's own
    reordering (most tests first) is turned off, as it put the heaviest files, which hold one or two tests, last."""
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Heaviest files first, so `--dist loadfile` does not end on one long file while the other worker idles
    (longest first is the classic greedy schedule for two machines). A file's weight is the sum of its tests'
    ``heavy(seconds)`` marks; files without one follow by number of tests, as xdist itself orders them.
    A file's tests keep their order."""
    weight: dict[str, float] = {}
    count: dict[str, int] = {}
    first: dict[str, int] = {}
    for index, item in enumerate(items):
        path = item.nodeid.split("::", 1)[0]
        mark = item.get_closest_marker("heavy")
        weight[path] = weight.get(path, 0.0) + (float(mark.args[0]) if mark else 0.0)
        count[path] = count.get(path, 0) + 1
        first.setdefault(path, index)
    items.sort(key=lambda item: (lambda path: (-weight[path], -count[path], first[path]))(
        item.nodeid.split("::", 1)[0]))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Tests taking `pg_binaries_of_major` run once per installed PostgreSQL major (or those --pg-majors names)."""
    if "pg_binaries_of_major" not in metafunc.fixturenames:
        return
    installed = installed_pg_binaries()
    wanted = metafunc.config.getoption("--pg-majors")
    chosen: list[PgBinaries] = installed
    if wanted != "all":
        majors = {int(m) for m in wanted.split(",") if m.strip()}
        chosen = [b for b in installed if b.major in majors]
        missing = majors - {b.major for b in chosen}
        if missing:
            raise pytest.UsageError(f"--pg-majors {wanted}: PostgreSQL {sorted(missing)} not installed "
                                    f"(installed: {[b.major for b in installed]})")
    metafunc.parametrize("pg_binaries_of_major", chosen, ids=[f"pg{b.major}" for b in chosen])


@pytest.fixture(scope="session")
def work_base() -> Iterator[Path]:
    """A scratch folder the postgres OS user can traverse (initdb runs as postgres when we are root)."""
    base = Path(tempfile.mkdtemp(prefix="drp-tests-"))
    os.chmod(base, 0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def dagster_home(work_base: Path) -> Iterator[Path]:
    """Every test sees a DAGSTER_HOME with the repository's dagster.yaml (telemetry off)."""
    home = work_base / "dagster_home"
    home.mkdir()
    shutil.copyfile(REPO_ROOT / "dagster.yaml", home / "dagster.yaml")
    previous = os.environ.get("DAGSTER_HOME")
    os.environ["DAGSTER_HOME"] = str(home)
    yield home
    if previous is None:
        os.environ.pop("DAGSTER_HOME", None)
    else:
        os.environ["DAGSTER_HOME"] = previous


@pytest.fixture(scope="session", autouse=True)
def no_checkout_demo(work_base: Path) -> Iterator[None]:
    """`drp` in tests never picks up a demo started in the developer's checkout (./.drp/demo/drp.yaml)."""
    previous = os.environ.get("DRP_DEMO_DIR")
    os.environ["DRP_DEMO_DIR"] = str(work_base / "no-demo-here")
    yield
    if previous is None:
        os.environ.pop("DRP_DEMO_DIR", None)
    else:
        os.environ["DRP_DEMO_DIR"] = previous


@pytest.fixture(scope="session")
def pg_cluster(work_base: Path) -> Iterator[LocalCluster]:
    """One real PostgreSQL cluster for the whole session (trust on 127.0.0.1: test data only, DSNs stay simple)."""
    cluster = LocalCluster.create(work_base / "pg", settings={**TEST_CLUSTER_SETTINGS, "max_connections": "200",
                                                               "max_wal_size": "'1GB'"},
                                  tcp_trust=True)
    yield cluster
    cluster.remove()


@pytest.fixture
def fresh_db(pg_cluster: LocalCluster) -> Iterator[str]:
    """An empty database per test; its DSN."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    dsn = pg_cluster.create_database(name)
    yield dsn
    pg_cluster.drop_database(name)


@pytest.fixture(scope="session")
def demo_template(pg_cluster: LocalCluster) -> str:
    """A small seeded clinic database, used as a template (copying it is much faster than seeding)."""
    from dr_pipelines.demo.generate import seed_demo
    from dr_pipelines_tests.support.backup import template_database

    return template_database(pg_cluster, "demo_template", lambda dsn: seed_demo(dsn, clinics=3, scale=0.5, seed=7))


@pytest.fixture
def demo_db(pg_cluster: LocalCluster, demo_template: str) -> Iterator[str]:
    """A fresh copy of the seeded clinic database per test; its DSN."""
    name = f"demo_{uuid.uuid4().hex[:12]}"
    dsn = pg_cluster.create_database(name, template=demo_template)
    yield dsn
    pg_cluster.drop_database(name)


@pytest.fixture
def set_drp_env(monkeypatch: pytest.MonkeyPatch) -> Callable[..., dict[str, str]]:
    """Put ``support.env.drp_env(...)`` into this process's environment for one test (Dagster reads settings there)."""
    def apply(**settings: Any) -> dict[str, str]:
        env = drp_env(**settings)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        return env

    return apply
