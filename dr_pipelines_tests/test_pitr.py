"""Point-in-time restore on real PostgreSQL: one archiving cluster with a ledger, two base backups.

Between batches of ledger rows the test records a time, an LSN, a transaction id and a named
restore point; a PITR to each restores exactly the rows committed before it (ids and a checksum).
Refusals (target before the oldest base, after the newest WAL, an unknown name, a WAL gap)
happen before anything starts; a corrupt segment met during replay aborts it. Nothing is left
running or on disk after a failure, and the production archive is never written to.
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import shlex
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from dr_pipelines.core import context
from dr_pipelines.core.backup.catalog import list_backups
from dr_pipelines.core.backup.physical import run_base_backup
from dr_pipelines.core.pg.binaries import find_pg_binaries
from dr_pipelines.core.pg.cluster import PASSFILE, LocalCluster, free_port, give_to_server
from dr_pipelines.core.pg.leases import sweep_leftovers
from dr_pipelines.core.restore.pitr import (
    BaseBackup,
    PitrError,
    PitrResult,
    RecoveryTarget,
    check_wal,
    choose_base_backup,
    extract_from_storage,
    restore_to_point,
)
from dr_pipelines.core.restore.recovery import FETCH_SOCKET, served_restore_command
from dr_pipelines.core.restore.targets import base_backups
from dr_pipelines.core.status import current_status
from dr_pipelines.core.storage import Storage
from dr_pipelines.core.wal.archive import newest_committed
from dr_pipelines.core.wal.daemon import serving
from dr_pipelines.core.wal.names import Segment, format_lsn, object_key, parse_lsn, sidecar_key
from dr_pipelines.core.wal.restore import ABORT_RECOVERY_EXIT, WalFetcher, restore_wal
from dr_pipelines.core.wal.restore_points import RestorePointError
from dr_pipelines.core.wal.status import read_pg_wal_state
from dr_pipelines_tests.support.procs import start_paused, wait_for
from dr_pipelines_tests.support.s3 import MotoServer
from dr_pipelines_tests.support.wal import WalRig, pg_os_user, wait_archived

LEDGER = ("CREATE TABLE ledger (id bigserial PRIMARY KEY, committed_at timestamptz NOT NULL DEFAULT clock_timestamp(),"
          " note text)")


@dataclass
class Ledger:
    """The source, its archive, two base backups in its storage and what was recorded between batches."""

    rig: WalRig
    cluster: LocalCluster
    bases: dict[str, str] = field(default_factory=dict)  # short name -> backup id
    marks: dict[str, object] = field(default_factory=dict)
    ids_after: dict[int, list[int]] = field(default_factory=dict)  # batch -> ids committed up to it

    def batch(self, number: int, rows: int = 5) -> int:
        """One transaction of rows; returns its xid."""
        with psycopg.connect(self.cluster.dsn()) as conn:
            xid = conn.execute("SELECT txid_current()").fetchone()[0]
            conn.execute("INSERT INTO ledger (note) SELECT %s || '-' || g FROM generate_series(1, %s) g",
                         (f"batch{number}", rows))
        self.ids_after[number] = self.ids()
        return xid

    def ids(self) -> list[int]:
        with psycopg.connect(self.cluster.dsn()) as conn:
            return [r[0] for r in conn.execute("SELECT id FROM ledger ORDER BY id")]

    def sql(self, query: str) -> object:
        with psycopg.connect(self.cluster.dsn(), autocommit=True) as conn:
            cur = conn.execute(query)
            return cur.fetchone()[0] if cur.description else None

    def switch(self) -> None:
        """Close the open segment and wait until it is archived: everything so far is restorable."""
        wait_archived(self.cluster, str(self.sql("SELECT pg_walfile_name(pg_switch_wal())")))

    @property
    def storage(self) -> Storage:
        return context.storage(self.rig.settings())

    def base_backup(self, name: str) -> None:
        """A real base backup into the archive's storage (run_base_backup), remembered under a short name."""
        manifest = run_base_backup(self.cluster.dsn(), self.storage, self.rig.settings().encryption_recipients)
        self.bases[name] = manifest.id

    def base_entries(self) -> list[Any]:
        return list_backups(self.storage)

    def base(self, name: str) -> BaseBackup:
        return next(b for b in base_backups(self.base_entries()) if b.id == self.bases[name])


@contextmanager
def ledger_on(rig: WalRig) -> Iterator[Ledger]:
    """An archiving cluster with six ledger batches, base backup a after batch 1 and b after batch 4;
    a time after batch 2, an LSN after batch 3, batch 4's xid and restore point 'after-batch5' recorded."""
    # few segments to replay: switches only where the test makes them
    cluster = LocalCluster.create(rig.root / "pg", settings=rig.cluster_settings("300s"), tcp_trust=True)
    led = Ledger(rig, cluster)
    try:
        with rig.archiver():
            led.sql(LEDGER)
            led.batch(1)
            led.base_backup("a")
            led.batch(2)
            led.marks["time"] = led.sql("SELECT clock_timestamp()")
            led.batch(3)
            led.marks["lsn"] = led.sql("SELECT pg_current_wal_lsn()::text")
            led.marks["xid"] = led.batch(4)
            led.base_backup("b")
            led.batch(5)
            led.switch()  # so a segment lies strictly between base b and the archive's end (the gap test)
            point = rig.drp("wal", "restore-point", "after-batch5", DRP_SOURCE_DSN=cluster.dsn())
            assert point.returncode == 0, point.stderr
            led.batch(6)
            led.switch()
            yield led
    finally:
        led.cluster.remove()
        cluster.remove()


