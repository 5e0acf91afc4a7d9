"""`drp health` against real servers: a healthy demo database, a long-running transaction, a failing
WAL archiver, a streaming standby, a role without privileges, an unreachable server; core and CLI."""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from dr_pipelines.core.health.checks import (
    DISK_FREE_CRITICAL_PCT,
    DISK_FREE_WARN_PCT,
    EXIT_CODES,
    SECTIONS,
    health_report,
    leading_keyword,
)
from dr_pipelines.core.pg.binaries import find_pg_binaries
from dr_pipelines.core.pg.cluster import LocalCluster, free_port
from dr_pipelines_tests.support.clusters import TEST_CLUSTER_SETTINGS
from dr_pipelines_tests.support.env import drp_env
from dr_pipelines_tests.support.procs import drp, wait_for

PASSWORD = "Hunter2-health-secret"
ARCHIVE_TOKEN = "token-7f3a9c-do-not-print"  # an argument to `false`: stands in for credentials in the command
PHI = "Jane-Doe-1961-04-12"


def _disk_status(percent_free: float) -> str:
    if percent_free < DISK_FREE_CRITICAL_PCT:
        return "critical"
    return "warn" if percent_free < DISK_FREE_WARN_PCT else "ok"


def _as_owner(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@pytest.fixture(scope="module")
def archiving_cluster(work_base: Path) -> Iterator[LocalCluster]:
    """archive_mode=on with a command that always fails, after a WAL switch the archiver has tried."""
    cluster = LocalCluster.create(
        work_base / "health-archiving",
        settings={**TEST_CLUSTER_SETTINGS, "archive_mode": "on", "archive_command": f"'false {ARCHIVE_TOKEN}'"},
        tcp_trust=True,  # the standby (pg_basebackup, primary_conninfo) connects as the postgres OS user
    )
    try:
        with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
            conn.execute("CREATE TABLE filler AS SELECT g, md5(g::text) AS h FROM generate_series(1, 5000) g")
            conn.execute("SELECT pg_switch_wal()")
            wait_for(lambda: conn.execute("SELECT failed_count FROM pg_stat_archiver").fetchone()[0] > 0,
                     timeout=30, interval=0.1, what="a failed archive attempt")
        yield cluster
    finally:
        cluster.stop("immediate")  # a fast shutdown would first retry the failing archive_command
        cluster.remove()


# -- core --------------------------------------------------------------------------------------


def test_healthy_demo_database(demo_db: str, pg_cluster: LocalCluster) -> None:
    report = health_report(demo_db)
    data = report.as_dict()
    s = data["sections"]
    assert list(s) == list(SECTIONS)
    assert data["reachable"] is True
    assert s["connectivity"]["status"] == "ok" and s["connectivity"]["connect_ms"] > 0
    assert s["connectivity"]["superuser"] is True

    major = find_pg_binaries().major  # the harness's cluster
    assert s["server"]["major"] == major and s["server"]["version"].startswith(f"{major}.")
    assert s["server"]["role"] == "primary" and s["server"]["uptime_seconds"] > 0

    dbs = {d["name"]: d for d in s["databases"]["databases"]}
    demo = dbs[conninfo_to_dict(demo_db)["dbname"]]
    assert demo["size_bytes"] > 1_000_000 and demo["template"] is False
    assert dbs["template0"]["template"] is True and dbs["template0"]["allow_connections"] is False
    assert s["databases"]["total_bytes"] >= sum(d["size_bytes"] or 0 for d in dbs.values())
    assert s["databases"]["status"] == "ok"

    assert s["connections"]["max_connections"] == 200  # the session cluster's setting
    assert 1 <= s["connections"]["used"] < 200 and s["connections"]["status"] == "ok"
    assert s["long_running"]["status"] == "ok" and s["long_running"]["transactions"] == []
    assert s["replication"] == {**s["replication"], "status": "ok", "role": "primary", "standbys": []}

    archiving = s["archiving"]
    assert archiving["status"] == "ok" and archiving["archive_mode"] == "off"
    assert archiving["failing"] is False and archiving["archived_count"] == 0 and archiving["failed_count"] == 0
    assert "off" in archiving["summary"]

    disk = s["disk"]
    assert disk["visible"] is True and disk["same_server"] is True
    assert disk["data_directory"] == str(pg_cluster.data_dir)
    assert disk["total_bytes"] > 0 and 0 < disk["free_bytes"] <= disk["total_bytes"]
    assert 0 <= disk["percent_free"] <= 100
    assert disk["status"] == _disk_status(disk["percent_free"])

    assert data["unknown_sections"] == []
    assert report.status == disk["status"]  # everything else is ok
    assert report.exit_code == EXIT_CODES[report.status]
    json.dumps(data)  # serialisable as is


def test_long_running_transaction_reported_without_then_with_query_text(fresh_db: str) -> None:
    sql = f"/* ticket 42 */ SELECT '{PHI}' AS patient_name"
    holder = psycopg.connect(fresh_db)  # not autocommit: the SELECT opens a transaction that stays open
    try:
        holder.execute(sql)
        pid = holder.info.backend_pid
        time.sleep(1.2)

        report = health_report(fresh_db, long_running_after=timedelta(seconds=1))
        section = report.section("long_running")
        assert section.status == "warn" and report.status in ("warn", "critical")
        [tx] = [t for t in section.details["transactions"] if t["pid"] == pid]
        assert tx["age_seconds"] >= 1.0
        assert tx["state"] == "idle in transaction"
        assert tx["user"] == "postgres" and tx["database"] == conninfo_to_dict(fresh_db)["dbname"]
        assert tx["query_keyword"] == "SELECT" and tx["query_length"] == len(sql)
        assert "query" not in tx
        assert PHI not in json.dumps(report.as_dict())
        assert str(pid) in section.summary

        with_text = health_report(fresh_db, long_running_after=timedelta(seconds=1), include_queries=True)
        [tx] = [t for t in with_text.section("long_running").details["transactions"] if t["pid"] == pid]
        assert tx["query"] == sql

        # Below the threshold it is not reported.
        assert health_report(fresh_db, long_running_after=timedelta(minutes=10)).section("long_running").status == "ok"
    finally:
        holder.close()


def test_leading_keyword() -> None:
    assert leading_keyword("  select 1") == "SELECT"
    assert leading_keyword("-- note\n/* a\nb */ WITH x AS (SELECT 1) SELECT * FROM x") == "WITH"
    assert leading_keyword("(SELECT 1) UNION (SELECT 2)") == "SELECT"
    assert leading_keyword("") is None and leading_keyword("/* only a comment */") is None


def test_failing_archiver_is_critical_and_the_command_never_shown(archiving_cluster: LocalCluster) -> None:
    report = health_report(archiving_cluster.dsn())
    archiving = report.as_dict()["sections"]["archiving"]
    assert archiving["status"] == "critical" and archiving["failing"] is True
    assert archiving["archive_mode"] == "on" and archiving["archive_command_set"] is True
    assert archiving["failed_count"] > 0 and archiving["archived_count"] == 0
    assert archiving["last_failed_time"] is not None and archiving["last_archived_time"] is None
    assert archiving["last_failed_wal"] and archiving["ready_segments"] >= 1
    assert report.status == "critical" and report.exit_code == 2
    assert ARCHIVE_TOKEN not in json.dumps(report.as_dict())


def test_role_without_privileges_sees_less_and_unknown_does_not_count(archiving_cluster: LocalCluster) -> None:
    with psycopg.connect(archiving_cluster.dsn(), autocommit=True) as conn:
        conn.execute("CREATE ROLE health_reader LOGIN")
    report = health_report(archiving_cluster.dsn(user="health_reader"))
    s = report.as_dict()["sections"]
    assert s["connectivity"]["superuser"] is False
    assert s["disk"]["status"] == "unknown" and s["disk"]["visible"] is False
    assert s["long_running"]["visibility"] == "own role only"
    assert "disk" in report.as_dict()["unknown_sections"]
    assert s["archiving"]["status"] == "critical"  # pg_stat_archiver is readable by everyone
    assert report.status == "critical"
    assert ARCHIVE_TOKEN not in json.dumps(report.as_dict())


def test_streaming_standby_seen_from_both_sides(archiving_cluster: LocalCluster, work_base: Path) -> None:
    standby_dir = work_base / "health-standby"
    standby_dir.mkdir(mode=0o700)
    if os.geteuid() == 0:
        owner = pwd.getpwnam("postgres")
        os.chown(standby_dir, owner.pw_uid, owner.pw_gid)
    standby = LocalCluster(data_dir=standby_dir, port=free_port())
    try:
        subprocess.run(
            _as_owner([standby.binaries.tool("pg_basebackup"), "-D", str(standby_dir), "-d", archiving_cluster.dsn(),
                       "-R", "-X", "stream", "-c", "fast"]),
            check=True, capture_output=True, cwd="/",
        )
        standby.write_settings({
            "port": str(standby.port), "listen_addresses": "'127.0.0.1'", "unix_socket_directories": f"'{standby_dir}'",
            "primary_conninfo": f"'host=127.0.0.1 port={archiving_cluster.port} user=postgres application_name=s1'",
        })
        standby.start()

        def streaming() -> dict | None:
            rep = health_report(archiving_cluster.dsn()).section("replication")
            return rep.details if any(s["state"] == "streaming" and s["replay_lag_bytes"] is not None
                                      for s in rep.details["standbys"]) else None

        primary_side = wait_for(streaming, timeout=30, interval=0.2, what="a streaming standby")
        [row] = primary_side["standbys"]
        assert row["application_name"] == "s1" and row["client_addr"] == "127.0.0.1"
        assert row["sent_lag_bytes"] >= 0 and row["replay_lag_bytes"] >= 0

        on_standby = health_report(standby.dsn())
        assert on_standby.section("server").details["role"] == "standby"
        replication = on_standby.section("replication")
        assert replication.status == "ok" and replication.details["role"] == "standby"
        assert replication.details["wal_receiver"]["status"] == "streaming"
        assert replication.details["wal_receiver"]["sender_port"] == archiving_cluster.port
        assert replication.details["received_not_replayed_bytes"] >= 0
    finally:
        standby.stop("immediate")
        standby.remove()


def test_unreachable_server_is_a_critical_report_without_the_password() -> None:
    port = free_port()
    report = health_report(f"host=127.0.0.1 port={port} dbname=clinic user=app password={PASSWORD}")
    data = report.as_dict()
    assert data["reachable"] is False and data["status"] == "critical" and report.exit_code == 2
    connectivity = data["sections"]["connectivity"]
    assert connectivity["status"] == "critical" and connectivity["reachable"] is False
    assert f"127.0.0.1:{port}/clinic" in connectivity["error"]
    assert all(data["sections"][name]["status"] == "unknown" for name in SECTIONS[1:])
    assert PASSWORD not in json.dumps(data)


# -- CLI ---------------------------------------------------------------------------------------


def test_cli_json_and_text_on_a_healthy_database(demo_db: str) -> None:
    result = drp("health", "--json", env=drp_env(source=demo_db))  # the DSN from settings
    data = json.loads(result.stdout)
    assert result.returncode == EXIT_CODES[data["status"]], result.stderr
    assert data["status"] == data["sections"]["disk"]["status"]
    assert set(data) >= {"target", "checked_at", "status", "reachable", "unknown_sections", "sections"}
    assert list(data["sections"]) == list(SECTIONS)
    assert all({"status", "summary"} <= set(section) for section in data["sections"].values())

    text = drp("health", "--dsn", demo_db)
    assert text.returncode == result.returncode
    assert "Traceback" not in text.stdout + text.stderr
    for name in SECTIONS:
        assert name in text.stdout
    assert conninfo_to_dict(demo_db)["dbname"] in text.stdout
    assert f"PostgreSQL {find_pg_binaries().major}." in text.stdout


def test_cli_exit_codes_for_warn_and_critical(fresh_db: str, archiving_cluster: LocalCluster) -> None:
    critical = drp("health", "--json", "--dsn", archiving_cluster.dsn())
    assert critical.returncode == 2, critical.stderr
    assert json.loads(critical.stdout)["sections"]["archiving"]["status"] == "critical"
    assert ARCHIVE_TOKEN not in critical.stdout + critical.stderr

    holder = psycopg.connect(fresh_db)
    try:
        holder.execute(f"SELECT '{PHI}'")
        time.sleep(0.2)
        warned = drp("health", "--json", "--long-running-minutes", "0", "--dsn", fresh_db)
        data = json.loads(warned.stdout)
        assert data["sections"]["long_running"]["status"] == "warn"
        assert warned.returncode == EXIT_CODES[data["status"]]
        if data["sections"]["disk"]["status"] == "ok":
            assert data["status"] == "warn" and warned.returncode == 1
        assert PHI not in warned.stdout

        text = drp("health", "--long-running-minutes", "0", "--include-queries", "--dsn", fresh_db)
        assert "long-running transactions:" in text.stdout and f"SELECT '{PHI}'" in text.stdout
        assert "Traceback" not in text.stdout + text.stderr
    finally:
        holder.close()


def test_cli_unreachable_server_and_malformed_dsn() -> None:
    port = free_port()
    dsn = f"postgresql://app:{PASSWORD}@127.0.0.1:{port}/clinic"
    as_json = drp("health", "--json", env=drp_env(source=dsn))
    assert as_json.returncode == 2
    data = json.loads(as_json.stdout)
    assert data["reachable"] is False and data["status"] == "critical"
    assert data["sections"]["connectivity"]["status"] == "critical"

    text = drp("health", "--dsn", dsn)
    assert text.returncode == 2
    assert "connectivity" in text.stdout and "CRITICAL" in text.stdout
    for result in (as_json, text):
        assert "Traceback" not in result.stdout + result.stderr
        assert PASSWORD not in result.stdout + result.stderr

    malformed = drp("health", "--dsn", f"postgresql://app:{PASSWORD}@db:notaport/clinic")
    assert malformed.returncode == 2 and "error:" in malformed.stderr
    assert "Traceback" not in malformed.stderr and PASSWORD not in malformed.stdout + malformed.stderr
