"""A tenant restore's past database without the index files it never reads (core/restore/partial.py).

One archiving cluster holds the demo database plus a hostile table (quoted, unicode names; a partial,
an expression, a hash and a GIN index). A base backup records its index map; after it, one left-out
index is REINDEXed (a new file, restored whole from WAL), a new index is created, and clinic 2's rows
change (index pages written after the backup). At T the clinic's checksums are taken, then more damage.
The partial PITR to T must give exactly those rows, with the left-out files empty or rebuilt by replay
only, every left-out index invalid and not ready, the rest valid, and the planner never touching one.
"""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from dr_pipelines.core import context
from dr_pipelines.core.backup.catalog import find_backup
from dr_pipelines.core.backup.index_map import IndexMap, MappedIndex
from dr_pipelines.core.backup.physical import run_base_backup
from dr_pipelines.core.errors import DrpError
from dr_pipelines.core.frames import KEY as FRAMES_KEY
from dr_pipelines.core.layout import backup_prefix
from dr_pipelines.core.pg.cluster import LocalCluster
from dr_pipelines.core.restore.partial import plan_partial
from dr_pipelines.core.restore.pitr import RecoveryTarget
from dr_pipelines.core.restore.untar import SafeUntar
from dr_pipelines.core.tenancy import TENANTS_SETTING, Scope, discover_scope, tenant_select
from dr_pipelines.core.tenant_restore.drill import clinic_checksums
from dr_pipelines.core.tenant_restore.source import past_database, scope_reads
from dr_pipelines.demo.generate import seed_demo
from dr_pipelines_tests.support.backup import flip_middle_byte, tar_of
from dr_pipelines_tests.support.procs import start_paused
from dr_pipelines_tests.support.wal import WalRig, wait_archived

HOSTILE = '''
CREATE SCHEMA "Ops ü";
CREATE TABLE "Ops ü"."Visit ""Notes""" (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    "Clinic Id" bigint NOT NULL REFERENCES clinics (id),
    body text NOT NULL,
    tags text[] NOT NULL DEFAULT '{}'
);
CREATE INDEX "by clinic ü" ON "Ops ü"."Visit ""Notes""" ("Clinic Id", id);
CREATE INDEX "wide" ON "Ops ü"."Visit ""Notes""" ("Clinic Id", body);
CREATE INDEX "partial" ON "Ops ü"."Visit ""Notes""" ("Clinic Id") WHERE body <> '';
CREATE INDEX "expression" ON "Ops ü"."Visit ""Notes""" (lower(body));
CREATE INDEX "hash" ON "Ops ü"."Visit ""Notes""" USING hash ("Clinic Id");
CREATE INDEX "tags" ON "Ops ü"."Visit ""Notes""" USING gin (tags);
INSERT INTO "Ops ü"."Visit ""Notes""" ("Clinic Id", body, tags)
    SELECT c.id, repeat('note ' || g, 40), ARRAY['t' || (g % 7)] FROM clinics c, generate_series(1, 400) g;
CREATE TABLE ledger (id bigint PRIMARY KEY, clinic_id bigint NOT NULL REFERENCES clinics (id), entry text NOT NULL);
CREATE INDEX ledger_by_clinic ON ledger (clinic_id);
CREATE INDEX ledger_entries ON ledger (entry);  -- past 1 MiB, left out: frames of its own, never decrypted
INSERT INTO ledger SELECT g, 1 + g % 3, md5(g::text) || repeat('x', 100) FROM generate_series(1, 12000) g;
'''
CHANGES = '''
REINDEX INDEX "Ops ü"."wide";
CREATE INDEX appointments_after_backup ON appointments (clinic_id, reason);
INSERT INTO "Ops ü"."Visit ""Notes""" ("Clinic Id", body, tags)
    SELECT 2, repeat('later ' || g, 30), ARRAY['late'] FROM generate_series(1, 300) g;
DELETE FROM "Ops ü"."Visit ""Notes""" WHERE "Clinic Id" = 2 AND id % 5 = 0;
UPDATE patients SET family_name = family_name || ' (renamed)' WHERE clinic_id = 2 AND id % 3 = 0;
'''
DAMAGE = '''
DELETE FROM "Ops ü"."Visit ""Notes""" WHERE "Clinic Id" = 2;
UPDATE patients SET family_name = 'damaged' WHERE clinic_id = 2;
'''


