"""Benchmark restoring one clinic to a time T: `drp tenant restore --apply` against the manual way, in one run.

    PYTHONPATH=. .venv/bin/python benchmarks/tenant_restore.py                 # the ~1 GB demo
    PYTHONPATH=. .venv/bin/python benchmarks/tenant_restore.py --clinics 20 --scale 10

1. An archiving cluster (support/wal.WalRig, CLUSTER_SETTINGS, fsync on) with the demo database
   (``seed_demo``: --clinics x --scale; the defaults make ~1 GB), then a drp base backup.
2. A writer keeps inserting and updating the *other* clinics' rows from here to the end (a few per
   second: the restores run against a live database, whose other tenants must come out untouched).
3. T; then clinic --clinic is damaged: 10% of its appointments deleted with their visits (and what
   hangs off them: notes, prescriptions, invoices with lines and payments), some invoices updated;
   after the damage the clinic writes new patients (they must be kept). Everything archived.
4. Measured, in this order (both leave live as it was before them):
   (b) **the manual way**: ``drp restore --pitr --time T --new-cluster DIR`` (the whole cluster),
       ``psql \\copy (SELECT ... WHERE <clinic filter>) TO file`` for every table of the tenant scope,
       ``\\copy`` the files into a side schema of live, then the SQL a DBA writes to re-insert the deleted
       rows (FK order, NOT EXISTS by primary key) and revert the changed invoices, in one transaction,
       rolled back at the end (so that (a) finds the same damage);
   (a) ``drp tenant restore --clinic X --at T --apply --policy both`` as a child (wall time, peak RSS;
       the storage is a local folder, so ``--undo-allow-plaintext``; the undo export is part of the time),
       with its split from the JSON report (PITR; extract, compare and apply inside the apply);
   then the clinic's rows are checked against their checksums at T (the kept patients aside).
   Before (b), one untimed ``drp tenant restore --clinic X --at T`` (a preview, no --apply): the bytecode
   cache's warm-up, below (the apply's own lazily imported modules, the undo export's, stay cold).
Step 4 runs ``--pairs`` times (default 3), T staying the same: before each pair the damage is done again (the rows (a)
brought back are deleted again, new patients written after it are kept too), and the clinic is checked
exact at T after each (a). One pair alone moved by ±30% on the shared 2 cores.
Prints JSON: sizes, seconds per pair, the median of the pairs' ratios a/b (target <= 0.5) and the ratio of
the medians, the split of the median pair, peak RSS, the load average.

See ``_common.BYTECODE_DOC`` (appended below).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from _common import (
    BYTECODE_DOC,
    CLUSTER_SETTINGS,
    DrpPython,
    Launch,
    add_cold_bytecode_flag,
    machine_info,
    make_base_dir,
)
from psycopg import sql

from dr_pipelines.core import context
from dr_pipelines.core.backup.physical import run_base_backup
from dr_pipelines.core.pg.checksums import default_method, relation_checksum
from dr_pipelines.core.pg.cluster import LocalCluster
from dr_pipelines.core.tenancy import TENANTS_SETTING, Scope, discover_scope, tenant_select
from dr_pipelines.core.tenant_restore.apply import insert_order
from dr_pipelines.core.tenant_restore.conflicts import constraints_of
from dr_pipelines.core.tenant_restore.drill import clinic_checksums
from dr_pipelines.core.tenant_restore.transfer import primary_key, table_columns
from dr_pipelines.demo import generate as gen
from dr_pipelines.demo.generate import seed_demo
from dr_pipelines_tests.support.wal import WalRig, wait_archived

BIN = Path(sys.executable).parent

# 10% of the clinic's appointments and everything hanging off them, children first; some invoices changed.
DAMAGE = """
CREATE TEMP TABLE gone_appointments AS SELECT id FROM appointments WHERE clinic_id = %(c)s AND id %% 10 = 0;
CREATE TEMP TABLE gone_visits AS
    SELECT id FROM visits WHERE clinic_id = %(c)s AND appointment_id IN (SELECT id FROM gone_appointments);
CREATE TEMP TABLE gone_invoices AS
    SELECT id FROM invoices WHERE clinic_id = %(c)s AND visit_id IN (SELECT id FROM gone_visits);
