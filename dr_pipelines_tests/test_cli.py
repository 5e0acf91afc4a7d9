"""`drp` as the on-call engineer meets it: real subprocesses, errors without tracebacks, --json."""

from __future__ import annotations

import json
import subprocess
from importlib.metadata import version
from pathlib import Path

from dr_pipelines.core.pg.binaries import find_pg_binaries
from dr_pipelines.core.pg.cluster import free_port
from dr_pipelines_tests.support.procs import drp


def assert_clean_error(result, *fragments: str) -> None:  # type: ignore[no-untyped-def]
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    assert "error:" in result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


def test_help_and_version() -> None:
    result = drp("--help")
    assert result.returncode == 0
    for command in ("demo", "storage", "config", "db"):
        assert command in result.stdout
    assert drp("--version").stdout.startswith("drp ")


def test_version_names_drp_the_postgresql_client_and_dagster() -> None:
    pg_dump = find_pg_binaries().tool("pg_dump")
    client = subprocess.run([pg_dump, "--version"], capture_output=True, text=True, check=True).stdout.strip()
    assert client.startswith(f"pg_dump (PostgreSQL) {find_pg_binaries().major}.")
    result = drp("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"drp {version('dr_pipelines')}",
        f"PostgreSQL client: {client} ({pg_dump})",
        f"Dagster: {version('dagster')}",
    ]


def test_config_show_json_masks_secrets() -> None:
    result = drp("config", "show", "--json", env={"DRP_SOURCE_DSN": "postgresql://app:hunter2@db:5432/clinic"})
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["source_dsn"] == "user=app password=******** dbname=clinic host=db port=5432"
    assert "hunter2" not in result.stdout


def test_invalid_setting_is_a_clean_error() -> None:
    result = drp("config", "show", env={"DRP_RPO_MINUTES": "-5"})
    assert result.returncode == 2
    assert_clean_error(result, "rpo_minutes", "DRP_RPO_MINUTES", "fix:")


def test_invalid_config_file_is_a_clean_error(tmp_path: Path) -> None:
    bad = tmp_path / "drp.yaml"
    bad.write_text("rpo_minutes: [\n")
    assert_clean_error(drp("--config", str(bad), "config", "show"), "not valid YAML", str(bad))
    assert_clean_error(drp("--config", str(tmp_path / "missing.yaml"), "config", "show"), "does not exist")


def test_malformed_dsn_is_a_clean_error() -> None:
    result = drp("db", "profile", env={"DRP_SOURCE_DSN": "postgresql://u:pw@host:notaport/db"})
    assert_clean_error(result, "source_dsn", "port")
    assert "pw@" not in result.stderr


def test_unreachable_database_is_a_clean_error() -> None:
    port = free_port()
    result = drp("db", "profile", env={"DRP_SOURCE_DSN": f"host=127.0.0.1 port={port} dbname=x user=u password=pw"})
    assert_clean_error(result, f"127.0.0.1:{port}/x", "fix:")
    assert "pw" not in result.stderr.replace("password", "")


def test_db_profile_json(demo_db: str) -> None:
    result = drp("db", "profile", "--json", env={"DRP_SOURCE_DSN": demo_db})
    assert result.returncode == 0, result.stderr
    profile = json.loads(result.stdout)
    assert profile["schema_version"] == 6
    names = {t["name"] for t in profile["tables"]}
    assert {"public.clinics", "public.patients", "public.audit_log", "drp.schema_migrations"} <= names


def test_storage_ls_json_on_local_dir(tmp_path: Path) -> None:
    from dr_pipelines.core.storage import open_storage

    storage = open_storage(str(tmp_path))
    storage.put_bytes("backups/a/manifest.json", b"{}")
    storage.put_bytes("backups/b/data.bin", b"12345")
    result = drp("storage", "ls", "backups/", "--json", env={"DRP_STORAGE_URL": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    listed = json.loads(result.stdout)
    assert [(o["key"], o["size"]) for o in listed] == [("backups/a/manifest.json", 2), ("backups/b/data.bin", 5)]


def test_storage_check_missing_bucket_is_a_clean_error(s3_server) -> None:  # type: ignore[no-untyped-def]
    env = {
        "DRP_STORAGE_URL": "s3://no-such-bucket-here/backups",
        "DRP_S3_ENDPOINT_URL": s3_server.endpoint_url,
        "DRP_S3_REGION": s3_server.region,
        "DRP_S3_ACCESS_KEY_ID": s3_server.access_key,
        "DRP_S3_SECRET_ACCESS_KEY": s3_server.secret_key,
    }
    result = drp("storage", "check", env=env)
    assert_clean_error(result, "no-such-bucket-here")
    assert s3_server.secret_key not in result.stderr


def test_storage_check_ok_on_s3(s3_server, s3_bucket) -> None:  # type: ignore[no-untyped-def]
    env = {
        "DRP_STORAGE_URL": f"s3://{s3_bucket}/backups",
        "DRP_S3_ENDPOINT_URL": s3_server.endpoint_url,
        "DRP_S3_REGION": s3_server.region,
        "DRP_S3_ACCESS_KEY_ID": s3_server.access_key,
        "DRP_S3_SECRET_ACCESS_KEY": s3_server.secret_key,
    }
    result = drp("storage", "check", env=env)
    assert result.returncode == 0, result.stderr
    assert f"s3://{s3_bucket}/backups" in result.stdout
