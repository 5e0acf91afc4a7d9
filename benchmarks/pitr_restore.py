"""Benchmark restores: drp's PITR to a started cluster against pgBackRest's restore, and WAL replay
with parallel prefetch against serial fetching.

    PYTHONPATH=. .venv/bin/python benchmarks/pitr_restore.py [--scale 70] [--runs 3] [--wal-gb 1] [--cold-bytecode]

1. One cluster (CLUSTER_SETTINGS, fsync on) loaded with ``pgbench -i -s SCALE`` (~1 GB at 70), its WAL
   archived to drp (the client -> `drp wal archiver`, support/wal.WalRig) **and** to pgBackRest
   (``&& pgbackrest archive-push %p``), so both tools can recover.
2. A drp base backup (in-process, into the rig's storage) and a pgBackRest full backup
   (base_backup.Bench: zstd level 3, process-max 2, run as the postgres OS user, its config in the temp dir).
3. One untimed drp restore (the bytecode cache's warm-up, below), then restore to a consistent, started,
   promoted cluster, --runs times each, alternating, measured as a child (wall time, peak RSS):
   - ``drp``: ``drp restore --pitr --latest --new-cluster DIR`` (extract while checking the WAL, recover
     everything archived, promote, a fresh password and scram-only pg_hba reloaded: one server start);
   - ``pgbackrest``: ``pgbackrest restore --archive-mode=off`` (type default: everything archived) into
     DIR, then ``pg_ctl start`` and polling until ``pg_is_in_recovery()`` is false (promoted).
4. ~--wal-gb of WAL written after the base backups (pgbench TPC-B, unthrottled), archived; then the same
   three restores (--replay-runs times) replaying it: drp ``--prefetch 0`` (a `drp wal fetch` process per segment) vs drp
   default (8 ahead, in parallel) vs pgBackRest (archive-get per segment, its default).
Prints JSON with the load average around every measurement (2 shared cores).

See ``_common.BYTECODE_DOC`` (appended below): the warm-up is one untimed ``drp restore --pitr --latest``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from _common import (
    BYTECODE_DOC,
    CLUSTER_SETTINGS,
    Launch,
    Measured,
    add_cold_bytecode_flag,
    machine_info,
    make_base_dir,
    stats,
)
from base_backup import Bench, as_pg

from dr_pipelines.core import context
from dr_pipelines.core.backup.physical import run_base_backup
from dr_pipelines.core.pg.cluster import LocalCluster, free_port, give_to_server
from dr_pipelines_tests.support.pitr_load import pgbench, pgbench_init
from dr_pipelines_tests.support.wal import WalRig, wait_archived

BIN = Path(sys.executable).parent


PHASE_MARKS = {  # first server-log line of each moment (PostgreSQL 15 wording), in order
    "server_started": "starting PostgreSQL",
    "data_synced": "database system was interrupted",  # logged after the start-up fsync of the data directory
    "redo_starts": "redo starts at",
    "redo_done": "redo done at",
    "promoted": "database system is ready to accept connections",
}


def phases(log: str, launched: float, ended: float, first: dict[str, float] | None = None) -> dict[str, float]:
    """Seconds spent in each step, from the restored server's log timestamps (wall clock, ms resolution):
    extract (and checks) until the server starts; then, from "database system was interrupted", PostgreSQL's
    fsync of the whole data directory (it starts from a backup, not a clean shutdown) and the first WAL
    fetches; WAL replay; the end-of-recovery checkpoint and promotion; the rest (drp: password, pg_hba
    reload, the scram login that proves it, the CLI's exit)."""
    stamps: dict[str, float] = {}
    marks = iter(PHASE_MARKS.items())
    name, text = next(marks)
    for line in log.splitlines():
        if text in line:
            stamp = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=UTC).timestamp()
            if stamp < launched:
                continue  # the source's own log, which pgBackRest restores with the data directory
            stamps[name] = stamp
            step = next(marks, None)
            if step is None:
                break
            name, text = step
    points = [("start", launched), *(first or {}).items(), *stamps.items(), ("end", ended)]
    return {f"{a}->{b}": round(tb - ta, 2) for (a, ta), (b, tb) in zip(points, points[1:], strict=False)}


def replayed_mb(log: str, launched: float) -> float | None:
    """MB of WAL replayed: from "redo starts at X" to "redo done at Y" in this run's server log."""
    lsns = {}
    for line in log.splitlines():
        for key in ("redo starts at ", "redo done at "):
            if key in line and datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S.%f").replace(
                    tzinfo=UTC).timestamp() >= launched:
                high, low = line.split(key)[1].split()[0].rstrip(",").split("/")
                lsns.setdefault(key, (int(high, 16) << 32) + int(low, 16))
    return round((lsns["redo done at "] - lsns["redo starts at "]) / 2**20, 1) if len(lsns) == 2 else None


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


