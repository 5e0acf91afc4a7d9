"""`drp` starts without the heavy libraries a command does not use.

archive_command falls back to `drp wal push` for every WAL segment when no archiver runs, and an
on-call engineer's `drp --help` should answer at once: importing the CLI must load typer and rich
only, each command importing psycopg, pydantic settings, boto3, pyarrow, pglast, ADBC or Dagster
inside its own function. Checked in a fresh interpreter (the test process has them all loaded).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from dr_pipelines.core.pg.cluster import LocalCluster
from dr_pipelines_tests.support.backup import Keys
from dr_pipelines_tests.support.clusters import TEST_CLUSTER_SETTINGS

# What costs a `drp` start most (measured with python -X importtime); none is needed to parse a command line.
HEAVY = ("psycopg", "pydantic", "boto3", "botocore", "pyrage", "zstandard", "pyarrow", "pglast",
         "adbc_driver_postgresql", "adbc_driver_manager", "dagster", "yaml", "dr_pipelines.core.settings")

# Prints, at exit, which of WATCHED (HEAVY by default) this process imported; with arguments, after running `drp ARGS`.
_PROBE = """
import json, sys
try:
    from dr_pipelines.cli import main
    if sys.argv[1:]:
        sys.argv = ["drp", *sys.argv[1:]]
        main()
except SystemExit:
    pass
finally:
    sys.__stderr__.write("\\nLOADED " + json.dumps(sorted(m for m in {watched!r} if m in sys.modules)) + "\\n")
"""


def loaded_by(*args: str, env: dict[str, str] | None = None, watched: tuple[str, ...] = HEAVY) -> tuple[list[str], str]:
    """The ``watched`` modules a fresh interpreter has imported after `import dr_pipelines.cli` (and `drp ARGS`),
    and what it printed on stderr."""
    result = subprocess.run([sys.executable, "-c", _PROBE.format(watched=watched), *args], capture_output=True,
                            text=True, timeout=60, env=env)
    marker = [line for line in result.stderr.splitlines() if line.startswith("LOADED ")]
    assert marker, result.stderr[-2000:]
    return json.loads(marker[-1].removeprefix("LOADED ")), result.stderr


def test_importing_the_cli_and_help_load_no_heavy_library() -> None:
    assert loaded_by()[0] == []
    assert loaded_by("--help")[0] == []


def test_wal_push_loads_what_archiving_needs_and_nothing_else(tmp_path: Path) -> None:
    """--help of the archive_command fallback reads no settings; a real push loads settings (their DSN is
    validated by libpq, hence psycopg), age and zstd, but no S3 client for local storage, no Parquet, no Dagster."""
    # typer itself imports pydantic to coerce a Path argument: the settings module is what must stay out.
    assert [m for m in loaded_by("wal", "push", "--help")[0] if m != "pydantic"] == []
    env = {**os.environ, "DRP_STORAGE_URL": str(tmp_path / "storage"), "DRP_DEMO_DIR": str(tmp_path / "no-demo"),
           "DRP_ENCRYPTION_RECIPIENTS": Keys.make(tmp_path).recipient}
    loaded, printed = loaded_by("wal", "push", str(tmp_path / "000000010000000000000001"), env=env)
    assert "cannot read WAL file" in printed  # the push itself ran, past settings, keys and storage
    assert loaded == ["dr_pipelines.core.settings", "psycopg", "pydantic", "pyrage", "zstandard"]


def test_a_base_backup_loads_no_s3_parquet_dagster_nor_the_other_kinds_code(work_base: Path, tmp_path: Path) -> None:
    """`drp backup run --physical` to local storage, for real (lowlevel, a cluster archiving with `true`): the
    process loads settings, psycopg, age and zstd, and neither boto3, pyarrow, Dagster, pg_dump's backup code nor,
    with --no-prune, the retention code (a base backup's start-up is part of its time: docs/benchmarks.md)."""
    other_kinds = ("dr_pipelines.core.backup.logical", "dr_pipelines.core.backup.prune")
    cluster = LocalCluster.create(work_base / f"startup-{tmp_path.name}", tcp_trust=True, settings={
        **TEST_CLUSTER_SETTINGS, "wal_level": "replica", "archive_mode": "on", "archive_command": "'true'"})
    try:
        storage = tmp_path / "storage"
        env = {**os.environ, "DRP_SOURCE_DSN": cluster.dsn(), "DRP_STORAGE_URL": str(storage),
               "DRP_DEMO_DIR": str(tmp_path / "no-demo"), "DRP_ENCRYPTION_RECIPIENTS": Keys.make(tmp_path).recipient}
        for extra in (["--no-prune"], []):
            loaded, printed = loaded_by("backup", "run", "--physical", "--method", "lowlevel", "--json", *extra,
                                        env=env, watched=HEAVY + other_kinds)
            assert "error" not in printed, printed[-2000:]
            expected = ["dr_pipelines.core.settings", "psycopg", "pydantic", "pyrage", "zstandard"]
            assert loaded == sorted(expected + ([] if extra else ["dr_pipelines.core.backup.prune"])), printed[-2000:]
        manifests = [json.loads(p.read_text()) for p in sorted(storage.glob("backups/*/manifest.json"))]
        assert [(m["kind"], m["extra"]["method"]) for m in manifests] == [("base-backup", "lowlevel")] * 2
    finally:
        cluster.remove()
