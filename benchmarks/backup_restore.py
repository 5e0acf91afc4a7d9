"""Benchmark drp backup and restore against pg_dump / pg_restore on the same data, in the same run.

    .venv/bin/python benchmarks/backup_restore.py                  # throwaway cluster, ~1 GB demo data
    .venv/bin/python benchmarks/backup_restore.py --scale 5        # small, quick
    .venv/bin/python benchmarks/backup_restore.py --dsn 'host=127.0.0.1 port=5432 user=postgres dbname=clinic'

Backup variants (each writes into --base-dir, default /var/tmp, one disk for all):

- ``pg_dump``: ``pg_dump -Fc -f file`` (pg_dump's own gzip compression; it fsyncs the file)
- ``floor``: ``pg_dump -Fc -Z 0 | zstd -T2 -3 > file``, the pipeline ours is built on (no
  encryption, no checksums, no fsync; the fsync of its output is timed apart, ``floor_fsync``)
- ``drp``: ``run_logical_backup`` with compression, encryption and table checksums
- ``drp_nochecksums``: the same with ``BackupOptions(checksums=False)``, to show their cost

Restore variants, each into a fresh empty database (TEMPLATE template0) on the source's
cluster, dropped again after it is checked (same number of relations as the source):

- ``pg_restore``: ``pg_restore -j 2`` of the ``pg_dump`` file
- ``drp``: ``restore_backup`` of the ``drp`` backup (fetch + verify + decrypt + decompress to a
  work file, then ``pg_restore -j 2``); the split is reported as fetch/restore seconds
- ``floor``: ``zstd -d`` of the floor file to a work file, then ``pg_restore -j 2`` (reference)

Fairness: one unrecorded warm-up pass first (OS caches cannot be dropped), then --repeat
passes with the order of the variants rotated; before each timed operation a CHECKPOINT and
a sync flush what the previous one left. drp operations run in a child Python process
each (this script with --child), so their peak RSS is per operation; every command runs
under GNU time, which reports its own peak RSS (the tools' are reported for reference).
--rss-scales seeds smaller demo databases and runs one drp backup and restore on each, to
show that peak memory does not grow with the database.

The baselines are fixed; --drp-jobs, --drp-zstd-threads and --drp-level change drp's options
only, and --backup-only skips the restores, for profiling.

Prints one JSON document on stdout and a short summary on stderr.
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
from typing import Any

from _common import CLUSTER_SETTINGS, Launch, machine_info, make_base_dir, own_peak_rss_kb, run_measured, stats
from psycopg import sql

from dr_pipelines.core.backup.logical import BackupOptions, libpq_env
from dr_pipelines.core.pg.cluster import LocalCluster
from dr_pipelines.core.pg.connect import connect, redact_dsn, with_dbname
from dr_pipelines.core.pg.profile import server_identity
from dr_pipelines.core.pg.tools import client_tool, tool_version
from dr_pipelines.core.restore.logical import RestoreOptions
from dr_pipelines.demo import generate as gen

TARGETS = {"backup_vs_floor": 1.25, "restore_vs_pg_restore": 1.15, "size_vs_floor": 1.0}
BACKUP_VARIANTS = ("pg_dump", "floor", "drp", "drp_nochecksums")
RESTORE_VARIANTS = ("pg_restore", "drp", "floor")
FLOOR_ZSTD = ["-T2", "-3"]  # the pipeline floor: pg_dump -Fc -Z 0 | zstd -T2 -3 > file
BASELINE_JOBS = 2  # pg_restore -j 2
USER_RELATIONS = (
    "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
    " WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%'"
    " AND n.nspname NOT LIKE 'pg_temp%'"
)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        return _child()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", help="benchmark this existing database instead of seeding a throwaway cluster "
                        "(restore targets and --rss-scales databases are created, then dropped, on its server)")
    parser.add_argument("--clinics", type=int, default=gen.BENCHMARK_CLINICS)
    parser.add_argument("--scale", type=float, default=gen.BENCHMARK_SCALE)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1, help="unrecorded passes before the measured ones")
    parser.add_argument("--rss-scales", type=float, nargs="*", default=None,
                        help="also seed these scales and compare drp peak RSS (default: scale/5; none to skip)")
    # The baselines are fixed (zstd -T2 -3, pg_restore -j 2); these tune drp only, to profile it.
    parser.add_argument("--drp-jobs", type=int, default=RestoreOptions().jobs, help="RestoreOptions(jobs=...)")
    parser.add_argument("--drp-zstd-threads", type=int, default=BackupOptions().zstd_threads,
                        help="BackupOptions(zstd_threads=...)")
    parser.add_argument("--drp-level", type=int, default=BackupOptions().compression_level,
                        help="BackupOptions(compression_level=...)")
    parser.add_argument("--backup-only", action="store_true", help="time the backup variants only")
    parser.add_argument("--base-dir", type=Path, default=Path("/var/tmp"),
                        help="where the cluster, dumps, storage and work files go (one disk)")
    parser.add_argument("--skip-floor-restore", action="store_true", help="do not time the floor restore reference")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    rss_scales = [round(args.scale / 5, 2)] if args.rss_scales is None else args.rss_scales

    base = make_base_dir("drp-bench-br-", args.base_dir)
    cluster: LocalCluster | None = None
    bench: Bench | None = None
    try:
        seeded: dict[str, Any] = {}
        if args.dsn:
            dsn = args.dsn
            admin = with_dbname(dsn, "postgres")
        else:
            cluster = LocalCluster.create(base / "pg", settings=CLUSTER_SETTINGS)
            admin = cluster.dsn()
            dsn = cluster.create_database("clinic")
            seeded = _seed(dsn, args.clinics, args.scale, args.seed)
        bench = Bench(args, base, admin)
        report = bench.run(dsn, rss_scales)
        report["params"] = {
            "dsn": redact_dsn(args.dsn) if args.dsn else None, "clinics": None if args.dsn else args.clinics,
            "scale": None if args.dsn else args.scale, "seed": args.seed, "repeat": args.repeat,
            "warmup": args.warmup, "drp_jobs": args.drp_jobs, "drp_zstd_threads": args.drp_zstd_threads,
            "drp_level": args.drp_level, "backup_only": args.backup_only, "floor": FLOOR_ZSTD,
            "pg_restore_jobs": BASELINE_JOBS,
            "rss_scales": rss_scales, "base_dir": str(args.base_dir),
        }
        if seeded:
            report["seeding"] = seeded
        report["machine"] = {**machine_info(dsn), "loadavg_end": os.getloadavg(),
                             "cluster_settings": None if args.dsn else CLUSTER_SETTINGS}
        report["orchestrator_peak_rss_kb"] = own_peak_rss_kb()
        json.dump(report, sys.stdout, indent=2)
        print()
        _summary(report)
    finally:
        if bench:
            bench.drop_leftovers()
        if cluster:
            cluster.remove()
        shutil.rmtree(base, ignore_errors=True)
    return 0


def _seed(dsn: str, clinics: int, scale: float, seed: int) -> dict[str, Any]:
    started = time.monotonic()
    counts = gen.seed_demo(dsn, clinics=clinics, scale=scale, seed=seed)
    return {"seconds": round(time.monotonic() - started, 2), "rows": sum(counts.values())}


class Bench:
    def __init__(self, args: argparse.Namespace, base: Path, admin_dsn: str) -> None:
        self.args = args
        self.base = base
        self.admin = admin_dsn
        self.created: set[str] = set()
        self.files = base / "files"
        self.files.mkdir()
        from pyrage import x25519

        self.identity = x25519.Identity.generate()
        self.recipient = str(self.identity.to_public())
        with connect(admin_dsn) as conn:
            self.major = server_identity(conn).major
        self.pg_dump = client_tool("pg_dump", self.major)
        self.pg_restore = client_tool("pg_restore", self.major)
        self.zstd = shutil.which("zstd")
        if not self.zstd:
            raise SystemExit("the zstd CLI is needed for the floor baseline (apt-get install zstd)")
        self.seq = 0

    # -- the run ---------------------------------------------------------------------------

    def run(self, dsn: str, rss_scales: list[float]) -> dict[str, Any]:
        args = self.args
        source_relations = self._relations(dsn)
        db_size = self._db_size(dsn)
        passes = []
        for i in range(-args.warmup, args.repeat):
            order_b = _rotate(BACKUP_VARIANTS, i)
            order_r = () if args.backup_only else _rotate(
                tuple(v for v in RESTORE_VARIANTS if v != "floor" or not args.skip_floor_restore), i)
            label = "warm-up" if i < 0 else f"repeat {i + 1}/{args.repeat}"
            print(f"[bench] {label}: backups {', '.join(order_b)}; restores {', '.join(order_r)}", file=sys.stderr)
            result = self._pass(dsn, order_b, order_r, source_relations)
            if i >= 0:
                passes.append(result)
        report: dict[str, Any] = {
            "database": {"size_bytes": db_size, "size_mb": round(db_size / 2**20, 1), "relations": source_relations},
            "tools": {"pg_dump": tool_version(self.pg_dump)[1], "pg_restore": tool_version(self.pg_restore)[1],
                      "zstd": subprocess.run([self.zstd, "-V"], capture_output=True, text=True).stdout.strip()},
            "passes": passes,
        }
        report.update(_summarise(passes))
        report["rss_by_size"] = self._rss_by_size(dsn, db_size, passes, rss_scales)
        return report

    def _pass(self, dsn: str, order_b: tuple[str, ...], order_r: tuple[str, ...], relations: int) -> dict[str, Any]:
        backups: dict[str, dict[str, Any]] = {}
        for variant in order_b:
            self._quiesce()
            backups[variant] = getattr(self, f"_backup_{variant}")(dsn)
            _log(f"backup {variant}", backups[variant])
        restores: dict[str, dict[str, Any]] = {}
        for variant in order_r:
            target = self._fresh_db(variant)
            self._quiesce()
            restores[variant] = getattr(self, f"_restore_{variant}")(backups, target)
            found = self._relations(with_dbname(self.admin, target))
            self._drop_db(target)
            if found != relations:
                raise SystemExit(f"restore {variant} gave {found} relations, the source has {relations}")
            _log(f"restore {variant}", restores[variant])
        for b in backups.values():  # keep the disk use of a pass bounded
            for key in ("file", "storage"):
                if key in b:
                    p = Path(b.pop(key))
                    shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
        return {"backup_order": list(order_b), "restore_order": list(order_r), "backup": backups, "restore": restores}

    # -- backups ---------------------------------------------------------------------------

    def _backup_pg_dump(self, dsn: str) -> dict[str, Any]:
        out = self._path("plain.dump")
        conninfo, env = libpq_env(dsn)
        m, _ = run_measured([self.pg_dump, "-Fc", "-f", str(out), f"--dbname={conninfo}"], env=env)
        _check(m.returncode, "pg_dump -Fc")
        return {**m.as_dict(), "bytes": out.stat().st_size, "file": str(out)}

    def _backup_floor(self, dsn: str) -> dict[str, Any]:
        out = self._path("floor.dump.zst")
        conninfo, env = libpq_env(dsn)
        with open(out, "wb") as f:
            started = time.monotonic()
            dump = Launch([self.pg_dump, "-Fc", "-Z", "0", f"--dbname={conninfo}"], stdout=subprocess.PIPE, env=env)
            assert dump.proc.stdout is not None
            zstd = Launch([self.zstd, "-q", *FLOOR_ZSTD], stdin=dump.proc.stdout, stdout=f)
            dump.proc.stdout.close()
            m_dump = dump.reap()
            m_zstd = zstd.reap()
            seconds = time.monotonic() - started
            _check(m_dump.returncode, "pg_dump -Fc -Z 0")
            _check(m_zstd.returncode, "zstd")
            t = time.monotonic()
            os.fsync(f.fileno())
            fsync = time.monotonic() - t
        return {"seconds": round(seconds, 3), "fsync_seconds": round(fsync, 3), "bytes": out.stat().st_size,
                "pg_dump": m_dump.as_dict(), "zstd": m_zstd.as_dict(),
                "maxrss_kb": max(m_dump.maxrss_kb, m_zstd.maxrss_kb),
                "cpu_seconds": round(m_dump.cpu_seconds + m_zstd.cpu_seconds, 3), "file": str(out)}

    def _backup_drp(self, dsn: str, checksums: bool = True) -> dict[str, Any]:
        storage = self._path("storage")
        storage.mkdir()
        m, child = self._child({"op": "backup", "dsn": dsn, "storage": str(storage), "recipient": self.recipient,
                                "checksums": checksums, "level": self.args.drp_level,
                                "zstd_threads": self.args.drp_zstd_threads})
        on_disk = sum(p.stat().st_size for p in storage.rglob("*") if p.is_file())
        return {**child, "process_seconds": round(m.seconds, 3), "maxrss_kb": m.maxrss_kb,
                "cpu_seconds": round(m.cpu_seconds, 3), "bytes": on_disk, "storage": str(storage)}

    def _backup_drp_nochecksums(self, dsn: str) -> dict[str, Any]:
        return self._backup_drp(dsn, checksums=False)

    # -- restores --------------------------------------------------------------------------

    def _restore_pg_restore(self, backups: dict[str, dict[str, Any]], target: str) -> dict[str, Any]:
        m = self._pg_restore_into(Path(backups["pg_dump"]["file"]), target)
        return m.as_dict()

    def _restore_floor(self, backups: dict[str, dict[str, Any]], target: str) -> dict[str, Any]:
        plain = self._path("floor.dump")
        dec, _ = run_measured([self.zstd, "-q", "-d", "-f", backups["floor"]["file"], "-o", str(plain)])
        _check(dec.returncode, "zstd -d")
        try:
            res = self._pg_restore_into(plain, target)
        finally:
            plain.unlink(missing_ok=True)
        return {"seconds": round(dec.seconds + res.seconds, 3), "decompress_seconds": round(dec.seconds, 3),
                "restore_seconds": round(res.seconds, 3), "maxrss_kb": max(dec.maxrss_kb, res.maxrss_kb),
                "cpu_seconds": round(dec.cpu_seconds + res.cpu_seconds, 3)}

    def _restore_drp(self, backups: dict[str, dict[str, Any]], target: str) -> dict[str, Any]:
        work = self._path("work")
        m, child = self._child({"op": "restore", "storage": backups["drp"]["storage"], "backup_id": backups["drp"]["id"],
                                "identity": str(self.identity), "target_dsn": with_dbname(self.admin, target),
                                "work_dir": str(work), "jobs": self.args.drp_jobs})
        shutil.rmtree(work, ignore_errors=True)
        return {**child, "process_seconds": round(m.seconds, 3), "maxrss_kb": m.maxrss_kb,
                "cpu_seconds": round(m.cpu_seconds, 3)}

    def _pg_restore_into(self, dump: Path, target: str):  # type: ignore[no-untyped-def]
        conninfo, env = libpq_env(with_dbname(self.admin, target))
        m, _ = run_measured([self.pg_restore, f"--jobs={BASELINE_JOBS}", f"--dbname={conninfo}", str(dump)], env=env)
        _check(m.returncode, f"pg_restore of {dump.name}")
        return m

    # -- memory at several sizes -----------------------------------------------------------

    def _rss_by_size(self, dsn: str, db_size: int, passes: list[dict[str, Any]],
                     scales: list[float]) -> list[dict[str, Any]]:
        def peak(kind: str, key: str) -> int | None:
            found = [p[kind]["drp"][key] for p in passes if "drp" in p[kind]]
            return max(found) if found else None

        rows = [{
            "database": "benchmark", "size_bytes": db_size,
            "backup_maxrss_kb": peak("backup", "maxrss_kb"), "backup_python_maxrss_kb": peak("backup", "python_maxrss_kb"),
            "restore_maxrss_kb": peak("restore", "maxrss_kb"),
            "restore_python_maxrss_kb": peak("restore", "python_maxrss_kb"),
        }]
        for scale in scales:
            name = self._fresh_db(f"rss_{scale}".replace(".", "_"))
            small = with_dbname(self.admin, name)
            print(f"[bench] memory: seeding scale {scale} into {name}", file=sys.stderr)
            seeded = _seed(small, self.args.clinics, scale, self.args.seed)
            backup = self._backup_drp(small)
            restore: dict[str, Any] = {}
            if not self.args.backup_only:
                target = self._fresh_db("rss_restore")
                restore = self._restore_drp({"drp": backup}, target)
                self._drop_db(target)
            shutil.rmtree(backup["storage"], ignore_errors=True)
            rows.append({
                "database": f"demo scale {scale}", "size_bytes": self._db_size(small), "seeding": seeded,
                "backup_maxrss_kb": backup["maxrss_kb"], "backup_python_maxrss_kb": backup["python_maxrss_kb"],
                "restore_maxrss_kb": restore.get("maxrss_kb"),
                "restore_python_maxrss_kb": restore.get("python_maxrss_kb"),
                "backup_seconds": backup["seconds"], "restore_seconds": restore.get("seconds"),
            })
            self._drop_db(name)
        return rows

    # -- plumbing --------------------------------------------------------------------------

    def _child(self, config: dict[str, Any]):  # type: ignore[no-untyped-def]
        m, out = run_measured([sys.executable, str(Path(__file__).resolve()), "--child"],
                              input_bytes=json.dumps(config).encode(), capture=True)
        _check(m.returncode, f"drp {config['op']} (child)")
        return m, json.loads(out)

    def _path(self, name: str) -> Path:
        self.seq += 1
        return self.files / f"{self.seq:03d}-{name}"

    def _quiesce(self) -> None:
        """Flush what the previous operation left (dirty buffers, page cache writeback) before timing the next."""
        try:
            with connect(self.admin, autocommit=True) as conn:
                conn.execute("CHECKPOINT")
        except Exception as exc:  # noqa: BLE001 - not allowed on a managed server: carry on
            print(f"[bench] CHECKPOINT failed ({exc}); continuing", file=sys.stderr)
        os.sync()

    def _fresh_db(self, label: str) -> str:
        name = f"drp_bench_{os.getpid()}_{label}"
        with connect(self.admin, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name)))
        self.created.add(name)
        return name

    def _drop_db(self, name: str) -> None:
        with connect(self.admin, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        self.created.discard(name)

    def drop_leftovers(self) -> None:
        for name in list(self.created):
            try:
                self._drop_db(name)
            except Exception as exc:  # noqa: BLE001 - best effort on the way out
                print(f"[bench] could not drop {name}: {exc}", file=sys.stderr)

    @staticmethod
    def _relations(dsn: str) -> int:
        with connect(dsn) as conn:
            return conn.execute(USER_RELATIONS).fetchone()[0]

    @staticmethod
    def _db_size(dsn: str) -> int:
        with connect(dsn) as conn:
            return conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]


# -- summary -------------------------------------------------------------------------------


def _summarise(passes: list[dict[str, Any]]) -> dict[str, Any]:
    def series(kind: str, variant: str, key: str = "seconds") -> list[float]:
        return [p[kind][variant][key] for p in passes if variant in p[kind]]

    backup = {v: stats(series("backup", v)) for v in BACKUP_VARIANTS}
    backup["floor_with_fsync"] = stats([a + b for a, b in zip(series("backup", "floor"),
                                                              series("backup", "floor", "fsync_seconds"), strict=True)])
    for v in ("drp", "drp_nochecksums"):
        backup[f"{v}_dump_phase"] = stats(series("backup", v, "dump_seconds"))
        backup[f"{v}_after_dump_phase"] = stats(series("backup", v, "after_dump_seconds"))
    backup["drp_checksum_cost"] = stats([a - b for a, b in zip(series("backup", "drp"),
                                                               series("backup", "drp_nochecksums"), strict=True)])
    restore = {v: stats(series("restore", v)) for v in RESTORE_VARIANTS if series("restore", v)}
    if restore:
        restore["drp_fetch"] = stats(series("restore", "drp", "fetch_seconds"))
        restore["drp_pg_restore"] = stats(series("restore", "drp", "restore_seconds"))
    sizes = {v: passes[-1]["backup"][v]["bytes"] for v in BACKUP_VARIANTS}
    sizes["drp_database_object"] = passes[-1]["backup"]["drp"]["objects"]["database"]["bytes"]
    sizes["plain_dump_uncompressed"] = passes[-1]["backup"]["drp"]["objects"]["database"]["plain_bytes"]

    def ratio(a: dict[str, Any], b: dict[str, Any]) -> dict[str, float]:
        return {"median": round(a["median"] / b["median"], 3), "min": round(a["min"] / b["min"], 3)}

    def paired(kind: str, a: str, b: str) -> float:
        values = sorted(x / y for x, y in zip(series(kind, a), series(kind, b), strict=True))
        return round(values[len(values) // 2], 3)

    ratios = {
        "backup_vs_floor": {**ratio(backup["drp"], backup["floor"]), "paired_median": paired("backup", "drp", "floor")},
        "backup_vs_floor_with_fsync": ratio(backup["drp"], backup["floor_with_fsync"]),
        "backup_nochecksums_vs_floor": ratio(backup["drp_nochecksums"], backup["floor"]),
        "backup_vs_pg_dump": ratio(backup["drp"], backup["pg_dump"]),
        "floor_vs_pg_dump": ratio(backup["floor"], backup["pg_dump"]),
        "size_vs_floor": round(sizes["drp"] / sizes["floor"], 4),
        "size_database_object_vs_floor": round(sizes["drp_database_object"] / sizes["floor"], 4),
        "size_vs_pg_dump": round(sizes["drp"] / sizes["pg_dump"], 4),
    }
    if restore:
        ratios["restore_vs_pg_restore"] = {**ratio(restore["drp"], restore["pg_restore"]),
                                           "paired_median": paired("restore", "drp", "pg_restore")}
    if "floor" in restore:
        ratios["restore_vs_floor_restore"] = ratio(restore["drp"], restore["floor"])
    def peak(kind: str, variant: str, part: str | None = None) -> int | None:
        found = [(p[kind][variant][part] if part else p[kind][variant])["maxrss_kb"] for p in passes
                 if variant in p[kind]]
        return max(found) if found else None

    def peak_python(kind: str) -> int | None:
        found = [p[kind]["drp"]["python_maxrss_kb"] for p in passes if "drp" in p[kind]]
        return max(found) if found else None

    rss = {
        "drp_backup": peak("backup", "drp"), "drp_backup_python": peak_python("backup"),
        "drp_restore": peak("restore", "drp"), "drp_restore_python": peak_python("restore"),
        "pg_dump": peak("backup", "pg_dump"), "floor_pg_dump": peak("backup", "floor", "pg_dump"),
        "floor_zstd": peak("backup", "floor", "zstd"), "pg_restore": peak("restore", "pg_restore"),
    }
    targets = {"backup_vs_floor": ratios["backup_vs_floor"]["median"]}
    if restore:
        targets["restore_vs_pg_restore"] = ratios["restore_vs_pg_restore"]["median"]
    targets["size_vs_floor"] = ratios["size_vs_floor"]
    return {
        "backup_seconds": backup,
        "restore_seconds": restore,
        "bytes": sizes,
        "ratios": ratios,
        "targets": {k: {"value": v, "target": TARGETS[k], "met": v <= TARGETS[k]} for k, v in targets.items()},
        "peak_rss_kb": rss,
    }


def _summary(report: dict[str, Any]) -> None:
    b, r, s = report["backup_seconds"], report["restore_seconds"], report["bytes"]
    mb = 2**20

    def mib(kb: int | None) -> str:
        return "-" if kb is None else f"{kb / 1024:.0f}"

    lines = [
        f"database {report['database']['size_mb']} MiB, {report['params']['repeat']} repeats (median / min seconds)",
        "backup:  " + ", ".join(f"{v} {b[v]['median']:.2f}/{b[v]['min']:.2f}" for v in BACKUP_VARIANTS)
        + f"; floor fsync +{b['floor_with_fsync']['median'] - b['floor']['median']:.2f}",
    ]
    if r:
        lines.append("restore: " + ", ".join(f"{v} {r[v]['median']:.2f}/{r[v]['min']:.2f}" for v in RESTORE_VARIANTS
                                             if v in r)
                     + f"; drp = fetch {r['drp_fetch']['median']:.2f} + pg_restore {r['drp_pg_restore']['median']:.2f}")
    lines.append("size:    " + ", ".join(f"{v} {s[v] / mb:.1f} MiB" for v in BACKUP_VARIANTS))
    for name, t in report["targets"].items():
        lines.append(f"target {name}: {t['value']:.3f} (<= {t['target']}) {'met' if t['met'] else 'MISSED'}")
    lines.append("peak RSS MiB of drp backup / restore (process tree; the Python process alone): " + "; ".join(
        f"{row['database']} ({row['size_bytes'] / mb:.0f} MiB) {mib(row['backup_maxrss_kb'])} / "
        f"{mib(row['restore_maxrss_kb'])} ({mib(row['backup_python_maxrss_kb'])} / "
        f"{mib(row['restore_python_maxrss_kb'])})"
        for row in report["rss_by_size"]))
    print("\n".join(lines), file=sys.stderr)


# -- helpers -------------------------------------------------------------------------------


def _rotate(variants: tuple[str, ...], i: int) -> tuple[str, ...]:
    k = i % len(variants)
    return variants[k:] + variants[:k]


def _check(code: int, what: str) -> None:
    if code != 0:
        raise SystemExit(f"{what} failed (exit {code})")


def _log(what: str, result: dict[str, Any]) -> None:
    extra = ""
    if "dump_seconds" in result:
        extra = f" (dump stream {result['dump_seconds']:.2f} + after {result['after_dump_seconds']:.2f})"
    if "fetch_seconds" in result:
        extra = f" (fetch {result['fetch_seconds']:.2f} + pg_restore {result['restore_seconds']:.2f})"
    print(f"[bench]   {what}: {result['seconds']:.2f}s{extra}, peak RSS {result['maxrss_kb'] / 1024:.0f} MiB",
          file=sys.stderr)


# -- the child: one drp operation per process, so its peak RSS is its own --------------------


def _child() -> int:
    started = time.monotonic()
    config = json.load(sys.stdin)
    from dr_pipelines.core.storage import open_storage

    storage = open_storage(config["storage"])
    if config["op"] == "backup":
        from dr_pipelines.core.backup.logical import BackupOptions, run_logical_backup

        options = BackupOptions(compression_level=config["level"], zstd_threads=config["zstd_threads"],
                                checksums=config["checksums"])
        dump_done: list[float] = []

        def progress(phase: str, done: int, expected: int | None) -> None:
            if phase == "database":  # called every 8 MiB and once when the dump stream ends
                dump_done[:] = [time.monotonic()]

        t0 = time.monotonic()
        manifest = run_logical_backup(config["dsn"], storage, [config["recipient"]], options=options,
                                      progress=progress)
        t1 = time.monotonic()
        out: dict[str, Any] = {
            "seconds": round(t1 - t0, 3),
            # until pg_dump's stream is consumed; after: the object's fsync, pg_dumpall, waiting for the
            # checksums, the manifest
            "dump_seconds": round(dump_done[0] - t0, 3), "after_dump_seconds": round(t1 - dump_done[0], 3),
            "id": manifest.id, "stored_bytes": manifest.stored_bytes,
            "objects": {o.role: {"bytes": o.bytes, "plain_bytes": o.plain_bytes} for o in manifest.objects},
            "tables_checksummed": len(manifest.tables),
        }
    else:
        from pyrage import x25519

        from dr_pipelines.core.backup.catalog import find_backup
        from dr_pipelines.core.restore.logical import RestoreOptions, restore_backup

        entry = find_backup(storage, config["backup_id"])
        identity = x25519.Identity.from_str(config["identity"])
        t0 = time.monotonic()
        result = restore_backup(storage, entry, [identity], config["target_dsn"], work_dir=Path(config["work_dir"]),
                                options=RestoreOptions(jobs=config["jobs"]))
        out = {"seconds": round(time.monotonic() - t0, 3), "fetch_seconds": round(result.fetch_seconds, 3),
               "restore_seconds": round(result.restore_seconds, 3), "plain_bytes": result.plain_bytes,
               "toc_entries": result.toc_entries}
    out["setup_seconds"] = round(t0 - started, 3)  # imports and opening the storage, outside "seconds"
    out["python_maxrss_kb"] = own_peak_rss_kb()
    json.dump(out, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