@dataclass
class Source:
    rig: WalRig
    live: str
    base_id: str
    t: str
    at_t: dict[str, tuple[int, str]]  # clinic 2's rows per scope table at T
    scope: Scope

    @property
    def work(self) -> Path:
        return self.rig.root / "work"


@pytest.fixture(scope="module")
def source(work_base: Path) -> Iterator[Source]:
    rig = WalRig.make(work_base / f"partial-{uuid.uuid4().hex[:8]}")
    cluster = LocalCluster.create(rig.root / "pg", settings=rig.cluster_settings("300s"), tcp_trust=True)
    try:
        with rig.archiver():
            live = cluster.create_database("clinics")
            seed_demo(live, clinics=3, scale=0.3, seed=11)
            with psycopg.connect(live, autocommit=True) as conn:
                conn.execute(HOSTILE)
                conn.execute("ANALYZE")
            s = rig.settings()
            base_id = run_base_backup(live, context.storage(s), s.encryption_recipients).id
            with psycopg.connect(live, autocommit=True) as conn:
                conn.execute(CHANGES)
                scope = discover_scope(conn)
                t = conn.execute("SELECT clock_timestamp()").fetchone()[0].isoformat()
            at_t = clinic_checksums(live, scope, ["2"])["2"]
            with psycopg.connect(live, autocommit=True) as conn:
                conn.execute(DAMAGE)
                wait_archived(cluster, conn.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone()[0])
            yield Source(rig, live, base_id, t, at_t, scope)
    finally:
        cluster.remove()


def index_states(dsn: str) -> dict[str, tuple[bool, bool]]:
    """(indisvalid, indisready) of every index outside the system schemas, by "schema.index"."""
    with psycopg.connect(dsn) as conn:
        return {f"{s}.{n}": (v, r) for s, n, v, r in conn.execute(
            "SELECT n.nspname, c.relname, i.indisvalid, i.indisready FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
            " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname NOT IN ('pg_catalog', 'pg_toast')")}


def test_the_base_backup_maps_every_user_index_with_its_file(source: Source) -> None:
    entry = find_backup(context.storage(source.rig.settings()), source.base_id)
    index_map = IndexMap.from_extra(entry.manifest.extra)
    assert index_map is not None and index_map.database == "clinics"
    hostile = {ix.oid: ix for ix in index_map.indexes if ix.schema == "Ops ü"}
    with psycopg.connect(source.live) as conn:
        assert index_map.database_oid == conn.execute(
            "SELECT oid FROM pg_database WHERE datname = current_database()").fetchone()[0]
        names = {oid: (name, filenode) for oid, name, filenode in conn.execute(
            "SELECT oid::bigint, relname, pg_relation_filenode(oid)::bigint FROM pg_class WHERE oid = ANY(%s)",
            (list(hostile),))}
    by_name = {names[oid][0]: ix for oid, ix in hostile.items()}
    assert set(by_name) == {'Visit "Notes"_pkey', "by clinic ü", "wide", "partial", "expression", "hash", "tags"}
    rebuilt = {name for oid, (name, filenode) in names.items() if filenode != hostile[oid].filenode}
    assert rebuilt == {"wide"}  # REINDEX since the backup: same OID, a new file
    assert by_name["by clinic ü"].table == 'Visit "Notes"' and by_name["by clinic ü"].first_column == "Clinic Id"
    assert by_name["expression"].first_column is None and by_name["partial"].partial
    assert (by_name["hash"].method, by_name["tags"].method) == ("hash", "gin")
    parts = [ix for ix in index_map.indexes if ix.root_table == "audit_log"]
    assert parts and all(ix.table.startswith("audit_log_") for ix in parts)