@pytest.fixture(scope="module")
def ledger(work_base: Path) -> Iterator[Ledger]:
    with ledger_on(WalRig.make(work_base / f"pitr-{uuid.uuid4().hex[:8]}")) as led:
        yield led


@pytest.fixture
def where(ledger: Ledger) -> Path:
    """A folder the server's OS user can reach (pytest's tmp_path is root's 0700)."""
    path = ledger.rig.root / "restores" / uuid.uuid4().hex[:8]
    path.mkdir(parents=True)
    return path


def pitr(ledger: Ledger, target: RecoveryTarget, data_dir: Path, **kwargs: Any) -> PitrResult:
    """restore_to_point on the ledger's storage: base backups extracted from it, WAL served by this process."""
    storage, identities = ledger.storage, context.identities(ledger.rig.settings(), None)
    kwargs.setdefault("extract", extract_from_storage(storage, identities))
    return restore_to_point(storage, target, data_dir, entries=ledger.base_entries(), work_dir=ledger.rig.root / "work",
                            identities=identities, **kwargs)


def ids_of(conn: psycopg.Connection) -> list[int]:
    return [r[0] for r in conn.execute("SELECT id FROM ledger ORDER BY id")]


def restored_ids(result: PitrResult) -> tuple[list[int], str]:
    assert result.recovery.dsn is not None
    with psycopg.connect(result.recovery.dsn) as conn:
        rows = conn.execute("SELECT id, note FROM ledger ORDER BY id").fetchall()
    return [r[0] for r in rows], hashlib.sha256(repr(rows).encode()).hexdigest()


def source_checksum(ledger: Ledger, upto: int) -> str:
    with psycopg.connect(ledger.cluster.dsn()) as conn:
        rows = conn.execute("SELECT id, note FROM ledger WHERE id <= %s ORDER BY id", (upto,)).fetchall()
    return hashlib.sha256(repr(rows).encode()).hexdigest()


