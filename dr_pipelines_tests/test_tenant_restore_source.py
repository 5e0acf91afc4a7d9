"""Tenant restore, the past side (issue 14): schema drift in the affected tables, and a logical backup as the past.

Drift: live migrated after the restore point (a template copy of the demo database is the past).
A table outside the tenant scope may change freely; a column added to invoices refuses, naming the
column and the migration. The real PITR end to end is in test_cli_tenant_restore.py.
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from dr_pipelines.core.backup.catalog import BackupNotFoundError
from dr_pipelines.core.backup.logical import run_logical_backup
from dr_pipelines.core.migrate.runner import migrate
from dr_pipelines.core.pg.checksums import relation_checksum
from dr_pipelines.core.pg.cluster import LocalCluster
from dr_pipelines.core.storage.local import LocalStorage
from dr_pipelines.core.tenancy import TENANTS_SETTING, Scope, discover_scope, tenant_select
from dr_pipelines.core.tenant_restore.drift import SchemaDriftError, check_drift, refuse_drift
from dr_pipelines.core.tenant_restore.source import past_database
from dr_pipelines.demo.schema import MIGRATIONS_DIR
from dr_pipelines_tests.support.backup import Keys
from dr_pipelines_tests.support.migrations import write_migrations

UNAFFECTED = {"0007_ops_settings.sql": "CREATE TABLE ops_settings (name text PRIMARY KEY, value text);\n"}
AFFECTED = {"0008_invoice_discount.sql": "ALTER TABLE invoices ADD COLUMN discount numeric(12,2);\n"
                                         "ALTER TABLE invoices ADD CONSTRAINT invoices_discount_check CHECK (discount >= 0);\n"}


@pytest.fixture
def past_db(pg_cluster: LocalCluster, demo_db: str) -> Iterator[str]:
    """A copy of demo_db taken now: the database as it was at the 'restore point'."""
    name = f"past_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(demo_db, autocommit=True) as conn:
        database = conn.execute("SELECT current_database()").fetchone()[0]
    dsn = pg_cluster.create_database(name, template=database)
    yield dsn
    pg_cluster.drop_database(name)


def migrate_live(dsn: str, directory: Path, files: dict[str, str]) -> None:
    """The demo's own migrations plus ``files``, applied by the migration runner (tracked in drp.schema_migrations)."""
    if not directory.exists():
        shutil.copytree(MIGRATIONS_DIR, directory)
    migrate(dsn, write_migrations(directory, files))


def drift_of(past: str, live: str) -> tuple[Scope, object]:
    with psycopg.connect(past, autocommit=True) as p, psycopg.connect(live, autocommit=True) as lv:
        scope = discover_scope(lv)
        return scope, check_drift(p, lv, scope)


def test_a_change_outside_the_scope_passes_and_one_in_it_refuses_naming_the_migration(
        demo_db: str, past_db: str, tmp_path: Path) -> None:
    migrate_live(demo_db, tmp_path / "migrations", UNAFFECTED)
    scope, drift = drift_of(past_db, demo_db)
    assert "public.ops_settings" not in scope.names
    assert drift.tables == []  # type: ignore[attr-defined]
    assert [m.version for m in drift.since] == [7]  # type: ignore[attr-defined]
    refuse_drift(drift)  # type: ignore[arg-type]  (nothing to refuse)

    migrate_live(demo_db, tmp_path / "migrations", AFFECTED)
    _, drift = drift_of(past_db, demo_db)
    assert [(t.table, t.changes) for t in drift.tables] == [  # type: ignore[attr-defined]
        ("public.invoices", ("column discount added: numeric(12,2)",
                             "constraint invoices_discount_check added: CHECK ((discount >= (0)::numeric))"))]
    with pytest.raises(SchemaDriftError) as refused:
        refuse_drift(drift)  # type: ignore[arg-type]
    message = str(refused.value)
    assert "public.invoices: column discount added: numeric(12,2)" in message
    assert "0008 invoice_discount" in message and "0007 ops_settings" in message
    assert "fix: choose a restore point after that migration" in message