class Restores:
    def __init__(self, base: Path, rig: WalRig, bench: Bench) -> None:
        self.base, self.rig, self.bench = base, rig, bench

    def target(self, name: str) -> Path:
        """An empty place for the next restore, on a settled disk: the previous run's 1.1 GB (being written back)
        and its removal are synced first, for either tool (they slowed the next run's file creation ~5x here)."""
        where = self.base / "restores" / name
        shutil.rmtree(where, ignore_errors=True)
        where.parent.mkdir(exist_ok=True)
        os.sync()
        return where

    def drp(self, *extra: str) -> dict[str, Any]:
        dest = self.target("drp")
        env = self.bench.python.env({**os.environ, "DRP_CONFIG": str(self.rig.config),
                               "DRP_WORK_DIR": str(self.base / "work")})
        before = load()
        launched = time.time()
        launch = Launch([str(BIN / "drp"), "restore", "--pitr", "--latest", "--new-cluster", str(dest),
                         "--json", *extra], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert launch.proc.stdout is not None and launch.proc.stderr is not None
        checked: dict[str, float] = {}

        def follow(stream: Any) -> None:  # "restoring …": base chosen; "… checked": extraction and WAL check done
            for line in stream:
                sys.stderr.buffer.write(line)
                if line.startswith(b"restoring "):
                    checked.setdefault("base_chosen", time.time())
                if line.rstrip().endswith(b" checked"):
                    checked.setdefault("extracted_and_checked", time.time())

        reader = threading.Thread(target=follow, args=(launch.proc.stderr,), daemon=True)
        reader.start()
        raw = launch.proc.stdout.read()
        reader.join()
        m = launch.reap()
        ended = time.time()
        assert m.returncode == 0, "drp restore --pitr failed"
        report = json.loads(raw)
        port = int(psycopg.conninfo.conninfo_to_dict(report["dsn"])["port"])
        restored = LocalCluster(data_dir=dest, port=port)
        try:
            rows = count(report["dsn"])
            split = phases(restored.log_tail(100000), launched, ended, checked)
            replayed = replayed_mb(restored.log_tail(100000), launched)
        finally:
            restored.remove()
        return {**m.as_dict(), "recovery_seconds": report["seconds"], "replayed_to": report["replayed_to"],
                "phases": split, "replayed_mb": replayed, "rows": rows, "load_before": before, "load_after": load()}

    def pgbackrest(self) -> dict[str, Any]:
        dest = self.target("pgbackrest")
        dest.mkdir(mode=0o700)
        give_to_server(dest)
        before = load()
        launched, started = time.time(), time.monotonic()
        m = Launch(as_pg([self.bench.pgbackrest, f"--config={self.bench.conf}", "--stanza=bench",
                          f"--pg1-path={dest}", "--archive-mode=off", "restore"])).reap()
        assert m.returncode == 0, "pgbackrest restore failed"
        restored = LocalCluster(data_dir=dest, port=free_port(), tcp_trust=True)
        try:
            restored.write_settings({**restored.read_settings(), **restored.listen_settings()})
            restored.start()
            with psycopg.connect(restored.dsn(), autocommit=True) as conn:
                while conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]:
                    time.sleep(0.1)
            seconds = time.monotonic() - started
            split = phases(restored.log_tail(100000), launched, launched + seconds)
            replayed = replayed_mb(restored.log_tail(100000), launched)
            rows = count(restored.dsn())
        finally:
            restored.remove()
        return {**Measured(seconds, 0, m.maxrss_kb, m.cpu_seconds).as_dict(), "restore_command_seconds":
                round(m.seconds, 3), "phases": split, "replayed_mb": replayed, "rows": rows, "load_before": before, "load_after": load()}