def archive_listing(rig: WalRig) -> dict[str, str]:
    return {str(p.relative_to(rig.storage_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(rig.storage_dir.rglob("*")) if p.is_file()}


def assert_untouched_by_restores(ledger: Ledger, before: dict[str, str]) -> None:
    """Every object byte-identical; new ones only the source's own timeline-1 segments (it keeps archiving).
    A restored cluster that archived would add its 00000002.history, a .partial and timeline-2 segments."""
    after = archive_listing(ledger.rig)
    assert {k: after.get(k) for k in before} == before
    added = sorted(set(after) - set(before))
    assert all(k.startswith("wal/00000001/00000001") and ".partial" not in k for k in added), added


def nothing_left(data_dir: Path) -> None:
    assert not data_dir.exists() or not any(data_dir.iterdir()), f"{data_dir} left behind"
    ps = subprocess.run(["pgrep", "-af", str(data_dir)], capture_output=True, text=True)
    assert ps.stdout.strip() == "", ps.stdout


@pytest.mark.parametrize("kind, batch, base", [
    ("time", 2, "a"),  # base b stopped after this time: choosing it would overshoot
    ("xid", 4, "a"),  # base b's next xid is past batch 4's: it cannot stop before it
    ("name", 5, "b"),
    ("latest", 6, "b"),
])
def test_pitr_restores_exactly_the_rows_committed_before_the_target(ledger: Ledger, where: Path, kind: str,
                                                                    batch: int, base: str) -> None:
    value = {"time": lambda: ledger.marks["time"].isoformat(), "lsn": lambda: ledger.marks["lsn"],  # type: ignore[attr-defined]
             "xid": lambda: str(ledger.marks["xid"]), "name": lambda: "after-batch5", "latest": lambda: True}[kind]()
    target = RecoveryTarget.parse(**{kind: value})
    before = archive_listing(ledger.rig)
    progress: list[tuple[str, int, int | None]] = []
    result = pitr(ledger, target, where / "restored", progress=lambda *a: progress.append(a))
    try:
        assert result.base.id == ledger.bases[base]
        ids, checksum = restored_ids(result)
        assert ids == ledger.ids_after[batch]
        assert checksum == source_checksum(ledger, ids[-1])
        assert result.recovery.timeline == 2  # promoted onto a new timeline
        with psycopg.connect(result.recovery.dsn) as conn:
            assert conn.execute("SELECT current_setting('archive_mode')").fetchone()[0] == "off"
        with pytest.raises(psycopg.OperationalError):  # scram: no password, no entry
            psycopg.connect(host="127.0.0.1", port=result.recovery.port, user="postgres", dbname="postgres").close()
        assert progress and progress[-1][0] == "WAL replayed"
    finally:
        LocalCluster(data_dir=result.recovery.data_dir, port=result.recovery.port).remove()
    assert_untouched_by_restores(ledger, before)


def test_the_restored_server_starts_once_and_is_secured_without_a_restart(ledger: Ledger, where: Path) -> None:
    """One start: the promoted server already listens on 127.0.0.1; FINAL_HBA is reloaded (scram on TCP and
    socket, proven by a login with the passfile), the recovery settings leave the file, archiving stays off.
    A busy port is replaced by another before anything is recovered."""
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    taken = busy.getsockname()[1]
    try:
        result = pitr(ledger, RecoveryTarget.parse(latest=True), where / "restored", port=taken)
    finally:
        busy.close()
    rec = result.recovery
    cluster = LocalCluster(data_dir=rec.data_dir, port=rec.port)
    try:
        assert rec.port != taken and rec.timeline == 2 and rec.dsn is not None
        log = cluster.log_tail(10000)
        assert log.count("starting PostgreSQL") == 1 and "shutdown request" not in log, log
        assert "selected new timeline ID: 2" in log and "archive recovery complete" in log
        # promotion followed by postmaster.pid's status and one kept connection: no attempt the server refused
        assert "the database system is starting up" not in log and "not yet accepting connections" not in log, log
        with psycopg.connect(rec.dsn) as conn:  # scram with the passfile, over TCP
            assert conn.execute("SELECT pg_is_in_recovery(), current_setting('archive_mode'), "
                                "current_setting('archive_command'), inet_server_addr()::text").fetchone() == (
                False, "off", "(disabled)", "127.0.0.1/32")
            rules = conn.execute("SELECT type, auth_method FROM pg_hba_file_rules ORDER BY line_number").fetchall()
            assert rules == [("local", "scram-sha-256"), ("host", "scram-sha-256"), ("host", "scram-sha-256")]
            assert ids_of(conn) == ledger.ids_after[6]
        auto = (rec.data_dir / "postgresql.auto.conf").read_text()
        assert "restore_command" not in auto and "recovery_target" not in auto and "archive_mode = off" in auto
        assert "recovery_init_sync_method" not in auto  # syncfs only for the first start after extraction
        assert f"port = {rec.port}" in auto and not (rec.data_dir / "recovery.signal").exists()
        for where_to in ({"host": "127.0.0.1"}, {"host": str(rec.data_dir)}):  # no password: refused on both
            with pytest.raises(psycopg.OperationalError, match="password"):
                psycopg.connect(port=rec.port, user="postgres", dbname="postgres", passfile="/dev/null",
                                **where_to).close()
    finally:
        cluster.remove()


def test_pause_leaves_a_read_only_standby_at_the_target_reached_only_over_its_socket(ledger: Ledger,
                                                                                  where: Path) -> None:
    """pause=True (a tenant restore that only reads the past): the rows at the target exactly, in recovery and
    paused there, read-only, on the timeline replayed (no promotion: no timeline 2, nothing archived), TCP still
    rejected by pg_hba (no password exists), the DSN a unix socket in a 0700 folder."""
    before = archive_listing(ledger.rig)
    result = pitr(ledger, RecoveryTarget.parse(time=ledger.marks["time"].isoformat()), where / "restored", pause=True)
    rec = result.recovery
    try:
        assert rec.paused and rec.dsn is not None and rec.timeline == 1  # the target lies on timeline 1
        host = psycopg.conninfo.conninfo_to_dict(rec.dsn)["host"]
        assert host.startswith("/") and os.stat(host).st_mode & 0o077 == 0
        ids, checksum = restored_ids(result)
        assert ids == ledger.ids_after[2] and checksum == source_checksum(ledger, ids[-1])
        with psycopg.connect(rec.dsn, autocommit=True) as conn:
            assert conn.execute("SELECT pg_is_in_recovery(), pg_get_wal_replay_pause_state()").fetchone() == (
                True, "paused")
            with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
                conn.execute("INSERT INTO ledger (note) VALUES ('written into the past')")
        with pytest.raises(psycopg.OperationalError, match="pg_hba.conf rejects"):
            psycopg.connect(host="127.0.0.1", port=rec.port, user="postgres", dbname="postgres",
                            passfile="/dev/null").close()
        assert "selected new timeline ID" not in LocalCluster(data_dir=rec.data_dir, port=rec.port).log_tail(10000)
    finally:
        LocalCluster(data_dir=rec.data_dir, port=rec.port).remove()
    assert_untouched_by_restores(ledger, before)


def test_tcp_is_rejected_while_recovering_and_if_the_restore_dies_before_securing(ledger: Ledger,
                                                                               where: Path) -> None:
    """Until the fresh password and scram are in place TCP is refused by pg_hba, even for the superuser of a
    source whose password we may know: a restore killed there leaves a server nobody can log into over TCP."""
    data_dir, work = where / "restored", ledger.rig.root / "work"
    proc = start_paused(["restore", "--pitr", "--latest", "--data-dir", str(data_dir)],
                        {"DRP_CONFIG": str(ledger.rig.config), "DRP_WORK_DIR": str(work)}, "pitr-recovering")
    try:
        auto = (data_dir / "postgresql.auto.conf").read_text()
        port = int(next(line.split("=")[1] for line in auto.splitlines() if line.startswith("port")))
        assert "listen_addresses = '127.0.0.1'" in auto

        answers: list[str] = []

        def answered() -> bool:
            try:
                psycopg.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres",
                                passfile="/dev/null", connect_timeout=2).close()
                answers.append("logged in")
            except psycopg.OperationalError as exc:
                if "pg_hba.conf rejects connection" in str(exc):
                    answers.append("rejected")
            return bool(answers)

        wait_for(answered, timeout=30, what="the recovering server to answer on TCP", interval=0.1)
        assert answers == ["rejected"]  # up and saying no, not merely not listening yet
    finally:
        proc.kill()
        proc.wait()
    sweep_leftovers(work)
    nothing_left(data_dir)


def test_cli_pitr_to_an_lsn_into_a_data_dir_leaves_it_stopped(ledger: Ledger, where: Path) -> None:
    data_dir = where / "restored"
    before = archive_listing(ledger.rig)
    run = ledger.rig.drp("restore", "--pitr", "--lsn", str(ledger.marks["lsn"]), "--data-dir", str(data_dir),
                         "--json", timeout=300,
                         DRP_WORK_DIR=str(ledger.rig.root / "work"))
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["base_backup"] == ledger.bases["a"] and report["timeline"] == 2 and report["running"] is False
    assert report["target"] == f"lsn {ledger.marks['lsn']} (inclusive)"
    cluster = LocalCluster.attach(data_dir)
    assert not cluster.is_running()
    cluster.start()
    try:
        with psycopg.connect(cluster.dsn()) as conn:
            rows = conn.execute("SELECT id, note FROM ledger ORDER BY id").fetchall()
        assert [r[0] for r in rows] == ledger.ids_after[3]
        assert hashlib.sha256(repr(rows).encode()).hexdigest() == source_checksum(ledger, rows[-1][0])
    finally:
        cluster.remove()
    assert_untouched_by_restores(ledger, before)
    assert list((ledger.rig.root / "work" / "clusters").iterdir()) == []  # the lease (and its WAL spool) is gone


def test_a_killed_pitr_is_swept_by_the_next_command(ledger: Ledger, where: Path) -> None:
    """kill -9 while PostgreSQL replays: the server keeps running on a half-restored directory until the
    next command's sweep stops it and deletes the directory (its lease names it)."""
    data_dir, work = where / "restored", ledger.rig.root / "work"
    proc = start_paused(["restore", "--pitr", "--latest", "--data-dir", str(data_dir)],
                        {"DRP_CONFIG": str(ledger.rig.config), "DRP_WORK_DIR": str(work)},
                        "pitr-recovering")
    proc.kill()
    proc.wait()
    assert (data_dir / "postmaster.pid").exists() or (data_dir / "PG_VERSION").exists()
    swept = sweep_leftovers(work)
    assert any("server stopped" in line and str(data_dir) in line for line in swept), swept
    nothing_left(data_dir)
    assert list((work / "clusters").iterdir()) == []  # the lease, its spool and its socket folder


@pytest.mark.parametrize("flag, existed", [("--new-cluster", False), ("--data-dir", True)])
def test_a_pitr_killed_while_extracting_is_swept_by_the_next_command(ledger: Ledger, where: Path, flag: str,
                                                                     existed: bool) -> None:
    """kill -9 with the base backup half unpacked (no server, no passfile yet): the lease covers the extraction,
    so the next command's sweep deletes the directory it made, or empties the empty one the user gave."""
    data_dir, work = where / "restored", ledger.rig.root / "work"
    if existed:
        data_dir.mkdir(mode=0o700)
    proc = start_paused(["restore", "--pitr", "--latest", flag, str(data_dir)],
                        {"DRP_CONFIG": str(ledger.rig.config), "DRP_WORK_DIR": str(work)}, "base-extracting")
    proc.kill()
    proc.wait()
    assert len(list(data_dir.rglob("*"))) >= 10 and not (data_dir / PASSFILE).exists()
    assert not (data_dir / "postmaster.pid").exists()
    swept = sweep_leftovers(work)
    assert any(f"{data_dir} {'emptied' if existed else 'deleted'}" in line for line in swept), swept
    assert data_dir.is_dir() == existed
    nothing_left(data_dir)
    assert list((work / "clusters").iterdir()) == []  # the lease and its spool


def test_prefetch_refills_the_spool_in_batches(ledger: Ledger, where: Path) -> None:
    """A request served from the spool fetches nothing; once half the window is used, the rest is fetched
    at once (in parallel), instead of one segment per request, each waited for."""
    settings = ledger.rig.settings()
    storage, identities = ledger.storage, context.identities(settings, None)
    first = Segment.parse(ledger.base("a").wal_start)
    names = [first.name] + [s.name for s in first.following(3)]
    spool = where / "spool"
    assert restore_wal(storage, identities, names[0], where / "x", spool=spool, prefetch=2) == "archive"
    assert sorted(p.name for p in spool.iterdir()) == names[1:3]
    assert restore_wal(storage, identities, names[1], where / "x", spool=spool, prefetch=2) == "spool"
    assert sorted(p.name for p in spool.iterdir()) == names[2:3]  # half the window still spooled: no fetch
    assert restore_wal(storage, identities, names[2], where / "x", spool=spool, prefetch=2) == "spool"
    assert sorted(p.name for p in spool.iterdir()) == [names[3], first.following(4)[-1].name]


def test_targets_parse_strictly() -> None:
    assert RecoveryTarget.parse(lsn="0/3000060").lsn == 0x3000060
    assert RecoveryTarget.parse(time="2026-12-01 02:10:00+00").time == datetime(2026, 12, 1, 2, 10, tzinfo=UTC)
    assert RecoveryTarget.parse(xid="1234", inclusive=False).settings() == {
        "recovery_target_xid": "1234", "recovery_target_inclusive": "off"}
    for bad, words in [({"time": "2026-12-01 02:10:00"}, "no UTC offset"), ({"lsn": "3000060"}, "not an LSN"),
                       ({"xid": "x"}, "not a transaction id"), ({}, "exactly one target"),
                       ({"lsn": "0/1", "latest": True}, "exactly one target")]:
        with pytest.raises(Exception, match=words):
            RecoveryTarget.parse(**bad)  # type: ignore[arg-type]
    assert format_lsn(parse_lsn("1A/2B")) == "1A/2B"


def test_target_before_the_oldest_base_is_refused_naming_it(ledger: Ledger, where: Path) -> None:
    oldest = ledger.base("a")
    target = RecoveryTarget.parse(time=(oldest.stop_time - timedelta(seconds=1)).isoformat())
    with pytest.raises(PitrError, match=f"before the oldest restorable point: base backup {ledger.bases['a']}") as exc:
        pitr(ledger, target, where / "restored")
    assert oldest.stop_time.isoformat() in str(exc.value)
    nothing_left(where / "restored")
    assert choose_base_backup(ledger.base_entries(), RecoveryTarget.parse(latest=True)).id == ledger.bases["b"]


def test_target_after_the_newest_archived_wal_is_refused(ledger: Ledger, where: Path) -> None:
    far = RecoveryTarget.parse(time=(datetime.now(UTC) + timedelta(hours=1)).isoformat())
    with pytest.raises(PitrError, match="after the newest archived WAL") as exc:
        pitr(ledger, far, where / "restored")
    assert "--latest" in str(exc.value)
    lsn = RecoveryTarget.parse(lsn="FF/0")
    with pytest.raises(PitrError, match="after the newest archived WAL"):
        pitr(ledger, lsn, where / "restored")
    nothing_left(where / "restored")


def test_recovery_ending_before_the_target_is_an_error_and_leaves_nothing(ledger: Ledger, where: Path) -> None:
    """An xid cannot be placed in the archive beforehand: PostgreSQL runs out of WAL and says so (FATAL)."""
    never = RecoveryTarget.parse(xid=str(int(ledger.marks["xid"]) + 1_000_000))  # type: ignore[call-overload]
    with pytest.raises(PitrError, match="recovery ended before the target was reached") as exc:
        pitr(ledger, never, where / "restored")
    assert "--latest" in str(exc.value)
    nothing_left(where / "restored")


def test_an_unknown_restore_point_name_lists_the_known_ones(ledger: Ledger, where: Path) -> None:
    with pytest.raises(RestorePointError, match=r"no restore point named 'nope'.*known: after-batch5"):
        pitr(ledger, RecoveryTarget.parse(name="nope"), where / "restored")
    again = ledger.rig.drp("wal", "restore-point", "after-batch5", DRP_SOURCE_DSN=ledger.cluster.dsn())
    assert again.returncode == 1 and "already exists" in again.stderr
    nothing_left(where / "restored")


def _stored(ledger: Ledger, name: str) -> tuple[Path, Path]:
    return ledger.rig.storage_dir / object_key(name), ledger.rig.storage_dir / sidecar_key(name)


def _segment_between(ledger: Ledger, base: str) -> str:
    """A segment after base's start that recovery to 'latest' must replay."""
    start = ledger.base(base).wal_start
    return f"{start[:16]}{int(start[16:], 16) + 1:08X}"


def test_a_wal_gap_is_named_and_the_pitr_refused_before_anything_starts(ledger: Ledger, where: Path) -> None:
    name = _segment_between(ledger, "b")
    moved = [(p, p.with_name(p.name + ".away")) for p in _stored(ledger, name)]
    for src, dst in moved:
        src.rename(dst)
    try:
        with pytest.raises(PitrError, match=f"PITR past a gap refused.*{name}"):
            pitr(ledger, RecoveryTarget.parse(latest=True), where / "restored")
        nothing_left(where / "restored")
    finally:
        for src, dst in moved:
            dst.rename(src)


def test_a_time_before_a_later_gap_restores_and_the_gap_is_noted(ledger: Ledger, where: Path) -> None:
    """A time target needs the WAL up to the first segment archived after the time: a gap after that is
    noted, not refused, and the restore is exact; a gap before the time is refused (past a gap: above)."""
    target = RecoveryTarget.parse(time=ledger.marks["time"].isoformat())  # type: ignore[attr-defined]
    later = _segment_between(ledger, "b")
    moved = [(p, p.with_name(p.name + ".away")) for p in _stored(ledger, later)]
    for src, dst in moved:
        src.rename(dst)
    lines: list[str] = []
    try:
        plan = check_wal(ledger.storage, ledger.base("a"), target)
        assert plan.last < later and any(b.startswith(later) for b in plan.beyond)
        result = pitr(ledger, target, where / "restored", log=lines.append)
        try:
            ids, checksum = restored_ids(result)
            assert ids == ledger.ids_after[2] and checksum == source_checksum(ledger, ids[-1])
            assert any(line.startswith("note: after") and later in line for line in lines)
        finally:
            LocalCluster(data_dir=result.recovery.data_dir, port=result.recovery.port).remove()
        earlier = ledger.base("a").wal_start
        moved_too = [(p, p.with_name(p.name + ".away")) for p in _stored(ledger, earlier)]
        moved += moved_too
        for src, dst in moved_too:
            src.rename(dst)
        with pytest.raises(PitrError, match=f"PITR past a gap refused.*{earlier}"):
            check_wal(ledger.storage, ledger.base("a"), target)
    finally:
        for src, dst in moved:
            dst.rename(src)


def test_a_gap_found_while_extracting_abandons_the_extraction_before_any_start(ledger: Ledger, where: Path) -> None:
    """The WAL check runs beside the extraction: its refusal stops the extraction at the next tar member,
    removes it and is what is raised; PostgreSQL never starts."""
    name = _segment_between(ledger, "b")
    moved = [(p, p.with_name(p.name + ".away")) for p in _stored(ledger, name)]
    copy = extract_from_storage(ledger.storage, context.identities(ledger.rig.settings(), None))
    seen: list[BaseException] = []

    def slow_extract(base: BaseBackup, data_dir: Path) -> None:
        time.sleep(3)  # the check (milliseconds here) fails meanwhile
        try:
            copy(base, data_dir)
        except BaseException as exc:
            seen.append(exc)
            raise

    for src, dst in moved:
        src.rename(dst)
    try:
        with pytest.raises(PitrError, match=f"PITR past a gap refused.*{name}"):
            pitr(ledger, RecoveryTarget.parse(latest=True), where / "restored", extract=slow_extract)
        assert len(seen) == 1 and "PITR past a gap refused" in str(seen[0])  # abandoned by the check's refusal
        nothing_left(where / "restored")
        assert not (where / "restored").exists()
    finally:
        for src, dst in moved:
            dst.rename(src)


def test_only_the_wal_a_restore_needs_is_checked(ledger: Ledger) -> None:
    """A damaged segment older than the chosen base does not block it; the same from the older base is refused."""
    name = ledger.base("a").wal_start
    obj, _ = _stored(ledger, name)
    original = obj.read_bytes()
    obj.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    try:
        latest = RecoveryTarget.parse(latest=True)
        assert check_wal(ledger.storage, ledger.base("b"), latest).first == ledger.base("b").wal_start
        with pytest.raises(PitrError, match=f"{name} \\(corrupt\\)"):
            check_wal(ledger.storage, ledger.base("a"), latest)
    finally:
        obj.write_bytes(original)


def test_a_corrupt_segment_aborts_recovery_naming_it(ledger: Ledger, where: Path) -> None:
    """Checked before start (the stored SHA-256) and, if damaged after that check, by fetch's exit status."""
    name = _segment_between(ledger, "b")
    obj, _ = _stored(ledger, name)
    original = obj.read_bytes()
    damaged = bytearray(original)
    damaged[len(damaged) // 2] ^= 0x01
    obj.write_bytes(bytes(damaged))
    try:
        with pytest.raises(PitrError, match=f"{name} \\(corrupt\\)"):
            pitr(ledger, RecoveryTarget.parse(latest=True), where / "checked")
        nothing_left(where / "checked")

        fetch = ledger.rig.drp("wal", "fetch", name, str(where / name))
        assert fetch.returncode == ABORT_RECOVERY_EXIT and name in fetch.stderr  # > 125: PostgreSQL aborts
        missing = ledger.rig.drp("wal", "fetch", "0000000100000000000000FF", str(where / "x"))
        assert missing.returncode == 1  # not in the archive: the normal end of recovery

        obj.write_bytes(original)  # intact when checked, damaged once the check is done: replay meets it

        def damage_once_checked(line: str) -> None:  # logged after the check and the extraction, before the start
            if line.endswith(" checked"):
                obj.write_bytes(bytes(damaged))

        with pytest.raises(PitrError, match=f"recovery failed(.|\n)*{name}"):
            pitr(ledger, RecoveryTarget.parse(latest=True), where / "replayed", log=damage_once_checked)
        nothing_left(where / "replayed")
    finally:
        obj.write_bytes(original)


def test_the_last_segment_asked_again_after_the_end_is_served_from_the_spool(ledger: Ledger, where: Path) -> None:
    """End of archive recovery: the next segment is missing, then PostgreSQL asks for the last one again (to
    begin its new timeline). The spool still holds it (a missing answer sweeps nothing): no second fetch.
    Once a later file is found, it is swept."""
    first = Segment.parse(ledger.base("b").wal_start)
    last, after = first.following(1)[0].name, "0000000100000000000000FF"
    data_dir, spool = where / "data", where / "spool"
    (data_dir / "pg_wal").mkdir(parents=True, mode=0o700)
    dest = data_dir / "pg_wal" / "RECOVERYXLOG"
    fetcher = WalFetcher(ledger.storage, context.identities(ledger.rig.settings(), None), data_dir, spool=spool,
                         prefetch=2)
    try:
        assert fetcher.answer(f"fetch\t{last}\t{dest}") == "ok archive"
        wanted = hashlib.sha256(dest.read_bytes()).hexdigest()
        dest.unlink()  # PostgreSQL deletes RECOVERYXLOG once read
        assert fetcher.answer(f"fetch\t{after}\t{dest}").startswith("missing")
        obj, _ = _stored(ledger, last)
        hidden = obj.with_name(obj.name + ".away")
        obj.rename(hidden)  # a second fetch from the archive would now fail
        try:
            assert fetcher.answer(f"fetch\t{last}\t{dest}") == "ok spool"
        finally:
            hidden.rename(obj)
        assert hashlib.sha256(dest.read_bytes()).hexdigest() == wanted
        assert fetcher.answer(f"fetch\t{first.following(2)[-1].name}\t{dest}").startswith("ok")
        assert last not in {p.name for p in spool.iterdir()}
    finally:
        fetcher.close()


def test_the_served_restore_command_exits_0_1_or_200_and_writes_only_into_pg_wal(ledger: Ledger, where: Path) -> None:
    """restore_command as PostgreSQL runs it (its OS user, in the data directory, %p = pg_wal/RECOVERYXLOG)
    against the WalFetcher a PITR serves: 0 and the file the server's user can read, 1 for a name not in
    the archive, 200 (PostgreSQL aborts) for a corrupt one, a destination outside pg_wal, a bad name, or
    the restore gone (no fallback)."""
    name = _segment_between(ledger, "b")
    data_dir, sock_dir = where / "data", where / "sock"
    (data_dir / "pg_wal").mkdir(parents=True, mode=0o700)
    sock_dir.mkdir(mode=0o700)
    give_to_server(data_dir)
    give_to_server(sock_dir)
    identities = context.identities(ledger.rig.settings(), None)
    user, sock = pg_os_user(), sock_dir / FETCH_SOCKET
    uid = pwd.getpwnam(user).pw_uid if user else os.geteuid()
    command = served_restore_command(sock)

    def restore_command(wal: str, dest: str = "pg_wal/RECOVERYXLOG") -> subprocess.CompletedProcess[str]:
        line = command.replace("%f", shlex.quote(wal)).replace("%p", shlex.quote(dest))
        return subprocess.run(["sh", "-c", line], cwd=data_dir, user=user, group=user, capture_output=True, text=True,
                              timeout=60)

    with serving(WalFetcher(ledger.storage, identities, data_dir), sock, owner_uid=uid if user else None):
        assert (sock.stat().st_uid, sock.stat().st_mode & 0o777) == (uid, 0o600)
        ok = restore_command(name)
        assert ok.returncode == 0, ok.stderr
        got = data_dir / "pg_wal" / "RECOVERYXLOG"
        restore_wal(ledger.storage, identities, name, where / "direct")
        assert got.read_bytes() == (where / "direct").read_bytes()
        assert (got.stat().st_uid, got.stat().st_mode & 0o777) == (uid, 0o600)
        missing = restore_command("0000000100000000000000FF")
        assert missing.returncode == 1 and "not in the archive" in missing.stderr, missing.stderr
        for dest in (str(where / "outside"), "../outside", "pg_wal/../../outside", "base/RECOVERYXLOG"):
            refused = restore_command(name, dest)
            assert refused.returncode == ABORT_RECOVERY_EXIT and "refusing" in refused.stderr, (dest, refused.stderr)
        assert not (where / "outside").exists() and not (data_dir / "base").exists()
        bad = restore_command("../../../outside")
        assert bad.returncode == ABORT_RECOVERY_EXIT and "not a WAL file name" in bad.stderr, bad.stderr
        obj, _ = _stored(ledger, name)
        original = obj.read_bytes()
        obj.write_bytes(original[:100] + bytes([original[100] ^ 1]) + original[101:])
        try:
            corrupt = restore_command(name)
        finally:
            obj.write_bytes(original)
        assert corrupt.returncode == ABORT_RECOVERY_EXIT and "corrupt" in corrupt.stderr, corrupt.stderr
    assert not sock.exists()
    gone = restore_command(name)
    assert gone.returncode == ABORT_RECOVERY_EXIT and "gone" in gone.stderr, gone.stderr


def test_cli_refuses_bad_pitr_input_without_a_traceback(ledger: Ledger, where: Path) -> None:
    dest, work = str(where / "restored"), {"DRP_WORK_DIR": str(ledger.rig.root / "work")}
    unknown = ledger.rig.drp("restore", "--pitr", "--restore-point", "nope", "--new-cluster", dest, **work)
    assert unknown.returncode == 1 and "known: after-batch5" in unknown.stderr and "Traceback" not in unknown.stderr
    two = ledger.rig.drp("restore", "--pitr", "--latest", "--lsn", "0/1", "--new-cluster", dest)
    assert two.returncode == 2 and "exactly one target" in two.stderr
    naive = ledger.rig.drp("restore", "--pitr", "--time", "2026-12-01 02:10:00", "--data-dir", dest)
    assert naive.returncode == 2 and "no UTC offset" in naive.stderr
    no_pitr = ledger.rig.drp("restore", "--time", "2026-12-01 02:10:00+00", "--new-cluster", dest)
    assert no_pitr.returncode == 2 and "add --pitr" in no_pitr.stderr
    nothing_left(where / "restored")


def test_pitr_from_s3(work_base: Path, s3_server: MotoServer, s3_bucket: str) -> None:
    """The same ledger archived to S3 (moto over HTTP): a PITR to the LSN after batch 3, fetched with prefetch."""
    rig = WalRig.make(work_base / f"pitr-s3-{uuid.uuid4().hex[:8]}", storage={
        "storage_url": f"s3://{s3_bucket}/clinic-a", "s3_endpoint_url": s3_server.endpoint_url,
        "s3_region": s3_server.region, "s3_access_key_id": s3_server.access_key,
        "s3_secret_access_key": s3_server.secret_key})
    with ledger_on(rig) as led:
        where = rig.root / "restores"
        where.mkdir()
        result = pitr(led, RecoveryTarget.parse(lsn=str(led.marks["lsn"])), where / "restored", prefetch=4)
        try:
            assert result.base.id == led.bases["a"]
            ids, checksum = restored_ids(result)
            assert ids == led.ids_after[3] and checksum == source_checksum(led, ids[-1])
        finally:
            LocalCluster(data_dir=result.recovery.data_dir, port=result.recovery.port).remove()


def test_status_recovery_point_is_the_newest_archived_wal_not_the_newest_backup(ledger: Ledger) -> None:
    """With WAL archived, what a loss would lose is measured from the newest archived segment (age 0 when the
    server is caught up), not from the newest base backup: the same status two hours on, when no backup is new."""
    ledger.switch()
    newest = newest_committed(ledger.storage)
    assert newest is not None and newest.name > ledger.base("b").wal_start
    later = datetime.now(UTC) + timedelta(hours=2)
    stored = current_status(ledger.rig.settings(), now=later)  # the source not asked: the push time decides
    assert stored.recovery_point == f"WAL segment {newest.name}"
    pushed = datetime.fromisoformat(newest.pushed_at)
    assert stored.recovery_point_age_minutes == round((later - pushed).total_seconds() / 60, 1)
    assert stored.newest_restorable == ledger.bases["b"] and not stored.rpo_met
    caught = current_status(ledger.rig.settings(), now=later, pg=read_pg_wal_state(ledger.cluster.dsn()))
    assert caught.recovery_point == f"WAL segment {newest.name} (server caught up)"
    assert caught.recovery_point_age_minutes == 0.0 and caught.rpo_met
    assert not any("RPO target" in p for p in caught.problems), caught.problems

    run = ledger.rig.drp("status", "--json", DRP_SOURCE_DSN=ledger.cluster.dsn())
    body = json.loads(run.stdout)
    assert (body["recovery_point"], body["recovery_point_age_minutes"], body["rpo_met"]) == (
        f"WAL segment {newest.name} (server caught up)", 0.0, True), run.stderr
    text = ledger.rig.drp("status", DRP_SOURCE_DSN=ledger.cluster.dsn())
    assert (f"recovery point:     WAL segment {newest.name} (server caught up) (0.0 min old; RPO target "
            f"{ledger.rig.settings().rpo_minutes} min: met)") in text.stdout, text.stdout


def test_pitr_on_timeline_2_after_a_standby_is_promoted(ledger: Ledger, where: Path) -> None:
    """The primary is lost and its standby (archiving to the same repository) promoted: timeline 2.
    A PITR from base a (timeline 1) follows the history file to a restore point on timeline 2.
    Runs last: the ledger's primary is stopped."""
    standby_dir = ledger.rig.root / "standby"
    subprocess.run([find_pg_binaries().tool("pg_basebackup"), "-d", ledger.cluster.dsn(), "-D", str(standby_dir),
                    "-Fp", "-X", "stream", "-R", "--checkpoint=fast"], check=True, capture_output=True)
    give_to_server(standby_dir)
    standby = LocalCluster(data_dir=standby_dir, port=free_port(), tcp_trust=True)
    standby.write_settings({**standby.read_settings(), **standby.listen_settings()})
    standby.start()
    ledger.batch(7)
    lsn = ledger.sql("SELECT pg_current_wal_lsn()::text")
    with psycopg.connect(standby.dsn(), autocommit=True) as conn:
        wait_for(lambda: conn.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (lsn,)).fetchone()[0],
                 timeout=30, what="standby catching up", interval=0.2)
    ledger.cluster.stop()  # the primary is lost
    with psycopg.connect(standby.dsn(), autocommit=True) as conn:
        conn.execute("SELECT pg_promote()")
    primary, ledger.cluster = ledger.cluster, standby
    ledger.batch(8)
    point = ledger.rig.drp("wal", "restore-point", "on-timeline-2", DRP_SOURCE_DSN=standby.dsn())
    assert point.returncode == 0 and "timeline 2" in point.stdout, point.stderr
    ledger.batch(9)
    ledger.switch()

    result = pitr(ledger, RecoveryTarget.parse(name="on-timeline-2"), where / "restored")
    try:
        assert result.base.id == ledger.bases["b"]  # timeline 1, before the switch: history followed
        ids, checksum = restored_ids(result)
        assert ids == ledger.ids_after[8] and checksum == source_checksum(ledger, ids[-1])
        assert result.recovery.timeline == 3
    finally:
        LocalCluster(data_dir=result.recovery.data_dir, port=result.recovery.port).remove()
    assert not primary.is_running()


def test_pitr_along_the_old_timeline_that_went_on_after_the_promote(ledger: Ledger, where: Path) -> None:
    """Runs after the timeline-2 test: its old primary comes back and writes on timeline 1 past the switch
    point (a promote by mistake, or a split brain), with base backup c taken there. By default recovery follows
    the newest timeline (2): c left its history, so b is chosen (before: c was, and PostgreSQL refused it).
    `--timeline 1` recovers timeline 1's own rows from c, to a time only timeline 1 holds."""
    standby = ledger.cluster
    tl2_ids = ledger.ids()
    old = LocalCluster.attach(ledger.rig.root / "pg")
    old.start()
    ledger.cluster = old
    try:
        ledger.batch(10)
        ledger.switch()
        ledger.base_backup("c")
        ledger.batch(11)
        moment = ledger.sql("SELECT clock_timestamp()")
        ledger.batch(12)  # recovery to a time stops at the first commit after it: one must be archived
        ledger.switch()
        tl1_ids = ledger.ids_after[11]
        assert set(tl1_ids) != set(tl2_ids)

        result = pitr(ledger, RecoveryTarget.parse(latest=True), where / "newest")
        try:
            assert (result.base.id, result.followed) == (ledger.bases["b"], 2)
            ids, _ = restored_ids(result)
            assert ids == tl2_ids
        finally:
            LocalCluster(data_dir=result.recovery.data_dir, port=result.recovery.port).remove()

        data_dir = where / "timeline-1"
        run = ledger.rig.drp("restore", "--pitr", "--time", moment.isoformat(), "--timeline", "1",  # type: ignore[attr-defined]
                             "--data-dir", str(data_dir), "--json", timeout=300, DRP_WORK_DIR=str(ledger.rig.root / "work"))
        assert run.returncode == 0, run.stderr
        report = json.loads(run.stdout)
        assert (report["base_backup"], report["followed_timeline"]) == (ledger.bases["c"], 1)
        restored = LocalCluster.attach(data_dir)
        restored.start()
        try:
            with psycopg.connect(restored.dsn()) as conn:
                rows = conn.execute("SELECT id, note FROM ledger ORDER BY id").fetchall()
            assert [r[0] for r in rows] == tl1_ids
            assert hashlib.sha256(repr(rows).encode()).hexdigest() == source_checksum(ledger, tl1_ids[-1])
        finally:
            restored.remove()

        bad = ledger.rig.drp("restore", "--pitr", "--latest", "--timeline", "7", "--data-dir", str(where / "x"),
                             DRP_WORK_DIR=str(ledger.rig.root / "work"))
        assert bad.returncode == 1 and "timeline 7 is not in the WAL archive" in bad.stderr, bad.stderr
        assert "archived: 1, 2, 3" not in bad.stderr and "archived: 1, 2" in bad.stderr
        nothing_left(where / "x")
    finally:
        ledger.cluster = standby
        old.stop()