DELETE FROM payments WHERE clinic_id = %(c)s AND invoice_id IN (SELECT id FROM gone_invoices);
DELETE FROM invoice_lines WHERE clinic_id = %(c)s AND invoice_id IN (SELECT id FROM gone_invoices);
DELETE FROM invoices WHERE clinic_id = %(c)s AND id IN (SELECT id FROM gone_invoices);
DELETE FROM clinical_notes WHERE clinic_id = %(c)s AND visit_id IN (SELECT id FROM gone_visits);
DELETE FROM prescriptions WHERE clinic_id = %(c)s AND visit_id IN (SELECT id FROM gone_visits);
DELETE FROM visits WHERE clinic_id = %(c)s AND id IN (SELECT id FROM gone_visits);
DELETE FROM appointments WHERE clinic_id = %(c)s AND id IN (SELECT id FROM gone_appointments);
UPDATE invoices SET total = total + 1 WHERE clinic_id = %(c)s AND id %% 50 = 7;
"""
AFTER_DAMAGE = ("INSERT INTO patients (clinic_id, external_id, given_name, family_name, date_of_birth, sex) "
                "SELECT %(c)s, %(tag)s || g, 'Kept', 'Patient', '1990-01-01', 'other' FROM generate_series(1, 5) g "
                "RETURNING id")
OTHERS_WRITE = ("INSERT INTO patients (clinic_id, external_id, given_name, family_name, date_of_birth, sex) "
                "SELECT c.id, 'writer-' || md5(random()::text), 'Other', 'Writer', '1980-01-01', 'other' "
                "FROM clinics c WHERE c.id <> %(c)s ORDER BY random() LIMIT 1",
                "UPDATE appointments SET reason = coalesce(reason, '') || '.' WHERE id = (SELECT id FROM appointments "
                "WHERE clinic_id <> %(c)s ORDER BY id DESC LIMIT 1)")



APP = "bench-tenant-restore"  # PGAPPNAME of (a): its statements are found in the server log by it
# (a)'s statements on live by kind, in the order the apply runs them (the first match wins).
KINDS = (("extract: past rows into TEMP tables", re.compile(r"^COPY .*FROM STDIN", re.S)),
         ("undo export (and its checksums)", re.compile(r"^COPY \(|^SELECT count\(\*\), coalesce\(sum\(.*drp_export_row", re.S)),
         ("compare: rows to insert / revert", re.compile(r"^(CREATE TABLE|DELETE FROM) \"pg_temp\"", re.S)),
         ("checksums of the other clinics' rows", re.compile(r"^SELECT count\(\*\), coalesce\(sum\(", re.S)),
         ("conflict checks", re.compile(r"jsonb_build_object|^SELECT .*EXISTS", re.S)),
         ("write: INSERT / UPDATE", re.compile(r"^(INSERT INTO|UPDATE) (?!\"?drp)", re.S)))
DURATION = re.compile(r"\] " + APP + r" LOG:  duration: ([0-9.]+) ms  (?:statement|execute [^:]*): (.*)")


def statement_split(log: Path, offset: int) -> dict[str, float]:
    """Seconds per statement kind of (a) on live, from the server log past ``offset`` (log_min_duration_statement 0)."""
    out: dict[str, float] = {}
    with open(log, "rb") as f:
        f.seek(offset)
        for line in f.read().decode(errors="replace").splitlines():
            found = DURATION.search(line)
            if found:
                kind = next((k for k, rx in KINDS if rx.search(found.group(2))), "other statements")
                out[kind] = out.get(kind, 0.0) + float(found.group(1)) / 1000
    return {k: round(v, 2) for k, v in sorted(out.items(), key=lambda kv: -kv[1])}


@contextmanager
def statements_logged(cluster: LocalCluster) -> Iterator[int]:
    """Every statement logged with its duration and application name while the block runs; yields the log offset."""
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        conn.execute("ALTER SYSTEM SET log_min_duration_statement = 0")
        conn.execute("ALTER SYSTEM SET log_line_prefix = '%m [%p] %a '")
        conn.execute("SELECT pg_reload_conf()")
        try:
            yield cluster.log_file.stat().st_size
        finally:
            conn.execute("ALTER SYSTEM RESET log_min_duration_statement")
            conn.execute("ALTER SYSTEM RESET log_line_prefix")
            conn.execute("SELECT pg_reload_conf()")


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


@contextmanager
def other_clinics_writing(dsn: str, clinic: str, per_second: float = 5) -> Iterator[dict[str, int]]:
    """A thread writing other clinics' rows until the block ends; yields its counter."""
    stop, done = threading.Event(), {"transactions": 0}

    def write() -> None:
        with psycopg.connect(dsn, autocommit=True, application_name="bench-writer") as conn:
            while not stop.wait(1 / per_second):
                with conn.transaction():
                    for statement in OTHERS_WRITE:
                        conn.execute(statement, {"c": clinic})
                done["transactions"] += 1

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    try:
        yield done
    finally:
        stop.set()
        thread.join()