def count(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT count(*) FROM pgbench_accounts").fetchone()[0]


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {"seconds": stats([r["seconds"] for r in runs]), "peak_rss_kb": max(r["maxrss_kb"] for r in runs),
            "runs": runs}


def write_wal(cluster: LocalCluster, gigabytes: float) -> dict[str, Any]:
    """Unthrottled pgbench TPC-B until ~gigabytes of WAL were written; the segment is then switched.
    synchronous_commit=off for the load only: with a flush per commit this 2-core machine writes ~0.5 MB/s."""
    started = time.monotonic()
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        start = conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
        while True:
            run = pgbench(cluster, "-n", "-c", "4", "-j", "2", "-T", "20",
                          env={**os.environ, "PGOPTIONS": "-c synchronous_commit=off"})
            output = run.communicate()[0]
            assert run.returncode == 0, output
            written = int(conn.execute("SELECT pg_current_wal_lsn() - %s", (start,)).fetchone()[0])
            if written >= gigabytes * 2**30:
                break
        last = conn.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone()[0]
    wait_archived(cluster, last, timeout=1800)
    return {"wal_mb": round(written / 2**20), "seconds": round(time.monotonic() - started, 1), "load_after": load()}


def main() -> None:
    parser = argparse.ArgumentParser(description=f"{__doc__}\n{BYTECODE_DOC}",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=int, default=70)
    parser.add_argument("--runs", type=int, default=3, help="alternated drp/pgBackRest pairs (medians)")
    parser.add_argument("--wal-gb", type=float, default=1.0)
    parser.add_argument("--replay-runs", type=int, default=1, help="each replay of --wal-gb takes minutes here")
    parser.add_argument("--base-dir", default=None)
    parser.add_argument("--skip-replay", action="store_true", help="only the restores right after the backups")
    add_cold_bytecode_flag(parser)
    args = parser.parse_args()
    base = make_base_dir("bench-restore-", args.base_dir)
    rig = WalRig.make(base / "rig")
    settings = {**rig.cluster_settings("60s"), **CLUSTER_SETTINGS}
    settings.pop("fsync")  # durability at its default, as in base_backup.py
    # No background WAL between the two tools' backups (autovacuum setting hint bits on 7 M rows wrote ~700 MB
    # of page images in a first run): both restores then replay the same few segments to the end of the archive.
    settings["autovacuum"] = "off"
    cluster = LocalCluster.create(base / "pg", settings=settings, tcp_trust=True)
    failed = True
    try:
        with rig.archiver(), psycopg.connect(cluster.dsn(), autocommit=True) as conn:
            pgbench_init(cluster, args.scale)
            bench = Bench(base, cluster, "", archive_check=True, bytecode_cache=not args.cold_bytecode)
            both = (f"'{rig.archive_command()} && {bench.pgbackrest} --config={bench.conf} --stanza=bench "
                    f"archive-push %p'")
            cluster.write_settings({**cluster.read_settings(), "archive_command": both})
            conn.execute("SELECT pg_reload_conf()")
            conn.execute("VACUUM (FREEZE, ANALYZE)")
            conn.execute("CHECKPOINT")
            size = conn.execute("SELECT sum(pg_database_size(oid))::bigint FROM pg_database").fetchone()[0]
            s = rig.settings()
            run_base_backup(cluster.dsn(), context.storage(s), s.encryption_recipients)
            bench.pgbackrest_full()
            wait_archived(cluster, conn.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone()[0])
            restores = Restores(base, rig, bench)
            if not args.cold_bytecode:
                restores.drp()  # the warm-up: fills the bytecode cache, as an installed drp's first run does
            results: dict[str, list[dict[str, Any]]] = {"drp": [], "pgbackrest": []}
            for _ in range(args.runs):
                results["drp"].append(restores.drp())
                results["pgbackrest"].append(restores.pgbackrest())
                print(json.dumps({k: v[-1] for k, v in results.items()}), file=sys.stderr)
            restore = {k: summarize(v) for k, v in results.items()}
            if args.skip_replay:
                ratio = restore["drp"]["seconds"]["median"] / restore["pgbackrest"]["seconds"]["median"]
                print(json.dumps({"bytecode_cache": not args.cold_bytecode, "runs": args.runs, "restore": restore,
                                  "restore drp/pgbackrest": round(ratio, 2)}, indent=2))
                failed = False
                return
            wal = write_wal(cluster, args.wal_gb)
            print(json.dumps(wal), file=sys.stderr)
            replay: dict[str, list[dict[str, Any]]] = {"drp --prefetch 0": [], "drp (prefetch 8)": [],
                                                       "pgbackrest": []}
            for _ in range(args.replay_runs):
                replay["drp --prefetch 0"].append(restores.drp("--prefetch", "0"))
                replay["drp (prefetch 8)"].append(restores.drp())
                replay["pgbackrest"].append(restores.pgbackrest())
                print(json.dumps({k: v[-1] for k, v in replay.items()}), file=sys.stderr)
            replayed = {k: summarize(v) for k, v in replay.items()}
        median = {**{f"restore {k}": v["seconds"]["median"] for k, v in restore.items()},
                  **{f"replay {k}": v["seconds"]["median"] for k, v in replayed.items()}}
        ratios = {"restore drp/pgbackrest": round(median["restore drp"] / median["restore pgbackrest"], 2),
                  "replay prefetch/serial": round(median["replay drp (prefetch 8)"] / median["replay drp --prefetch 0"], 2),
                  "replay drp/pgbackrest": round(median["replay drp (prefetch 8)"] / median["replay pgbackrest"], 2)}
        print(json.dumps({"scale": args.scale, "bytecode_cache": not args.cold_bytecode, "cluster_bytes": size,
                          "runs": args.runs,
                          "machine": machine_info(cluster.dsn()), "restore": restore, "wal_written": wal,
                          "replay": replayed, "ratios": ratios}, indent=2))
        failed = False
    finally:
        if failed and args.base_dir:  # keep the server log, the archiver's log and pgBackRest's logs to read
            cluster.stop()
            print(f"failed: kept {base}", file=sys.stderr)
        else:
            cluster.remove()
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
