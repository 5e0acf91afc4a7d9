"""WAL archiving to S3 (moto over HTTP, through a proxy we can switch off) on a real PostgreSQL.

Segments round-trip byte-exact; with the endpoint down nothing is dropped: pg_wal keeps the
segments, `drp wal status` reports the lag and pg_wal growth and exits non-zero; once the endpoint
is back PostgreSQL's retries drain the backlog and `drp wal verify` is clean.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import psycopg

from dr_pipelines.core.pg.cluster import LocalCluster
from dr_pipelines.core.wal.names import object_key
from dr_pipelines.core.wal.status import read_pg_wal_state, wal_alerts
from dr_pipelines_tests.support.procs import wait_for
from dr_pipelines_tests.support.proxy import TcpProxy
from dr_pipelines_tests.support.s3 import MotoServer
from dr_pipelines_tests.support.wal import WalRig, archiver_stats, pg_wal_file, switch_wal, wait_archived


def status(rig: WalRig, cluster: LocalCluster, **env: str) -> tuple[int, dict]:
    result = rig.drp("wal", "status", "--json", DRP_SOURCE_DSN=cluster.dsn(), **env)
    return result.returncode, json.loads(result.stdout)


def state(cluster: LocalCluster) -> dict:
    """What `drp wal status` reads, in-process, with the default limits."""
    current = read_pg_wal_state(cluster.dsn())
    return {**current.as_dict(), "alerts": wal_alerts(current, lag_limit_s=300, pg_wal_limit_bytes=8 << 30)}


def checkpoint(cluster: LocalCluster) -> None:
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        conn.execute("CHECKPOINT")


def test_s3_roundtrip_outage_and_recovery(work_base: Path, s3_server: MotoServer, s3_bucket: str,
                                          tmp_path: Path) -> None:
    endpoint = urlsplit(s3_server.endpoint_url)
    proxy = TcpProxy(endpoint.hostname or "127.0.0.1", endpoint.port or 80)
    rig = WalRig.make(work_base / f"wal-s3-{uuid.uuid4().hex[:8]}", storage={
        "storage_url": f"s3://{s3_bucket}/clinic-a", "s3_endpoint_url": proxy.url, "s3_region": s3_server.region,
        "s3_access_key_id": s3_server.access_key, "s3_secret_access_key": s3_server.secret_key})
    settings = {**rig.cluster_settings(), "wal_keep_size": "0", "min_wal_size": "'32MB'"}
    cluster = LocalCluster.create(rig.root / "pg", settings=settings, tcp_trust=True)
    try:
        with rig.archiver():
            name = switch_wal(cluster)
            wait_archived(cluster, name)
            keys = [o["Key"] for o in s3_server.client().list_objects_v2(Bucket=s3_bucket)["Contents"]]
            assert f"clinic-a/{object_key(name)}" in keys
            fetched = rig.drp("wal", "fetch", name, str(tmp_path / name))
            assert fetched.returncode == 0, fetched.stderr
            assert (tmp_path / name).read_bytes() == pg_wal_file(cluster, name)

            checkpoint(cluster)
            before = state(cluster)
            assert before["alerts"] == [] and before["ready_count"] == 0, before

            proxy.down()
            failed = archiver_stats(cluster)[2]
            stuck = [switch_wal(cluster) for _ in range(3)]
            wait_for(lambda: archiver_stats(cluster)[2] > failed, timeout=30, what="a failed push", interval=0.2)
            checkpoint(cluster)  # would remove archived segments; these must stay
            time.sleep(1.5)
            code, during = status(rig, cluster, DRP_WAL_LAG_ALERT_SECONDS="1",
                                  DRP_WAL_PG_WAL_ALERT_BYTES=str(before["pg_wal_bytes"]))
            assert code == 1, during
            assert during["ready_count"] >= 3 and during["oldest_ready_age_s"] > 1
            assert during["pg_wal_bytes"] > before["pg_wal_bytes"]
            assert any("archive lag" in a for a in during["alerts"]) and any("pg_wal holds" in a for a in during["alerts"])
            for segment in stuck:
                assert (cluster.data_dir / "pg_wal" / segment).exists()

            proxy.up()
            last = switch_wal(cluster)  # wakes PostgreSQL's archiver, which retries the backlog
            wait_archived(cluster, last, timeout=60)
        after = state(cluster)
        assert after["alerts"] == [] and after["ready_count"] == 0, after
        verify = rig.drp("wal", "verify", "--start", name, "--json", DRP_SOURCE_DSN=cluster.dsn())
        report = json.loads(verify.stdout)
        assert verify.returncode == 0 and report["ok"] and report["found"] >= 5, verify.stdout
    finally:
        cluster.remove()
        proxy.close()