def test_a_type_change_and_a_table_created_since_are_drift(demo_db: str, past_db: str, tmp_path: Path) -> None:
    with psycopg.connect(demo_db, autocommit=True) as conn:  # outside drp migrate: no migration to name
        conn.execute("ALTER TABLE clinical_notes ALTER COLUMN body TYPE varchar(100000)")
        conn.execute("CREATE TABLE referrals (id bigint PRIMARY KEY, clinic_id bigint NOT NULL REFERENCES clinics)")
    _, drift = drift_of(past_db, demo_db)
    changes = {t.table: t.changes for t in drift.tables}  # type: ignore[attr-defined]
    assert changes == {"public.clinical_notes": ("column body: text NOT NULL -> character varying(100000) NOT NULL",
                                                 "constraint clinical_notes_body_check: CHECK ((body <> ''::text)) -> "
                                                 "CHECK (((body)::text <> ''::text))"),
                       "public.referrals": ("table does not exist at the restore point (created since)",)}
    with pytest.raises(SchemaDriftError, match="no drp migration was recorded since the restore point"):
        refuse_drift(drift)  # type: ignore[arg-type]


def clinic_checksums(dsn: str, clinic: str) -> dict[str, tuple[int, str]]:
    """Rows and content checksum of every scope table's rows of one clinic."""
    with psycopg.connect(dsn) as conn:
        scope = discover_scope(conn)
        conn.execute("SELECT set_config(%s, %s, true)", (TENANTS_SETTING, "{" + clinic + "}"))
        out = {}
        for t in scope.tables:
            c = relation_checksum(conn, t.name, sql.SQL("({})").format(tenant_select(t, scope)), "text")
            out[t.name] = (c.rows, c.checksum)
        return out


def leftover_servers(where: Path) -> str:
    return subprocess.run(["pgrep", "-af", f"postgres.*{where}"], capture_output=True, text=True).stdout.strip()


def test_a_logical_backup_is_the_past_in_a_throwaway_removed_after(demo_db: str, tmp_path: Path,
                                                                  work_base: Path) -> None:
    keys = Keys.make(tmp_path / "keys")
    storage = LocalStorage(tmp_path / "storage")
    manifest = run_logical_backup(demo_db, storage, [keys.recipient])
    before = clinic_checksums(demo_db, "1")
    with psycopg.connect(demo_db, autocommit=True) as conn:  # the damage, after the backup
        conn.execute("DELETE FROM invoice_lines WHERE clinic_id = 1")
        conn.execute("UPDATE patients SET family_name = 'X' WHERE clinic_id = 1")
    assert clinic_checksums(demo_db, "1") != before
    work = work_base / f"tr-{uuid.uuid4().hex[:8]}"  # reachable by the server's OS user
    with past_database(storage, keys.identities, work, database="ignored", backup_id=manifest.id) as past:
        assert past.point.how == "logical backup" and past.point.backup_id == manifest.id
        assert past.point.time == datetime.fromisoformat(manifest.extra["snapshot_at"]).isoformat()
        assert "passfile=" in past.dsn and "password" not in past.dsn.replace("passfile", "")
        assert clinic_checksums(past.dsn, "1") == before
        data_dir = Path(psycopg.conninfo.conninfo_to_dict(past.dsn)["passfile"]).parent
        assert data_dir.is_relative_to(work / "clusters")
    assert not data_dir.exists() and list((work / "clusters").iterdir()) == []
    assert leftover_servers(work) == ""


def test_an_unknown_backup_id_is_refused_with_nothing_made(tmp_path: Path, work_base: Path) -> None:
    keys = Keys.make(tmp_path / "keys")
    work = work_base / f"tr-{uuid.uuid4().hex[:8]}"
    with pytest.raises(BackupNotFoundError, match="no backup 'nope'") as refused, \
            past_database(LocalStorage(tmp_path / "storage"), keys.identities, work, database="x", backup_id="nope"):
        pass
    assert "fix: see `drp backup list`" in str(refused.value)
    assert not (work / "clusters").exists() or list((work / "clusters").iterdir()) == []