def archive_now(cluster: LocalCluster) -> None:
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        wait_archived(cluster, conn.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone()[0], timeout=600)


def drp_env(rig: WalRig, live: str, base: Path, python: DrpPython) -> dict[str, str]:
    return python.env({**os.environ, "DRP_CONFIG": str(rig.config), "DRP_SOURCE_DSN": live,
                       "DRP_WORK_DIR": str(base / "work"), "PATH": f"{BIN}:{os.environ['PATH']}"})


def warm_up(rig: WalRig, live: str, base: Path, python: DrpPython, clinic: str, at: str) -> None:
    """One untimed preview (no --apply: live untouched) that fills the bytecode cache, as a first run does."""
    subprocess.run([str(BIN / "drp"), "tenant", "restore", "--clinic", clinic, "--at", at, "--json"],
                   env=drp_env(rig, live, base, python), check=True, stdout=subprocess.DEVNULL)


def psql(dsn: str, *commands: str) -> None:
    """psql -c ... (one session, in order): how a DBA runs \\copy."""
    argv = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", dsn]
    for command in commands:
        argv += ["-c", command]
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)


def manual_way(rig: WalRig, live: str, base: Path, scope: Scope, clinic: str, at: str,
               python: DrpPython) -> dict[str, Any]:
    """(b): PITR the whole cluster, COPY the clinic's rows out to files, load them aside, re-insert by SQL."""
    split: dict[str, float] = {}
    started = time.monotonic()
    dest, files = base / "manual-pitr", base / "manual-files"
    files.mkdir()
    launch = Launch([str(BIN / "drp"), "restore", "--pitr", "--time", at, "--new-cluster", str(dest), "--json"],
                    env=drp_env(rig, live, base, python), stdout=subprocess.PIPE)
    assert launch.proc.stdout is not None
    report = json.loads(launch.proc.stdout.read())
    pitr = launch.reap()
    assert pitr.returncode == 0, "drp restore --pitr failed"
    split["pitr"] = time.monotonic() - started
    port = int(psycopg.conninfo.conninfo_to_dict(report["dsn"])["port"])
    recovered = LocalCluster(data_dir=dest, port=port)
    past = psycopg.conninfo.make_conninfo(report["dsn"], dbname=psycopg.conninfo.conninfo_to_dict(live)["dbname"])
    try:
        mark = time.monotonic()
        bind = f"SELECT set_config('{TENANTS_SETTING}', '{{{int(clinic)}}}', false)"  # the DBA's literal clinic id
        copies = [bind]
        with psycopg.connect(past) as conn:
            for t in scope.tables:
                query = tenant_select(t, scope).as_string(conn)
                copies.append(f"\\copy ({query}) TO '{files / t.name}'")
        psql(past, *copies)
        split["extract"] = time.monotonic() - mark
    finally:
        recovered.remove()
    mark = time.monotonic()
    side = f"manual_restore_{int(clinic)}"
    with psycopg.connect(live, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(side)))
        for t in scope.tables:
            conn.execute(sql.SQL("CREATE TABLE {} (LIKE {})").format(sql.Identifier(side, t.table),
                                                                   sql.Identifier(t.schema, t.table)))
        loads = [f"\\copy {sql.Identifier(side, t.table).as_string(conn)} FROM '{files / t.name}'" for t in scope.tables]
    psql(live, *loads)
    split["load"] = time.monotonic() - mark
    mark = time.monotonic()
    reinserted = dba_sql(live, scope, side)
    split["sql"] = time.monotonic() - mark
    with psycopg.connect(live, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(side)))
    shutil.rmtree(files)
    return {"seconds": round(time.monotonic() - started, 2), "split": {k: round(v, 2) for k, v in split.items()},
            "pitr_maxrss_kb": pitr.maxrss_kb, "reinserted": reinserted}


