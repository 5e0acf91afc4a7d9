"""Benchmark base backups: drp's against the pg_basebackup | zstd pipe, the low-level API and pgBackRest.

    PYTHONPATH=. .venv/bin/python benchmarks/base_backup.py [--scale 70] [--runs 2] [--base-dir DIR] [--cold-bytecode]

1. One cluster (CLUSTER_SETTINGS, wal_level=replica, archive_mode=on with archive_command 'true':
   WAL archiving has its own benchmark, wal_push.py) loaded with ``pgbench -i -s SCALE``
   (~15 MB a scale unit: 70 gives ~1 GB of incompressible-ish pgbench rows and indexes).
2. Each variant runs --runs times, alternating, measured as a child process (wall time, peak RSS):
   - ``drp-lowlevel``: ``drp backup run --physical --method lowlevel --no-prune`` into a fresh local storage
     (pg_backup_start, the data directory read by drp -> zstd -3 with 2 threads -> age -> SHA-256 -> storage,
     pg_backup_stop, backup_label and backup_manifest, our manifest last);
   - ``drp-pg_basebackup``: the same with ``--method pg_basebackup`` (pg_basebackup -Ft -X none as the source);
   - ``pipe``: ``pg_basebackup -D - -Ft -X none --checkpoint=fast | zstd -T2 -3 > file`` (the floor);
   - ``lowlevel``: the low-level API, ``pg_backup_start(fast)`` in a session, ``tar -c`` of the data
     directory (pg_wal and postmaster.* excluded) ``| zstd -T2 -3 > file``, ``pg_backup_stop()``;
     the time includes both calls;
   - ``pgbackrest`` (when installed): ``pgbackrest backup --type=full`` as the postgres OS user with
     compress-type=zst, compress-level=3, process-max=2, start-fast, archive-check=n, a temp repo
     (``--skip-pgbackrest`` leaves it out);
   - ``drp-lowlevel-in-process`` (with ``--in-process``): ``run_base_backup`` (lowlevel) called in this
     process, so the interpreter start-up and the CLI are left out; its peak RSS is not measured (it is ours).
Prints JSON (medians, min, bytes written, peak RSS) and the ratios docs/benchmarks.md quotes.

See ``_common.BYTECODE_DOC`` (appended below): the warm-up is one untimed ``drp`` lowlevel backup.
``start_s`` in the results is the wall time outside the manifest's start to finish: interpreter, imports,
settings, exit.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psycopg
from _common import (
    BYTECODE_DOC,
    CLUSTER_SETTINGS,
    DrpPython,
    Launch,
    add_cold_bytecode_flag,
    machine_info,
    make_base_dir,
    stats,
)

from dr_pipelines.core.crypto import generate_identity_file
from dr_pipelines.core.pg.cluster import LocalCluster, server_os_user

BIN = Path(sys.executable).parent


def as_pg(cmd: list[str]) -> list[str]:
    user = server_os_user()
    return ["runuser", "-u", user, "--", *cmd] if user else cmd


def tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


class Bench:
    def __init__(self, base: Path, cluster: LocalCluster, recipient: str, *, pgbackrest: bool = True,
                 archive_check: bool = False, bytecode_cache: bool = True) -> None:
        """``archive_check``: pgBackRest waits for its backup's WAL in its repository (pitr_restore.py
        archives to it, so its backups can be restored); here nothing archives to it.
        ``bytecode_cache``: run ``drp`` with a bytecode cache under ``base`` (_common.DrpPython)."""
        self.base, self.cluster, self.recipient = base, cluster, recipient
        self.archive_check = archive_check
        self.python = DrpPython(base, cached=bytecode_cache)
        self.in_process: dict[str, list[float]] = {"lowlevel": [], "pg_basebackup": []}
        self.bin = cluster.binaries.bin_dir
        self.pgbackrest = shutil.which("pgbackrest") if pgbackrest else None
        if self.pgbackrest:
            self._pgbackrest_setup()

    def fresh(self, name: str) -> Path:
        path = self.base / "out" / name
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        return path

    def drp(self, method: str) -> tuple[float, int, int]:
        storage = self.fresh(f"drp-{method}")
        env = self.python.env({**os.environ, "DRP_SOURCE_DSN": self.cluster.dsn(), "DRP_STORAGE_URL": str(storage),
                               "DRP_ENCRYPTION_RECIPIENTS": self.recipient})
        launch = Launch([str(BIN / "drp"), "backup", "run", "--physical", "--method", method, "--no-prune", "--json"],
                        env=env, stdout=subprocess.PIPE)
        assert launch.proc.stdout is not None
        summary = json.loads(launch.proc.stdout.read())
        m = launch.reap()
        assert m.returncode == 0 and summary["method"] == method, "drp backup run --physical failed"
        self.in_process[method].append(summary["duration_s"])  # the manifest's start to finish: no interpreter start-up
        return m.seconds, m.maxrss_kb, tree_bytes(storage)

    def warm_up(self) -> None:
        """One untimed `drp` backup: fills the bytecode cache, as the first run of an installed drp does."""
        self.drp("lowlevel")
        self.in_process["lowlevel"].clear()

    def drp_in_process(self) -> tuple[float, int, int]:
        from dr_pipelines.core.backup.physical import BaseBackupOptions, run_base_backup
        from dr_pipelines.core.storage.local import LocalStorage

        storage = self.fresh("drp-in-process")
        started = time.monotonic()
        run_base_backup(self.cluster.dsn(), LocalStorage(storage), [self.recipient],
                        options=BaseBackupOptions(method="lowlevel"))
        return time.monotonic() - started, 0, tree_bytes(storage)

    def pipe(self) -> tuple[float, int, int]:
        out = self.fresh("pipe") / "base.tar.zst"
        cmd = (f"{self.bin}/pg_basebackup -d '{self.cluster.dsn()}' -D - -Ft -X none --checkpoint=fast "
               f"| zstd -q -T2 -3 > {out}")
        m = Launch(["bash", "-o", "pipefail", "-c", cmd]).reap()
        assert m.returncode == 0
        return m.seconds, m.maxrss_kb, out.stat().st_size

    def lowlevel(self) -> tuple[float, int, int]:
        out = self.fresh("lowlevel") / "base.tar.zst"
        started = time.monotonic()
        with psycopg.connect(self.cluster.dsn(), autocommit=True) as conn:
            conn.execute("SELECT pg_backup_start('bench', true)")
            cmd = (f"tar -cf - --exclude=./pg_wal/* --exclude=./postmaster.pid --exclude=./postmaster.opts "
                   f"--exclude=./.s.PGSQL.* -C {self.cluster.data_dir} . | zstd -q -T2 -3 > {out}")
            m = Launch(["bash", "-o", "pipefail", "-c", cmd]).reap()
            conn.execute("SELECT * FROM pg_backup_stop(false)").fetchone()  # returns backup_label to store
        assert m.returncode in (0, 1)  # GNU tar exits 1 when a file changed while read (expected with a live server)
        return time.monotonic() - started, m.maxrss_kb, out.stat().st_size

    def _pgbackrest_setup(self) -> None:
        self.repo = self.base / "pgbackrest-repo"
        conf = self.base / "pgbackrest.conf"
        conf.write_text(
            "[global]\n"
            f"repo1-path={self.repo}\nrepo1-retention-full=1\ncompress-type=zst\ncompress-level=3\nprocess-max=2\n"
            f"start-fast=y\narchive-check={'y' if self.archive_check else 'n'}\nlog-level-console=warn\nlog-path={self.base}/pgbackrest-log\n"
            f"lock-path={self.base}/pgbackrest-lock\n"
            "[bench]\n"
            f"pg1-path={self.cluster.data_dir}\npg1-port={self.cluster.port}\n"
            f"pg1-socket-path={self.cluster.socket_dir}\npg1-user=postgres\n")
        for d in (self.repo, self.base / "pgbackrest-log", self.base / "pgbackrest-lock"):
            d.mkdir()
            if server_os_user():
                shutil.chown(d, "postgres", "postgres")
        self.conf = conf
        os.chmod(conf, 0o644)
        subprocess.run(as_pg([self.pgbackrest, f"--config={conf}", "--stanza=bench", "stanza-create"]), check=True)

    def pgbackrest_full(self) -> tuple[float, int, int]:
        m = Launch(as_pg([self.pgbackrest, f"--config={self.conf}", "--stanza=bench", "--type=full", "backup"])).reap()
        assert m.returncode == 0, "pgbackrest backup failed"
        backups = sorted((self.repo / "backup" / "bench").glob("*F"))
        return m.seconds, m.maxrss_kb, tree_bytes(backups[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=f"{__doc__}\n{BYTECODE_DOC}",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=int, default=70)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--base-dir", default=None)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--skip-pgbackrest", action="store_true")
    parser.add_argument("--in-process", action="store_true", help="also time run_base_backup in this process")
    add_cold_bytecode_flag(parser)
    args = parser.parse_args()
    base = make_base_dir("bench-base-", args.base_dir)
    recipient = generate_identity_file(base / "key.txt")
    settings = {**CLUSTER_SETTINGS, "wal_level": "replica", "archive_mode": "on", "archive_command": "'true'"}
    cluster = LocalCluster.create(base / "pg", settings=settings, tcp_trust=True)
    try:
        t = time.monotonic()
        subprocess.run([str(cluster.binaries.bin_dir / "pgbench"), "-i", "-q", "-s", str(args.scale),
                        "-h", "127.0.0.1", "-p", str(cluster.port), "-U", "postgres", "postgres"],
                       check=True, capture_output=True)
        with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
            conn.execute("CHECKPOINT")
            size = conn.execute("SELECT sum(pg_database_size(oid))::bigint FROM pg_database").fetchone()[0]
        bench = Bench(base, cluster, recipient, pgbackrest=not args.skip_pgbackrest,
                      bytecode_cache=not args.cold_bytecode)
        if not args.cold_bytecode:
            bench.warm_up()
        variants = {"drp-lowlevel": lambda: bench.drp("lowlevel"), "drp-pg_basebackup": lambda: bench.drp("pg_basebackup"),
                    "pipe": bench.pipe, "lowlevel": bench.lowlevel}
        if args.in_process:
            variants["drp-lowlevel-in-process"] = bench.drp_in_process
        if bench.pgbackrest:
            variants["pgbackrest"] = bench.pgbackrest_full
        results: dict[str, list[tuple[float, int, int]]] = {k: [] for k in variants}
        load_samples: list[float] = []
        for _ in range(args.runs):
            for name, run in variants.items():
                results[name].append(run())
                load_samples.append(round(os.getloadavg()[0], 1))
                print(f"{name}: {results[name][-1]} (load {load_samples[-1]})", file=sys.stderr)
        summary = {name: {"seconds": stats([r[0] for r in rs]), "peak_rss_kb": max(r[1] for r in rs),
                          "stored_bytes": rs[-1][2]} for name, rs in results.items()}
        ratios = {}
        for method in ("lowlevel", "pg_basebackup"):
            drp = summary[f"drp-{method}"]
            drp["in_process_seconds"] = stats(bench.in_process[method])
            drp["start_s"] = stats([r[0] - d for r, d in zip(results[f"drp-{method}"], bench.in_process[method],
                                                             strict=True)])
            ratios |= {f"drp-{method}/{name}": round(drp["seconds"]["median"] / s["seconds"]["median"], 2)
                       for name, s in summary.items() if not name.startswith("drp")}
            ratios[f"drp-{method} in-process/pipe"] = round(drp["in_process_seconds"]["median"]
                                                            / summary["pipe"]["seconds"]["median"], 2)
        summary.get("drp-lowlevel-in-process", {}).pop("peak_rss_kb", None)
        print(json.dumps({"scale": args.scale, "bytecode_cache": not args.cold_bytecode, "load_average": os.getloadavg(), "load_1min_after_each": load_samples,
                          "cluster_bytes": size, "load_seconds": round(time.monotonic() - t, 1), "runs": args.runs, "machine": machine_info(cluster.dsn()), "results": summary, "ratios": ratios},
                         indent=2))
    finally:
        cluster.remove()
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