def test_a_partial_pitr_reads_exactly_the_clinics_rows_and_no_left_out_index(source: Source) -> None:
    settings = source.rig.settings()
    lines: list[str] = []
    with past_database(context.storage(settings), context.identities(settings), source.work, database="clinics",
                       at=RecoveryTarget.parse(time=source.t), read_only=True, reads=scope_reads(source.scope),
                       log=lines.append) as past:
        assert clinic_checksums(past.dsn, source.scope, ["2"])["2"] == source.at_t
        where = psycopg.conninfo.conninfo_to_dict(past.dsn)  # promoted, yet only its private socket is open
        assert Path(where["host"]).is_dir() and "password" not in where and "passfile" not in where
        with pytest.raises(psycopg.OperationalError, match="rejects connection"):
            psycopg.connect(host="127.0.0.1", port=where["port"], user=where["user"], dbname="clinics", connect_timeout=5)
        states = index_states(past.dsn)
        kept = {name for name, state in states.items() if state == (True, True)}
        left_out = {name for name, state in states.items() if state == (False, False)}
        assert kept | left_out == set(states)
        # kept for the reads: one per table (the smallest btree led by the tenant column); rebuilt or new since
        assert {'Ops ü.by clinic ü', "public.appointments_after_backup", "Ops ü.wide"} <= kept
        assert {'Ops ü.Visit "Notes"_pkey', "Ops ü.partial", "Ops ü.expression", "Ops ü.hash", "Ops ü.tags",
                "public.appointments_pkey", "public.staff_users_pkey"} <= left_out
        with psycopg.connect(past.dsn) as conn:
            files = dict(conn.execute(
                "SELECT n.nspname || '.' || c.relname, pg_relation_filepath(c.oid) FROM pg_class c"
                " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'i'").fetchall())
            data_dir = Path(conn.execute("SHOW data_directory").fetchone()[0])
            per_partition = conn.execute(  # audit_log: one of the four indexes of each partition kept
                "SELECT count(*) FILTER (WHERE i.indisvalid), count(*) FROM pg_inherits h JOIN pg_index i"
                " ON i.indrelid = h.inhrelid WHERE h.inhparent = 'audit_log'::regclass GROUP BY h.inhrelid").fetchall()
            assert len(per_partition) > 10 and set(per_partition) == {(1, 4)}
            conn.execute("SELECT set_config(%s, '{2}', false)", (TENANTS_SETTING,))
            for t in source.scope.tables:  # the planner never picks a left-out index, whatever it costs
                conn.execute("SET enable_seqscan = off")
                plan = "\n".join(r[0] for r in conn.execute(sql.SQL("EXPLAIN {}").format(tenant_select(t, source.scope))))
                assert not any(f" {sql.Identifier(*name.split('.', 1)[1:]).as_string(conn)} " in plan
                               or f" {name.split('.', 1)[1]} " in plan for name in left_out), (t.name, plan)
        # never read: empty, or only the pages replay wrote since the backup (staff_users has not changed since)
        assert (data_dir / files["public.staff_users_pkey"]).stat().st_size == 0
        on_disk = sum((data_dir / files[n]).stat().st_size for n in left_out if files.get(n))
        with psycopg.connect(source.live) as conn:
            in_live = conn.execute("SELECT sum(pg_relation_size(c.oid)) FROM pg_class c JOIN pg_namespace n"
                                   " ON n.oid = c.relnamespace WHERE n.nspname || '.' || c.relname = ANY(%s)",
                                   (list(left_out),)).fetchone()[0]
        assert on_disk < in_live / 2, (on_disk, in_live)
    assert any("left out of the extraction" in line for line in lines)
    assert any("marked invalid in the past database" in line for line in lines)
    assert list((source.work / "clusters").iterdir()) == []


def test_large_files_are_frames_of_their_own_and_left_out_ones_are_never_decrypted(source: Source) -> None:
    """The base backup's frame table (core/frames.py) names each file of 1 MiB or more; the partial plan leaves
    some of them out (their frames are passed over, undecrypted, by the extraction above) and keeps others."""
    entry = find_backup(context.storage(source.rig.settings()), source.base_id)
    table = entry.manifest.extra[FRAMES_KEY]
    plan = plan_partial(IndexMap.from_extra(entry.manifest.extra), "clinics", scope_reads(source.scope))
    assert plan is not None and table[0] == [0, 0, None] and table[-1][0] == entry.manifest.object("base").plain_bytes
    named = {name for _, _, name in table if name}
    assert {n for n in named if plan.leaves_out(n)} and {n for n in named if not plan.leaves_out(n)}
    skipped = sum(p1 - p0 for (p0, _, name), (p1, _, _) in pairwise(table) if name and plan.leaves_out(name))
    assert skipped >= 1 << 20


