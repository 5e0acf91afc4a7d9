"""Runbooks are executed, not just read: every ```bash block runs, in order, exactly as written."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import psycopg
import pytest
from pyrage import x25519

from dr_pipelines.core.backup.logical import run_logical_backup
from dr_pipelines.core.pg.checksums import database_checksums
from dr_pipelines.core.pg.cluster import LocalCluster
from dr_pipelines.core.storage import open_storage
from dr_pipelines_tests.support.clusters import TEST_CLUSTER_SETTINGS

RUNBOOKS = Path(__file__).resolve().parents[1] / "runbooks"


def bash_blocks(runbook: Path) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", runbook.read_text(), flags=re.S)


def require(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"{missing} missing: scripts/test installs them (apt-get install age zstd)")
        pytest.skip(f"{missing} not installed (apt-get install age zstd)")


# Names that need quoting everywhere: a table name with a quote and a space, in a schema with a space.
TRICKY_SQL = '''
CREATE SCHEMA "Odd Schema";
CREATE TABLE "Odd Schema"."Tricky ""Name""" (id int PRIMARY KEY, note text);
INSERT INTO "Odd Schema"."Tricky ""Name""" SELECT g, 'n' || g FROM generate_series(1, 7) g;
CREATE TABLE public."Tricky ""Name""" (id int);
INSERT INTO public."Tricky ""Name""" SELECT generate_series(1, 3);
'''


def test_escape_hatch_restores_with_stock_tools_only(work_base: Path, tmp_path: Path, demo_db: str) -> None:
    require("age", "zstd", "sha256sum")
    identity = x25519.Identity.generate()
    key_file = tmp_path / "backup-key.txt"
    key_file.write_text(f"{identity}\n")
    storage = open_storage(str(tmp_path / "storage"))
    with psycopg.connect(demo_db, autocommit=True) as conn:
        conn.execute(TRICKY_SQL)
    manifest = run_logical_backup(demo_db, storage, [str(identity.to_public())])
    assert {'Odd Schema.Tricky "Name"', 'public.Tricky "Name"'} <= {t.name for t in manifest.tables}
    target = LocalCluster.create(work_base / "escape-hatch", settings=TEST_CLUSTER_SETTINGS)
    try:
        bin_dir = LocalCluster.attach(target.data_dir).binaries.bin_dir
        env = {
            **os.environ,
            "PATH": f"{bin_dir}:{os.environ['PATH']}",
            "BACKUP": str(tmp_path / "storage" / "backups" / manifest.id),
            "KEY": str(key_file),
            "WORK": str(tmp_path / "work"),
            "SERVER": f"host=127.0.0.1 port={target.port} user=postgres passfile={target.passfile}",
            "DBNAME": "clinic",
        }
        script = "\n".join(bash_blocks(RUNBOOKS / "restore-with-stock-tools.md"))
        run = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stdout + run.stderr
        assert f"tables checked: {len(manifest.tables)}, mismatches: 0" in run.stdout
        assert not (tmp_path / "work").exists()  # the clear-text dump was deleted
        restored = {t.name: (t.rows, t.checksum) for t in database_checksums(
            target.dsn("clinic"), methods={t.name: t.method for t in manifest.tables})}
        assert restored == {t.name: (t.rows, t.checksum) for t in manifest.tables}
    finally:
        target.remove()


def test_escape_hatch_plaintext_is_private_and_deleted_when_a_step_fails(tmp_path: Path, demo_db: str) -> None:
    require("age", "zstd", "sha256sum")
    identity = x25519.Identity.generate()
    storage = open_storage(str(tmp_path / "storage"))
    manifest = run_logical_backup(demo_db, storage, [str(identity.to_public())])
    key_file = tmp_path / "key.txt"
    key_file.write_text(f"{identity}\n")
    work = tmp_path / "work"
    env = {**os.environ, "BACKUP": str(tmp_path / "storage" / "backups" / manifest.id), "KEY": str(key_file),
           "WORK": str(work), "SERVER": "host=127.0.0.1 port=1 user=nobody", "DBNAME": "never"}  # no server there
    blocks = bash_blocks(RUNBOOKS / "restore-with-stock-tools.md")
    # Sections 0-2 decrypt; then record what is on disk, as a user would see it, before the failing step 3.
    probe = f'stat -c "%a %n" "$WORK" "$WORK"/* > {tmp_path}/modes\n'
    script = "\n".join([*blocks[:3], probe, *blocks[3:]])
    run = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode != 0  # step 3 cannot connect
    modes = dict(line.split(" ", 1)[::-1] for line in (tmp_path / "modes").read_text().splitlines())
    assert modes.pop(str(work)) == "700"
    assert {Path(name).name for name in modes} >= {"database.dump", "globals.sql"}
    assert set(modes.values()) == {"600"}, modes  # nothing readable by group or others
    assert not work.exists()  # the failed run still deleted the clear-text dump


def test_escape_hatch_stops_on_a_damaged_object(work_base: Path, tmp_path: Path, demo_db: str) -> None:
    require("age", "zstd", "sha256sum")
    identity = x25519.Identity.generate()
    storage = open_storage(str(tmp_path / "storage"))
    manifest = run_logical_backup(demo_db, storage, [str(identity.to_public())])
    backup_dir = tmp_path / "storage" / "backups" / manifest.id
    damaged = backup_dir / "database.dump.zst.age"
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0x01
    damaged.write_bytes(bytes(data))
    key_file = tmp_path / "key.txt"
    key_file.write_text(f"{identity}\n")
    env = {**os.environ, "BACKUP": str(backup_dir), "KEY": str(key_file), "WORK": str(tmp_path / "work"),
           "SERVER": "host=127.0.0.1 port=1 user=nobody", "DBNAME": "never"}
    script = "\n".join(bash_blocks(RUNBOOKS / "restore-with-stock-tools.md"))
    run = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode != 0
    assert "database.dump.zst.age: FAILED" in run.stdout
    assert not (tmp_path / "work" / "database.dump").exists()  # stopped before decrypting anything


def test_local_demo_runbook_commands_exist() -> None:
    """The demo runbook's commands are the README's; the demo test runs them (test_demo_stack)."""
    blocks = bash_blocks(RUNBOOKS / "local-demo.md")
    assert blocks == ["scripts/demo\n", "scripts/demo status\n", "scripts/demo down --purge\n"]