def dba_sql(live: str, scope: Scope, side: str) -> dict[str, int]:
    """INSERT ... WHERE NOT EXISTS per table, parents first; the changed invoices reverted; rolled back."""
    out: dict[str, int] = {}
    with psycopg.connect(live) as conn:
        fks = {t.name: constraints_of(conn, t)[1] for t in scope.tables}
        parents = {name: {fk.parent for fk in f if fk.parent in fks and fk.parent != name} for name, f in fks.items()}
        for t in insert_order(list(scope.tables), parents):
            key = primary_key(conn, t.schema, t.table)
            columns = [sql.Identifier(c.name) for c in table_columns(conn, t.schema, t.table) if not c.generated]
            if not key:
                continue
            match = sql.SQL(" AND ").join(sql.SQL("l.{0} = m.{0}").format(sql.Identifier(k)) for k in key)
            out[t.name] = conn.execute(sql.SQL(
                "INSERT INTO {} ({}) SELECT {} FROM {} AS m WHERE NOT EXISTS (SELECT 1 FROM {} AS l WHERE {})").format(
                sql.Identifier(t.schema, t.table), sql.SQL(", ").join(columns),
                sql.SQL(", ").join(sql.SQL("m.{}").format(c) for c in columns), sql.Identifier(side, t.table),
                sql.Identifier(t.schema, t.table), match)).rowcount
        out["invoices reverted"] = conn.execute(sql.SQL(
            "UPDATE invoices AS l SET total = m.total, status = m.status FROM {} AS m"
            " WHERE l.id = m.id AND (l.total, l.status) IS DISTINCT FROM (m.total, m.status)").format(
            sql.Identifier(side, "invoices"))).rowcount
        conn.rollback()
    return out