def test_without_reads_or_a_map_every_file_is_extracted(source: Source) -> None:
    settings = source.rig.settings()
    with past_database(context.storage(settings), context.identities(settings), source.work, database="clinics",
                       at=RecoveryTarget.parse(time=source.t), read_only=True) as past:
        assert clinic_checksums(past.dsn, source.scope, ["2"])["2"] == source.at_t
        assert set(index_states(past.dsn).values()) == {(True, True)}
    mapped = MappedIndex(1, 500, "s", "t", "s", "t", "c", False, "btree", 8192)
    assert plan_partial(None, "clinics", {("s", "t"): "c"}) is None  # a backup taken before maps were recorded
    assert plan_partial(IndexMap("other", 5, (mapped,)), "clinics", {("s", "t"): "c"}) is None  # another database


def test_only_the_left_out_indexes_files_are_dropped_by_name() -> None:
    ix = [MappedIndex(1, 500, "s", "t", "s", "t", "c", False, "btree", 8192),  # kept: the read's column
          MappedIndex(2, 600, "s", "t", "s", "t", "c", False, "btree", 81920),  # larger: left out
          MappedIndex(3, 700, "s", "u", "s", "u", "c", False, "btree", 8192)]  # a table not read: left out
    plan = plan_partial(IndexMap("clinics", 5, tuple(ix)), "clinics", {("s", "t"): "c"})
    assert plan is not None and dict(plan.left_out) == {600: 2, 700: 3} and plan.kept == ("s.t",)
    for name in ("base/5/600", "./base/5/600.3", "base/5/700_fsm", "base/5/700_vm"):
        assert plan.leaves_out(name), name
    for name in ("base/5/500", "base/5/600_init", "base/6/600", "global/600", "base/5/6000", "base/5/60"):
        assert not plan.leaves_out(name), name


def test_the_untar_creates_a_left_out_file_empty_and_reads_past_its_bytes(tmp_path: Path) -> None:
    members = {"base/5/600": os.urandom(3 * 8192 + 17), "base/5/500": os.urandom(8192), "base/5/600_fsm": b"f" * 100}
    untar = SafeUntar(tmp_path, leave_out=lambda name: name.startswith("base/5/600"))
    raw = tar_of(members)
    for at in range(0, len(raw), 1000):
        untar.write(raw[at:at + 1000])
    untar.finish()
    untar.close()
    assert (tmp_path / "base/5/500").read_bytes() == members["base/5/500"]
    assert (tmp_path / "base/5/600").read_bytes() == b"" and (tmp_path / "base/5/600_fsm").read_bytes() == b""
    assert (tmp_path / "base/5/600").stat().st_mode & 0o777 == 0o600
    assert untar.left_out == 3 * 8192 + 17 + 100 and untar.members == 3


def test_a_flipped_byte_in_the_base_backup_refuses_the_partial_restore_and_leaves_nothing(source: Source) -> None:
    """The left-out files' bytes are still decrypted and hashed: damage anywhere in the object is found."""
    settings = source.rig.settings()
    storage = context.storage(settings)
    obj = find_backup(storage, source.base_id).manifest.object("base")
    stored = source.rig.storage_dir / backup_prefix(source.base_id) / obj.key
    original = stored.read_bytes()
    try:
        stored.write_bytes(flip_middle_byte(original))
        with pytest.raises(DrpError, match="corrupt|damaged|decrypt") as refused, past_database(
                storage, context.identities(settings), source.work, database="clinics",
                at=RecoveryTarget.parse(time=source.t), read_only=True, reads=scope_reads(source.scope)):
            pass
        assert "fix:" in str(refused.value)
    finally:
        stored.write_bytes(original)
    assert list((source.work / "clusters").iterdir()) == []


def test_a_run_killed_during_the_partial_extraction_is_swept_by_the_next(source: Source) -> None:
    """kill -9 while the base backup is half extracted (some index files left empty): the next run removes it."""
    env = {"DRP_CONFIG": str(source.rig.config), "DRP_SOURCE_DSN": source.live, "DRP_WORK_DIR": str(source.work)}
    proc = start_paused(["tenant", "restore", "--clinic", "2", "--at", source.t, "--json"], env, "base-extracting")
    [lease] = [p for p in (source.work / "clusters").iterdir() if p.name.startswith("tenant-restore-")]
    assert (lease / "data").is_dir()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    result = source.rig.drp("tenant", "restore", "--clinic", "2", "--at", source.t, "--json",
                            DRP_SOURCE_DSN=source.live, DRP_WORK_DIR=str(source.work), timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"removed leftover clusters/{lease.name}" in result.stderr and not lease.exists()
    assert "left out of the extraction" in result.stderr
    assert list((source.work / "clusters").iterdir()) == []
