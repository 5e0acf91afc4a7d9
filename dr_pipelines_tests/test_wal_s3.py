"""WAL archiving to S3 (moto over HTTP, through a proxy we can switch off) on a real PostgreSQL.

Segments round-trip byte-exact; with the endpoint down for 15 s while writes go on, nothing is
dropped: pg_wal keeps the segments, `drp wal status` reports the lag and pg_wal growth and exits
non-zero; once the endpoint is back PostgreSQL's retries drain the backlog, status stops alerting,
`drp wal verify` is clean and every segment written during the outage fetches back byte-exact.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest

from dr_pipelines.core import context
from dr_pipelines.core.pg.cluster import LocalCluster
from dr_pipelines.core.wal.archive import fetch_wal
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


OUTAGE_S = 15  # the issue asks for a minute; 15 s shows the same states and keeps the suite's budget


@pytest.mark.heavy(30)
def test_s3_roundtrip_outage_and_recovery(work_base: Path, s3_server: MotoServer, s3_bucket: str,
                                          tmp_path: Path) -> None:
    """S3 unreachable for OUTAGE_S seconds while writes go on: every segment is archived in the end, byte-exact;
    pg_wal grows; status alerts on the lag during the outage and stops once the backlog drained."""
    endpoint = urlsplit(s3_server.endpoint_url)
    proxy = TcpProxy(endpoint.hostname or "127.0.0.1", endpoint.port or 80)
    rig = WalRig.make(work_base / f"wal-s3-{uuid.uuid4().hex[:8]}", storage={
        "storage_url": f"s3://{s3_bucket}/clinic-a", "s3_endpoint_url": proxy.url, "s3_region": s3_server.region,
        "s3_access_key_id": s3_server.access_key, "s3_secret_access_key": s3_server.secret_key})
    settings = {**rig.cluster_settings(), "wal_keep_size": "0", "min_wal_size": "'32MB'"}
    cluster = LocalCluster.create(rig.root / "pg", settings=settings, tcp_trust=True)
    lag_limit = {"DRP_WAL_LAG_ALERT_SECONDS": "3"}
    try:
        with rig.archiver():
            name = switch_wal(cluster)
            wait_archived(cluster, name)
            keys = [o["Key"] for o in s3_server.client().list_objects_v2(Bucket=s3_bucket)["Contents"]]
            assert f"clinic-a/{object_key(name)}" in keys
            fetched = rig.drp("wal", "fetch", name, str(tmp_path / name))
            assert fetched.returncode == 0, fetched.stderr
            assert (tmp_path / name).read_bytes() == pg_wal_file(cluster, name)

            checkpoint(cluster)  # wakes the checkpointer: archive_timeout may switch a segment now (docs/wal.md)
            before = wait_for(lambda: (s := state(cluster))["ready_count"] == 0 and s["alerts"] == [] and s,
                              timeout=30, what="archiving keeping up", interval=0.2)

            proxy.down()
            down_at = time.monotonic()
            failed = archiver_stats(cluster)[2]
            with writing(cluster) as written:
                wait_for(lambda: archiver_stats(cluster)[2] > failed, timeout=30, what="a failed push", interval=0.2)
                wait_for(lambda: len(written) >= 4, timeout=30, what="writes during the outage", interval=0.2)
                checkpoint(cluster)  # would remove archived segments; these must stay
                # the oldest waiting segment must be older than the lag limit (3 s) first: on a fast machine the
                # writes above take less than that
                code, during = wait_for(
                    lambda: (r := status(rig, cluster, **lag_limit, DRP_WAL_PG_WAL_ALERT_BYTES=str(before["pg_wal_bytes"])))
                    [1]["oldest_ready_age_s"] is not None and r[1]["oldest_ready_age_s"] > 3 and r,
                    timeout=30, what="archive lag past the limit", interval=0.5)
                assert code == 1, during
                assert during["ready_count"] >= 3 and during["oldest_ready_age_s"] > 3
                assert during["pg_wal_bytes"] > before["pg_wal_bytes"]
                assert any("archive lag" in a for a in during["alerts"]) and any("pg_wal holds" in a for a in during["alerts"])
                originals = {}
                while time.monotonic() - down_at < OUTAGE_S:  # their content, while pg_wal must still hold them
                    for segment in list(written):
                        originals.setdefault(segment, hashlib.sha256(pg_wal_file(cluster, segment)).hexdigest())
                    time.sleep(0.5)
                proxy.up()
                time.sleep(2)  # writes go on as storage comes back
            for segment in written:
                originals.setdefault(segment, hashlib.sha256(pg_wal_file(cluster, segment)).hexdigest())
            last = switch_wal(cluster)
            wait_archived(cluster, last, timeout=120)
        code, after = status(rig, cluster, **lag_limit)
        assert code == 0 and after["alerts"] == [] and after["ready_count"] == 0, after
        verify = rig.drp("wal", "verify", "--start", name, "--json", DRP_SOURCE_DSN=cluster.dsn())
        report = json.loads(verify.stdout)
        assert verify.returncode == 0 and report["ok"] and report["found"] >= len(originals) + 2, verify.stdout
        settings_ = rig.settings()
        storage, identities = context.storage(settings_), context.identities(settings_)
        for segment, digest in originals.items():  # nothing lost: each segment written during the outage, exact
            fetch_wal(storage, identities, segment, tmp_path / segment)
            assert hashlib.sha256((tmp_path / segment).read_bytes()).hexdigest() == digest, segment
            (tmp_path / segment).unlink()
    finally:
        cluster.remove()
        proxy.close()


@contextmanager
def writing(cluster: LocalCluster) -> Iterator[list[str]]:
    """Writes (a segment's worth of rows, then a switch) every half second until the block ends; the segments completed."""
    written: list[str] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            written.append(switch_wal(cluster, rows=200))
            stop.wait(0.5)

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    try:
        yield written
    finally:
        stop.set()
        thread.join(timeout=30)
