"""The WAL runbooks (pitr-before-bad-deploy, wal-gap, lost-primary), executed as written on real archiving clusters."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from dr_pipelines.core import context
from dr_pipelines.core.backup.catalog import list_backups
from dr_pipelines.core.backup.physical import run_base_backup
from dr_pipelines.core.pg.cluster import LocalCluster
from dr_pipelines_tests.support.runbook import RUNBOOKS, run_sections
from dr_pipelines_tests.support.wal import WalRig, pg_os_user, wait_archived

LEDGER = ("CREATE TABLE ledger (id bigserial PRIMARY KEY, amount numeric NOT NULL, note text);"
          "INSERT INTO ledger (amount, note) SELECT g * 1.25, 'entry ' || g FROM generate_series(1, 200) g")
CHECKSUM = "SELECT count(*), md5(string_agg(l::text, ',' ORDER BY id)) FROM ledger l"


@dataclass
class Site:
    """An archiving primary with a ledger and a base backup, and the on-call's environment for it."""

    rig: WalRig
    cluster: LocalCluster

    def sql(self, query: str, dsn: str | None = None) -> object:
        with psycopg.connect(dsn or self.cluster.dsn(), autocommit=True) as conn:
            cur = conn.execute(query)
            return cur.fetchone() if cur.description else None

    def switch(self) -> str:
        name = str(self.sql("SELECT pg_walfile_name(pg_switch_wal())")[0])  # type: ignore[index]
        wait_archived(self.cluster, name)
        return name

    def base_backup(self) -> str:
        settings = self.rig.settings()
        return run_base_backup(self.cluster.dsn(), context.storage(settings), settings.encryption_recipients).id

    def env(self, **extra: str) -> dict[str, str]:
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{self.cluster.binaries.bin_dir}:{os.environ['PATH']}",
               "DRP_CONFIG": str(self.rig.config), "DRP_SOURCE_DSN": self.cluster.dsn(),
               "DRP_WORK_DIR": str(self.rig.root / "work"), "PG_DRP": str(self.rig.drp_for_pg),
               "AS_PG": f"runuser -u {pg_os_user()} --" if pg_os_user() else "", **extra}
        return {k: v for k, v in env.items() if not k.startswith("DRP_") or k in extra or k in (
            "DRP_CONFIG", "DRP_SOURCE_DSN", "DRP_WORK_DIR", "DRP_PG_BIN_DIR")}

    def archive_listing(self) -> dict[str, str]:
        return {str(p.relative_to(self.rig.storage_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(self.rig.storage_dir.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def site(work_base: Path) -> Iterator[Site]:
    root = work_base / f"runbook-wal-{uuid.uuid4().hex[:8]}"
    rig = WalRig.make(root)
    with rig.archiver():
        cluster = LocalCluster.create(rig.root / "pg", settings=rig.cluster_settings("300s"), tcp_trust=True)
        s = Site(rig, cluster)
        try:
            s.sql(LEDGER)
            s.base_backup()
            yield s
        finally:
            cluster.remove()


def test_pitr_before_a_bad_deploy_restores_the_rows_exactly(site: Site, tmp_path: Path) -> None:
    runbook = RUNBOOKS / "pitr-before-bad-deploy.md"
    env = site.env(DEPLOY_ID="42", DEPLOY_TIME="2000-01-01 00:00:00+00", TABLES="public.ledger",
                   RESTORE_DIR=str(site.rig.root / "pitr-deploy"))
    point = run_sections(runbook, ["Before every deploy"], env, tmp_path)
    assert point.returncode == 0, point.stdout + point.stderr
    good = site.sql(CHECKSUM)
    site.sql("UPDATE ledger SET amount = 0 WHERE id % 3 = 0")  # the bad deploy
    damaged = site.sql(CHECKSUM)
    assert damaged != good
    before = site.archive_listing()

    run = run_sections(runbook, ["1.", "2.", "3.", "4.", "5."], env, tmp_path)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "restored to restore point before-deploy-42" in run.stdout
    assert site.sql(CHECKSUM) == good  # production has the rows exactly as before the deploy
    aside = site.sql("SELECT relname FROM pg_class WHERE relname LIKE 'ledger_damaged_%'")[0]  # type: ignore[index]
    query = sql.SQL("SELECT count(*), md5(string_agg(l::text, ',' ORDER BY id)) FROM {} l").format(sql.Identifier(aside))
    with psycopg.connect(site.cluster.dsn()) as conn:
        assert conn.execute(query).fetchone() == damaged  # the damaged rows were kept aside
    assert not (site.rig.root / "pitr-deploy").exists()  # the recovered copy was stopped and removed
    after = site.archive_listing()  # the recovered copy archived nothing: only the primary's own timeline-1 WAL
    assert {k: after.get(k) for k in before} == before
    assert all(k.startswith("wal/00000001/") or k.startswith("backups/") for k in set(after) - set(before))



def test_pitr_before_a_bad_deploy_without_a_restore_point_uses_the_deploy_time(site: Site, tmp_path: Path) -> None:
    """A deploy the pipeline gave no restore point: the unknown name is refused, the deploy's start time is used."""
    good = site.sql(CHECKSUM)
    deploy_time = site.sql("SELECT clock_timestamp()")[0]  # type: ignore[index]
    site.sql("DELETE FROM ledger WHERE id % 2 = 0")  # the bad deploy
    env = site.env(DEPLOY_ID="no-such-deploy", DEPLOY_TIME=deploy_time.isoformat(), TABLES="public.ledger",
                   RESTORE_DIR=str(site.rig.root / "pitr-deploy-time"))
    run = run_sections(RUNBOOKS / "pitr-before-bad-deploy.md", ["1.", "2.", "3.", "4.", "5."], env, tmp_path)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "before-deploy-no-such-deploy" in run.stderr and "restored to restore point" not in run.stdout
    assert site.sql(CHECKSUM) == good


def drop_from_archive(site: Site, name: str) -> None:
    for suffix in (".zst.age", ".json"):
        (site.rig.storage_dir / "wal" / name[:8] / f"{name}{suffix}").unlink()


def test_wal_gap_still_in_pg_wal_is_closed_by_the_runbooks_re_push(site: Site, tmp_path: Path) -> None:
    site.sql("INSERT INTO ledger (amount, note) VALUES (1, 'gap case 1')")
    lost = site.switch()
    drop_from_archive(site, lost)  # archived, then deleted from storage; pg_wal still has it (wal_keep_size)
    env = site.env(PGDATA=str(site.cluster.data_dir))
    run = run_sections(RUNBOOKS / "wal-gap.md", ["1.", "2.", "4."], env, tmp_path)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert (tmp_path / "wal-missing.txt").read_text().split() == [lost], run.stdout + run.stderr  # verify named it
    assert "lost" in run.stdout and "LOST" not in run.stdout
    assert run.stdout.rstrip().splitlines()[-1].startswith("WAL archive OK")  # step 4: clean after the re-push
    assert (site.rig.storage_dir / "wal" / lost[:8] / f"{lost}.json").exists()


@pytest.mark.heavy(25)
def test_wal_gap_gone_from_pg_wal_needs_a_new_base_and_pitr_into_it_is_refused(site: Site, tmp_path: Path) -> None:
    site.sql("INSERT INTO ledger (amount, note) VALUES (2, 'gap case 2')")
    lost = site.switch()
    drop_from_archive(site, lost)
    (site.cluster.data_dir / "pg_wal" / lost).unlink()  # recycled on the server too: gone for good
    point = site.rig.drp("wal", "restore-point", "inside-gap", DRP_SOURCE_DSN=site.cluster.dsn())
    assert point.returncode == 0, point.stderr
    site.switch()
    env = site.env(PGDATA=str(site.cluster.data_dir))
    run = run_sections(RUNBOOKS / "wal-gap.md", ["1.", "2.", "3."], env, tmp_path, timeout=400)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert f"LOST, not in pg_wal any more: {lost}" in run.stdout
    assert "WAL prune refused while the gap exists" in run.stdout and lost in run.stderr  # retention names the gap

    work = {"DRP_WORK_DIR": str(site.rig.root / "work")}
    into = site.rig.drp("restore", "--pitr", "--restore-point", "inside-gap", "--data-dir", str(site.rig.root / "into-gap"),
                        timeout=300, **work)
    assert into.returncode != 0 and lost in into.stdout + into.stderr and "Traceback" not in into.stderr
    after = site.rig.drp("restore", "--pitr", "--latest", "--data-dir", str(site.rig.root / "after-gap"),
                         "--json", timeout=300, **work)
    assert after.returncode == 0, after.stderr[-3000:]
    restored = LocalCluster.attach(site.rig.root / "after-gap")
    try:
        restored.start()
        assert site.sql(CHECKSUM, restored.dsn()) == site.sql(CHECKSUM)  # every row, from the new base
    finally:
        restored.remove()


@pytest.mark.heavy(20)
def test_lost_primary_comes_back_with_every_archived_row_and_archives_timeline_2(work_base: Path, tmp_path: Path) -> None:
    rig = WalRig.make(work_base / f"lost-primary-{uuid.uuid4().hex[:8]}")
    new_pgdata = rig.root / "new-primary"
    with rig.archiver():
        lost = Site(rig, LocalCluster.create(rig.root / "pg", settings=rig.cluster_settings("300s"), tcp_trust=True))
        try:
            lost.sql(LEDGER)
            lost.base_backup()
            lost.sql("INSERT INTO ledger (amount, note) SELECT g, 'after the base ' || g FROM generate_series(1, 50) g")
            lost.switch()  # archived before the loss
            expected = lost.sql(CHECKSUM)
            env = lost.env(NEW_PGDATA=str(new_pgdata), ARCHIVE_COMMAND=rig.archive_command(),
                           BACKUP_HOST_CIDR="127.0.0.1/32")
        finally:
            lost.cluster.remove()  # the primary's data directory is gone
        try:
            run = run_sections(RUNBOOKS / "lost-primary.md", ["1.", "2.", "3.", "4.", "5."], env, tmp_path, timeout=400)
            assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
            new = Site(rig, LocalCluster.attach(new_pgdata))
            new_dsn = json.loads((tmp_path / "pitr-result.json").read_text())["dsn"]
            assert new.sql(CHECKSUM, new_dsn) == expected  # every row archived before the loss
            assert run.stdout.rstrip().splitlines()[-1].startswith("WAL archive OK")  # verify clean, both timelines
            assert (rig.storage_dir / "wal" / "00000002.history.json").exists()
            assert any((rig.storage_dir / "wal" / "00000002").glob("00000002*.json"))  # timeline 2 archived
            assert new.sql("SELECT last_archived_wal FROM pg_stat_archiver", new_dsn)[0].startswith("00000002")  # type: ignore[index]
            newest = [e for e in list_backups(context.storage(rig.settings())) if e.complete][-1]
            assert newest.kind == "base" and newest.manifest.extra["timeline"] == 2  # type: ignore[union-attr]
        finally:
            if (new_pgdata / "PG_VERSION").exists():
                LocalCluster.attach(new_pgdata).remove()
