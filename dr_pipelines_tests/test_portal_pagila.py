"""The export portal on pagila with ``store`` as the tenant root: each store gets its rows and no other's.

The expected rows of each table are the hand-written queries of test_export_isolation (rental and
payments through customer). Skipped, naming the path, where ../shared/fixtures/pagila is absent.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from dr_pipelines.core.export.run import ExportOptions, export_tenants
from dr_pipelines.core.pg.cluster import LocalCluster
from dr_pipelines.core.settings import load_settings
from dr_pipelines.core.storage.local import LocalStorage
from dr_pipelines.portal.tokens import create_token
from dr_pipelines_tests.support.env import drp_env
from dr_pipelines_tests.support.export import pagila_database
from dr_pipelines_tests.support.portal import PortalServer
from dr_pipelines_tests.test_export_isolation import PAGILA_EXPECTED
from dr_pipelines_tests.test_portal import audit_since, last_audit_id, wait_job


@pytest.fixture(scope="module")
def pagila(pg_cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    name, dsn = pagila_database(pg_cluster)
    root = tmp_path_factory.mktemp("portal-pagila")
    settings = load_settings(env=drp_env(source=dsn, storage=root / "store", work=root / "work",
                                         export_tenant_root="public.store", export_tenant_key="store_id",
                                         export_max_per_hour=0, portal_requests_per_minute=0))
    server = PortalServer(settings)
    with psycopg.connect(dsn, autocommit=True) as conn:
        soon = datetime.now(UTC) + timedelta(hours=1)
        tokens = {s: create_token(conn, s, expires_at=soon, created_by="test")[1] for s in ("1", "2")}
    try:
        yield {"dsn": dsn, "server": server, "tokens": tokens}
    finally:
        server.stop()
        pg_cluster.drop_database(name)


def _ids(dsn: str, query: str, store: str) -> set[str]:
    with psycopg.connect(dsn) as conn:
        return {str(r[0]) for r in conn.execute(query, (int(store),)).fetchall()}


def test_each_store_streams_its_rows_only(pagila: dict[str, Any], tmp_path: Path) -> None:
    server, dsn = pagila["server"], pagila["dsn"]
    clinic = server.get("/api/clinic", pagila["tokens"]["1"]).json()
    assert sorted(clinic["tables"]) == sorted(PAGILA_EXPECTED)
    for store, other in (("1", "2"), ("2", "1")):
        for table, (pk, query) in PAGILA_EXPECTED.items():
            reply = server.get(f"/api/data/{table}?format=jsonl", pagila["tokens"][store])
            assert reply.status == 200 and reply.complete, (table, reply.body[:200])
            got = [json.loads(line) for line in reply.body.splitlines()]
            want, foreign = _ids(dsn, query, store), _ids(dsn, query, other)
            assert {str(r[pk]) for r in got} == want and len(got) == len(want), (store, table)
            assert not {str(r[pk]) for r in got} & foreign, (store, table)
    # Every table in one zip: byte for byte drp export's CSV files of the same (unchanging) database.
    storage = LocalStorage(tmp_path / "ref")
    ref = export_tenants(dsn, storage, ["1"], ExportOptions(root="public.store", key_column="store_id",
                                                            formats=("csv",), max_per_hour=None))
    body = server.get("/api/data?format=csv", pagila["tokens"]["1"]).body
    with zipfile.ZipFile(io.BytesIO(body)) as zf:
        for t in ref.manifest.tables:
            assert zf.read(f"{t.name}.csv") == storage.get_bytes(f"{ref.prefix}/{t.name}.csv"), t.name


def test_store_one_cannot_reach_store_two(pagila: dict[str, Any]) -> None:
    server, dsn, t1, t2 = pagila["server"], pagila["dsn"], pagila["tokens"]["1"], pagila["tokens"]["2"]
    job = server.request("POST", "/api/exports", token=t2, json_body={"formats": ["csv"],
                                                                       "tables": ["public.customer"]}).json()
    job = wait_job(server, t2, job["job_id"])
    assert job["state"] == "succeeded", job
    stream = server.get("/api/data/public.staff?format=csv", t2)
    mark = last_audit_id(dsn)
    paths = [f"/api/exports/{job['job_id']}", f"/api/exports/{job['job_id']}/files/public.customer.csv",
             f"/api/streams/{stream.headers['x-drp-attempt-id']}",
             f"/api/exports/{job['job_id']}/files/..%2F{job['export_id']}%2Fmanifest.json"]
    for path in paths:
        reply = server.get(path, t1)
        assert reply.status == 404 and set(reply.json()) == {"error"}, path
        assert job["export_id"].encode() not in reply.body
    rows = audit_since(dsn, mark)
    assert [r["status"] for r in rows] == ["refused"] * len(paths) and {tuple(r["tenant_ids"]) for r in rows} == {("1",)}