def drp_apply(rig: WalRig, live: str, base: Path, clinic: str, at: str, cluster: LocalCluster,
              offset: int, python: DrpPython) -> dict[str, Any]:
    """(a): the one command, measured as a child; its report's split, when each progress line came (stderr),
    and its statements on live by kind (the server log from ``offset``)."""
    reports = base / "reports"
    before = load()
    launch = Launch([str(BIN / "drp"), "tenant", "restore", "--clinic", clinic, "--at", at, "--apply", "--policy",
                     "both", "--reason", "benchmark", "--requester", "benchmark", "--report-dir", str(reports),
                     "--undo-allow-plaintext", "--json"], env={**drp_env(rig, live, base, python), "PGAPPNAME": APP},
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    timeline: list[tuple[float, str]] = []

    def progress() -> None:
        assert launch.proc.stderr is not None
        for line in launch.proc.stderr:
            timeline.append((round(time.monotonic() - launch.started, 2), line.strip()[:100]))

    reader = threading.Thread(target=progress, daemon=True)
    reader.start()
    assert launch.proc.stdout is not None
    raw = launch.proc.stdout.read()
    m = launch.reap()
    reader.join()
    assert m.returncode == 0, f"drp tenant restore --apply failed: {timeline[-3:]}"
    report = json.loads(raw)
    applied, seconds = report["apply"], report["seconds"]
    split = {"pitr": seconds["restore"], "apply (undo export, extract, compare, write, checks)": seconds["apply"],
             "apply internal": applied.get("seconds") or "not reported",
             "statements on live (server log)": statement_split(cluster.log_file, offset),
             "rest (start, scope, drift check, reports, cluster removal)":
                 round(m.seconds - seconds["restore"] - seconds["apply"], 2)}
    return {**m.as_dict(), "split": split, "progress": timeline, "inserted": applied["inserted"],
            "updated": applied["updated"], "attempts": applied.get("attempts"),
            "load_before": before, "load_after": load()}


def clinic_state(live: str, scope: Scope, clinic: str, kept: list[str]) -> dict[str, tuple[int, str]]:
    """The clinic's checksums, the patients it wrote after the damage left out (they are kept, not restored)."""
    sums = clinic_checksums(live, scope, [clinic])[clinic]
    with psycopg.connect(live) as conn, conn.transaction():
        conn.execute("SELECT set_config(%s, %s, true)", (TENANTS_SETTING, "{" + str(int(clinic)) + "}"))
        patients = scope.table("public.patients")
        query = sql.SQL("({} AND NOT (t.id::text = ANY ({})))").format(tenant_select(patients, scope), sql.Literal(kept))
        result = relation_checksum(conn, patients.name, query, default_method(conn, "public", "patients"))
        sums[patients.name] = (result.rows, result.checksum)
    return sums


def main() -> None:
    parser = argparse.ArgumentParser(description=f"{__doc__}\n{BYTECODE_DOC}",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clinics", type=int, default=gen.BENCHMARK_CLINICS)
    parser.add_argument("--scale", type=float, default=gen.BENCHMARK_SCALE)
    parser.add_argument("--clinic", default="2")
    parser.add_argument("--base-dir", default=None)
    parser.add_argument("--pairs", type=int, default=3, help="(b) then (a), this many times, the damage redone before each")
    add_cold_bytecode_flag(parser)
    args = parser.parse_args()
    base = make_base_dir("bench-tenant-restore-", args.base_dir)
    python = DrpPython(base, cached=not args.cold_bytecode)
    rig = WalRig.make(base / "rig")
    settings = {**rig.cluster_settings("60s"), **CLUSTER_SETTINGS}
    settings.pop("fsync")  # durability at its default
    cluster = LocalCluster.create(base / "pg", settings=settings, tcp_trust=True)
    clinic = args.clinic
    try:
        with rig.archiver():
            live = cluster.create_database("clinics")
            started = time.monotonic()
            seed_demo(live, clinics=args.clinics, scale=args.scale)
            generated = time.monotonic() - started
            with psycopg.connect(live, autocommit=True) as conn:
                size = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
                conn.execute("CHECKPOINT")
                scope = discover_scope(conn)
            s = rig.settings()
            run_base_backup(live, context.storage(s), s.encryption_recipients)
            with other_clinics_writing(live, clinic) as writer:
                with psycopg.connect(live, autocommit=True) as conn:
                    at = conn.execute("SELECT clock_timestamp()").fetchone()[0].isoformat()
                    at_t = clinic_checksums(live, scope, [clinic])[clinic]
                    clinic_rows = {name: rows for name, (rows, _) in at_t.items()}
                    time.sleep(1)
                pairs: list[dict[str, Any]] = []
                kept: list[str] = []
                changed: list[str] = []
                for pair in range(args.pairs):  # the same damage again each time: (a) brought the rows back
                    with psycopg.connect(live, autocommit=True) as conn:
                        with conn.transaction():
                            psycopg.ClientCursor(conn).execute(DAMAGE, {"c": int(clinic)})  # several statements
                        kept += [str(r[0]) for r in conn.execute(AFTER_DAMAGE, {"c": clinic, "tag": f"after-damage-{pair}-"})]
                    damaged = clinic_checksums(live, scope, [clinic])[clinic]
                    changed = changed or sorted(n for n in at_t if at_t[n] != damaged[n])
                    archive_now(cluster)
                    if pair == 0 and python.cached:
                        warm_up(rig, live, base, python, clinic, at)
                    manual = manual_way(rig, live, base, scope, clinic, at, python)
                    print(json.dumps({"manual": manual}), file=sys.stderr)
                    assert clinic_checksums(live, scope, [clinic])[clinic] == damaged  # rolled back: the same damage
                    with statements_logged(cluster) as offset:
                        ours = drp_apply(rig, live, base, clinic, at, cluster, offset, python)
                    print(json.dumps({"drp": ours}), file=sys.stderr)
                    restored = clinic_state(live, scope, clinic, kept)
                    not_exact = [name for name, sums in at_t.items() if restored[name] != sums]
                    pairs.append({"manual": manual, "drp": ours, "ratio": round(ours["seconds"] / manual["seconds"], 2),
                                  "clinic_exactly_at_t": not not_exact, "tables_not_exact": not_exact})
            kept_rows = clinic_checksums(live, scope, [clinic])[clinic]["public.patients"][0] - at_t["public.patients"][0]
        median_pair = sorted(pairs, key=lambda p: p["ratio"])[len(pairs) // 2]
        manual_s = [p["manual"]["seconds"] for p in pairs]
        drp_s = [p["drp"]["seconds"] for p in pairs]
        print(json.dumps({
            "clinics": args.clinics, "scale": args.scale, "bytecode_cache": python.cached, "database_bytes": size, "generate_seconds": round(generated, 1),
            "clinic": clinic, "clinic_rows_at_t": clinic_rows,
            "tables_changed_since_t": changed,
            "other_clinics_writer_transactions": writer["transactions"],
            "pairs": [{"manual_seconds": p["manual"]["seconds"], "drp_seconds": p["drp"]["seconds"], "ratio": p["ratio"],
                       "clinic_exactly_at_t": p["clinic_exactly_at_t"]} for p in pairs],
            "manual": median_pair["manual"], "drp": median_pair["drp"],  # the pair with the median ratio, whole
            "ratio_drp_over_manual": median_pair["ratio"],  # the median of the pairs' ratios
            "ratio_of_medians": round(statistics.median(drp_s) / statistics.median(manual_s), 2),
            "clinic_exactly_at_t": all(p["clinic_exactly_at_t"] for p in pairs),
            "tables_not_exact": sorted({n for p in pairs for n in p["tables_not_exact"]}),
            "rows_written_after_damage_kept": kept_rows == len(kept),
            "machine": {**machine_info(live), "load_now": load()},
        }, indent=2))
    finally:
        cluster.remove()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
