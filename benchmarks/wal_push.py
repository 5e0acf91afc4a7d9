"""Benchmark WAL archiving mechanisms: a Python process per segment vs a tiny client to the archiver.

    PYTHONPATH=. .venv/bin/python benchmarks/wal_push.py            # defaults below
    PYTHONPATH=. .venv/bin/python benchmarks/wal_push.py --quick    # fewer pushes

1. Real WAL: a throwaway cluster writes --segments full 16 MiB segments of table data (INSERTs of
   md5 text), copied out as the payload.
2. Each mechanism archives a fresh sequence of segments one at a time, as PostgreSQL's archiver
   does (it waits for each archive_command), to a fresh local storage; the latency of each push is
   the command's wall time, spawn to exit:
   - ``direct``: ``drp wal push %p`` (a Python interpreter + drp imports per segment);
   - ``daemon``: the stdlib client (``python -I -S client.py``) to ``drp wal archiver --read-ahead 0``;
   - ``daemon+readahead``: the same with ``--read-ahead 8`` and the ``.ready`` files PostgreSQL
     leaves in archive_status, so the archiver pushes ahead of the requests with 4 workers.
   Each push runs the line `drp wal archive-command` prints, through ``/bin/sh -c`` as PostgreSQL does. CPU
   per segment: the archiver's (from /proc, and by phase from its log), the commands', and this driver's.
3. ``--drain-segments N``: PostgreSQL's own archiver drains N segments a real server wrote while
   archive_command was empty, through the documented archive_command (latency from the server log).
4. RPO under sustained writes: a cluster whose archive_command is the client (archiver running),
   archive_timeout=30s, writing continuously for --load-seconds; sampled every 0.25 s: when each
   segment was started, completed and archived. The worst data-loss window is
   archived - started of a segment (a commit at the segment's start waits that long).

Prints JSON. The machine is shared and loaded (other engineers' tests): medians are reported.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import shutil
import statistics
import struct
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import psycopg
from _common import make_base_dir, stats
from psycopg import sql

from dr_pipelines.cli.wal import archive_command
from dr_pipelines.core.crypto import generate_identity_file
from dr_pipelines.core.pg.cluster import LocalCluster
from dr_pipelines.core.wal import client
from dr_pipelines.core.wal.names import Segment, segments_per_log
from dr_pipelines_tests.support.wal import WalRig

BIN = Path(sys.executable).parent
PAGEADDR_OFFSET = 8  # xlp_pageaddr in XLogPageHeaderData (magic uint16, info uint16, tli uint32)


def make_segments(base: Path, count: int) -> list[Path]:
    """``count`` full segments of real table WAL, copied out of a throwaway cluster."""
    out = base / "segments"
    out.mkdir()
    with LocalCluster.create(base / "src-pg", settings={"wal_keep_size": "'1GB'"}) as cluster:
        with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
            conn.execute("CREATE TABLE load (id bigserial PRIMARY KEY, a text, b text, n float8)")
            start = conn.execute("SELECT pg_walfile_name(pg_current_wal_lsn())").fetchone()[0]
            first = Segment.parse(start).following(1)[0]
            wanted = first.following(count)[-1]
            while conn.execute("SELECT pg_walfile_name(pg_current_wal_lsn())").fetchone()[0] <= wanted.name:
                conn.execute("INSERT INTO load (a, b, n) SELECT md5(g::text), md5(random()::text), random()"
                             " FROM generate_series(1, 20000) g")
        names = [first.name] + [s.name for s in first.following(count - 1)]
        for name in names:
            shutil.copyfile(cluster.data_dir / "pg_wal" / name, out / name)
    return [out / n for n in names]


def fresh_target(base: Path, label: str, recipient: str, identity: Path) -> Path:
    storage = base / f"storage-{label}"
    config = base / f"drp-{label}.yaml"
    config.write_text(json.dumps({"storage_url": str(storage), "encryption_recipients": [recipient],
                                  "age_identity_file": str(identity)}))
    return config


def fake_pg_wal(base: Path, label: str, sources: list[Path], pushes: int) -> list[Path]:
    """A pg_wal-like directory: ``pushes`` segments (copies of the real ones) with .ready files.

    Each copy's first page address is rewritten to its new name's LSN: push_wal checks that a
    segment holds the pages its name says (core/wal/header.py). The rest is the real WAL. Each file
    is fsync'd, as PostgreSQL's WAL is before it is marked .ready: otherwise the kernel writes the
    copies' 2 GB back during the measured pushes, on the same 2 cores and disk.
    """
    wal = base / f"pg_wal-{label}"
    (wal / "archive_status").mkdir(parents=True)
    first = Segment(1, 0x10, 0)
    paths = []
    for i, segment in enumerate([first, *first.following(pushes - 1)]):
        data = bytearray(sources[i % len(sources)].read_bytes())
        size = len(data)
        struct.pack_into("<Q", data, PAGEADDR_OFFSET,
                         (int(segment.name[8:16], 16) * segments_per_log(size) + int(segment.name[16:], 16)) * size)
        path = wal / segment.name
        with path.open("wb") as out:
            out.write(data)
            os.fsync(out.fileno())
        (wal / "archive_status" / f"{segment.name}.ready").touch()
        paths.append(path)
    os.sync()
    return paths


def run_sequence(command: str, paths: list[Path], env: dict[str, str]) -> list[float]:
    """Push each path in order like PostgreSQL: ``command`` (an archive_command line) through
    ``/bin/sh -c`` with %p replaced, wait for it, then mark the segment .done."""
    latencies = []
    for path in paths:
        started = time.monotonic()
        result = subprocess.run(["/bin/sh", "-c", command.replace("%p", shlex.quote(str(path)))], env=env,
                                capture_output=True, text=True)
        latencies.append(time.monotonic() - started)
        if result.returncode != 0:
            raise SystemExit(f"push of {path.name} failed: {result.stderr}")
        status = path.parent / "archive_status"
        os.replace(status / f"{path.name}.ready", status / f"{path.name}.done")
    return latencies


def process_cpu_s(pid: int) -> float:
    """utime + stime of a running process, all its threads (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def phase_cpu(log: str) -> dict[str, object]:
    """Per-phase CPU of the archiver's pushes (core/wal/archive.PHASES), from its "push done … cpu ms: read 3.1
    hash 9.8 …" lines; empty for an archiver that does not report them (code before the phases)."""
    per_phase: dict[str, list[float]] = {}
    for line in log.splitlines():
        if " push done " in line and " archived " in line and "cpu ms:" in line:
            words = line.split("cpu ms:", 1)[1].split()
            for phase, value in zip(words[::2], words[1::2], strict=True):
                per_phase.setdefault(phase, []).append(float(value))
    medians = {phase: round(statistics.median(v), 1) for phase, v in per_phase.items()}
    return {"median_ms": medians, "sum_of_medians_ms": round(sum(medians.values()), 1),
            "pushes": max((len(v) for v in per_phase.values()), default=0)}


def mechanism(base: Path, label: str, sources: list[Path], pushes: int, recipient: str, identity: Path,
              daemon_args: list[str] | None) -> dict[str, object]:
    """Push ``pushes`` segments through the archive_command `drp wal archive-command` prints (with its
    fallback), or ``drp wal push %p`` when ``daemon_args`` is None; CPU of the archiver (by phase and
    whole), of the commands PostgreSQL would run, and of this driver (PostgreSQL's archiver's part)."""
    config = fresh_target(base, label, recipient, identity)
    env = {**os.environ, "DRP_CONFIG": str(config)}
    paths = fake_pg_wal(base, label, sources, pushes)
    daemon = None
    log_path = base / f"archiver-{label}.log"
    if daemon_args is None:
        command = f"{shlex.quote(str(BIN / 'drp'))} wal push %p"
    else:
        sock = base / f"sock-{label}" / "a.sock"
        with log_path.open("w") as log:
            daemon = subprocess.Popen([str(BIN / "drp"), "wal", "archiver", "--socket", str(sock), *daemon_args],
                                      env=env, stderr=log)
        while not sock.exists():
            time.sleep(0.05)
        command = archive_command(sock, drp=BIN / "drp", config=config)
    archiver_cpu = process_cpu_s(daemon.pid) if daemon else 0.0
    children, me = resource.getrusage(resource.RUSAGE_CHILDREN), resource.getrusage(resource.RUSAGE_SELF)
    try:
        started = time.monotonic()
        latencies = run_sequence(command, paths, env)
        elapsed = time.monotonic() - started
        # before the archiver is reaped: RUSAGE_CHILDREN then holds only the archive_commands
        children_after, me_after = resource.getrusage(resource.RUSAGE_CHILDREN), resource.getrusage(resource.RUSAGE_SELF)
        if daemon:
            archiver_cpu = process_cpu_s(daemon.pid) - archiver_cpu
    finally:
        if daemon:
            daemon.terminate()
            daemon.wait()
    commands_cpu = children_after.ru_utime + children_after.ru_stime - children.ru_utime - children.ru_stime
    driver_cpu = me_after.ru_utime + me_after.ru_stime - me.ru_utime - me.ru_stime
    stored = sum(p.stat().st_size for p in (base / f"storage-{label}").rglob("*.zst.age"))
    plain = sum(p.stat().st_size for p in paths)
    shutil.rmtree(base / f"storage-{label}")
    shutil.rmtree(paths[0].parent)
    result: dict[str, object] = {
        "pushes": pushes, "latency_s": stats(latencies), "segments_per_minute": round(pushes * 60 / elapsed),
        "stored_bytes_per_segment": stored // pushes, "compression_ratio": round(plain / stored, 3),
        "cpu_ms_per_segment": {"archive_command": round(1000 * commands_cpu / pushes, 1),
                               "driver": round(1000 * driver_cpu / pushes, 1)},
    }
    if daemon:
        result["cpu_ms_per_segment"]["archiver"] = round(1000 * archiver_cpu / pushes, 1)  # type: ignore[index]
        result["archiver_phases_cpu"] = phase_cpu(log_path.read_text())
    total = sum(result["cpu_ms_per_segment"].values())  # type: ignore[union-attr]
    result["cores_busy"] = round(total * pushes / 1000 / elapsed, 2)
    return result


def client_startup(base: Path) -> dict[str, object]:
    """The client's own cost: start, fail to connect, exit (wall seconds, and CPU ms per run)."""
    times = []
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    for _ in range(15):
        started = time.monotonic()
        subprocess.run([sys.executable, "-I", "-S", client.__file__, str(base / "none.sock"), "-", "/x"],
                       capture_output=True)
        times.append(time.monotonic() - started)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return {**stats(times), "cpu_ms": round(1000 * cpu / len(times), 1)}


def drain(base: Path, segments: int) -> dict[str, object]:
    """PostgreSQL's own archiver draining ``segments`` waiting segments through the documented archive_command.

    A real server writes the WAL first, with archive_command empty (PostgreSQL then keeps every segment and
    its .ready file), so the write load is over before the clock starts; then CHECKPOINT, the archiver, and
    archive_command set by ALTER SYSTEM + reload. Throughput: segments / (reload -> the last .done file).
    Each push's latency is PostgreSQL's: "executing archive command" to "archived write-ahead log file" in
    the server log (log_min_messages = debug3 for the drain only).
    """
    rig = WalRig.make(base / "drain")
    settings = {**rig.cluster_settings("0"), "archive_command": "''", "max_wal_size": "'16GB'",
                "log_line_prefix": "'%m [%p] '"}
    cluster = LocalCluster.create(rig.root / "pg", settings=settings)
    status = cluster.data_dir / "pg_wal" / "archive_status"
    try:
        with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
            conn.execute("CREATE TABLE load (id bigserial PRIMARY KEY, a text, b text, n float8)")
            while sum(1 for e in os.scandir(status) if e.name.endswith(".ready")) < segments:
                conn.execute("INSERT INTO load (a, b, n) SELECT md5(g::text), md5(random()::text), random()"
                             " FROM generate_series(1, 20000) g")
            conn.execute("CHECKPOINT")
            waiting = sum(1 for e in os.scandir(status) if e.name.endswith(".ready"))
            log_start = cluster.log_file.stat().st_size
            with rig.archiver() as archiver:
                lines: list[str] = []
                reader = threading.Thread(target=lambda: lines.append(archiver.stderr.read()), daemon=True)
                reader.start()
                cpu_before = process_cpu_s(archiver.pid)
                conn.execute(sql.SQL("ALTER SYSTEM SET archive_command = {}").format(sql.Literal(rig.archive_command())))
                conn.execute("ALTER SYSTEM SET log_min_messages = 'debug3'")
                started = time.monotonic()
                conn.execute("SELECT pg_reload_conf()")
                while sum(1 for e in os.scandir(status) if e.name.endswith(".done")) < waiting:
                    if time.monotonic() - started > 600:
                        raise SystemExit("the drain did not finish within 600 s")
                    time.sleep(0.05)
                elapsed = time.monotonic() - started
                archiver_cpu = process_cpu_s(archiver.pid) - cpu_before
                conn.execute("ALTER SYSTEM RESET log_min_messages")
                conn.execute("SELECT pg_reload_conf()")
                archiver.terminate()
                archiver.wait(timeout=30)
                reader.join(timeout=30)
        log = cluster.log_file.read_bytes()[log_start:].decode(errors="replace")
    finally:
        cluster.remove()
    return {"segments": waiting, "segments_per_minute": round(waiting * 60 / elapsed),
            "latency_s": stats(command_latencies(log)), "archiver_cpu_ms_per_segment": round(1000 * archiver_cpu / waiting, 1),
            "archiver_phases_cpu": phase_cpu("".join(lines))}


def command_latencies(log: str) -> list[float]:
    """Seconds from "executing archive command" to "archived write-ahead log file", per push, from a server log
    whose lines start with %m (milliseconds)."""
    begun, latencies = None, []
    for line in log.splitlines():
        if "executing archive command" in line or "archived write-ahead log file" in line:
            at = datetime.strptime(" ".join(line.split()[:2]), "%Y-%m-%d %H:%M:%S.%f").timestamp()
            if "executing archive command" in line:
                begun = at
            elif begun is not None:
                latencies.append(at - begun)
                begun = None
    return latencies


def rpo_under_load(base: Path, seconds: float) -> dict[str, object]:
    rig = WalRig.make(base / "rpo")
    cluster = LocalCluster.create(rig.root / "pg", settings={**rig.cluster_settings("30s"), "wal_keep_size": "0"})
    stop = threading.Event()
    started_at: dict[str, float] = {}
    archived_at: dict[str, float] = {}

    def write() -> None:
        with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
            conn.execute("CREATE TABLE load (id bigserial PRIMARY KEY, a text, b text, n float8)")
            while not stop.is_set():
                conn.execute("INSERT INTO load (a, b, n) SELECT md5(g::text), md5(random()::text), random()"
                             " FROM generate_series(1, 2000) g")

    try:
        with rig.archiver(), psycopg.connect(cluster.dsn(), autocommit=True) as conn:
            writer = threading.Thread(target=write, daemon=True)
            t0 = time.monotonic()
            writer.start()
            first_lsn = None
            while True:
                now = time.monotonic() - t0
                lsn, current, last = conn.execute(
                    "SELECT pg_current_wal_lsn()::text, pg_walfile_name(pg_current_wal_lsn()),"
                    " (SELECT last_archived_wal FROM pg_stat_archiver)").fetchone()
                first_lsn = first_lsn or lsn
                started_at.setdefault(current, now)
                for name in started_at:
                    if last and name <= last:
                        archived_at.setdefault(name, now)
                if now > seconds and not stop.is_set():
                    stop.set()
                    writer.join()
                    end_segment = conn.execute("SELECT pg_walfile_name(pg_current_wal_lsn())").fetchone()[0]
                    wal_bytes = conn.execute("SELECT pg_current_wal_lsn() - %s::pg_lsn", (first_lsn,)).fetchone()[0]
                    conn.execute("SELECT pg_switch_wal()")
                if stop.is_set() and all(n in archived_at for n in started_at if n <= end_segment):
                    break
                if now > seconds + 120:
                    raise SystemExit("archiving did not catch up within 120 s")
                time.sleep(0.25)
    finally:
        cluster.remove()
    names = sorted(n for n in started_at if n <= end_segment)[1:]  # the first was started before we looked
    windows = [archived_at[n] - started_at[n] for n in names]
    completed = {n: started_at[m] for n, m in zip(names, names[1:], strict=False)}
    lags = [archived_at[n] - completed[n] for n in completed]
    return {"load_seconds": seconds, "wal_mb_per_s": round(float(wal_bytes) / 2**20 / seconds, 1),
            "segments": len(names), "completed_to_archived_s": stats(lags, 2),
            "worst_data_loss_window_s": round(max(windows), 2), "data_loss_window_s": stats(windows, 2)}


MECHANISMS = {"direct": None, "daemon": ["--read-ahead", "0"], "readahead": ["--read-ahead", "8", "--workers", "4"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--segments", type=int, default=6)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--load-seconds", type=float, default=45, help="the RPO phase's write load (0: skip it)")
    parser.add_argument("--only", choices=sorted(MECHANISMS), action="append",
                        help="run only these mechanisms (repeatable); default all three")
    parser.add_argument("--drain-segments", type=int, default=0,
                        help="also let a real server's archiver drain this many waiting segments (0: skip)")
    parser.add_argument("--repeat", type=int, default=1, help="run the mechanisms this many times, alternated")
    args = parser.parse_args()
    base = make_base_dir("drp-bench-wal-")
    try:
        sources = make_segments(base, args.segments)
        identity = base / "key.txt"
        recipient = generate_identity_file(identity)
        pushes = dict(zip(MECHANISMS, (5, 20, 40) if args.quick else (15, 60, 120), strict=True))
        result: dict[str, object] = {"client_startup_s": client_startup(base)}
        for round_ in range(args.repeat):
            for label in args.only or MECHANISMS:
                key = {"readahead": "daemon+readahead"}.get(label, label) + (f" #{round_ + 1}" if args.repeat > 1 else "")
                result[key] = mechanism(base, label, sources, pushes[label], recipient, identity, MECHANISMS[label])
        if args.drain_segments > 0:
            result["drain"] = drain(base, args.drain_segments)
        if args.load_seconds > 0:
            result["rpo"] = rpo_under_load(base, args.load_seconds)
        result["load_average"] = os.getloadavg()
        result["cpus"] = os.cpu_count()
        print(json.dumps(result, indent=2))
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
