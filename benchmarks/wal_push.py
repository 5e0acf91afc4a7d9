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
3. RPO under sustained writes: a cluster whose archive_command is the client (archiver running),
   archive_timeout=30s, writing continuously for --load-seconds; sampled every 0.25 s: when each
   segment was started, completed and archived. The worst data-loss window is
   archived - started of a segment (a commit at the segment's start waits that long).

Prints JSON. The machine is shared and loaded (other engineers' tests): medians are reported.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
from _common import make_base_dir, stats

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
    segment holds the pages its name says (core/wal/header.py). The rest is the real WAL.
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
        path.write_bytes(data)
        (wal / "archive_status" / f"{segment.name}.ready").touch()
        paths.append(path)
    return paths


def run_sequence(cmd_for: list[str], paths: list[Path], env: dict[str, str]) -> list[float]:
    """Push each path in order like PostgreSQL: wait for the command, then mark it .done."""
    latencies = []
    for path in paths:
        started = time.monotonic()
        result = subprocess.run([*cmd_for, str(path)], env=env, capture_output=True, text=True)
        latencies.append(time.monotonic() - started)
        if result.returncode != 0:
            raise SystemExit(f"push of {path.name} failed: {result.stderr}")
        status = path.parent / "archive_status"
        os.replace(status / f"{path.name}.ready", status / f"{path.name}.done")
    return latencies


def mechanism(base: Path, label: str, sources: list[Path], pushes: int, recipient: str, identity: Path,
              daemon_args: list[str] | None) -> dict[str, object]:
    config = fresh_target(base, label, recipient, identity)
    env = {**os.environ, "DRP_CONFIG": str(config)}
    paths = fake_pg_wal(base, label, sources, pushes)
    daemon = None
    if daemon_args is None:
        cmd = [str(BIN / "drp"), "wal", "push"]
    else:
        sock = base / f"sock-{label}" / "a.sock"
        daemon = subprocess.Popen([str(BIN / "drp"), "wal", "archiver", "--socket", str(sock), *daemon_args],
                                  env=env, stderr=subprocess.DEVNULL)
        while not sock.exists():
            time.sleep(0.05)
        cmd = [sys.executable, "-I", "-S", client.__file__, str(sock), "-"]
    try:
        started = time.monotonic()
        latencies = run_sequence(cmd, paths, env)
        elapsed = time.monotonic() - started
    finally:
        if daemon:
            daemon.terminate()
            daemon.wait()
    stored = sum(p.stat().st_size for p in (base / f"storage-{label}").rglob("*.zst.age"))
    shutil.rmtree(base / f"storage-{label}")
    shutil.rmtree(paths[0].parent)
    return {"pushes": pushes, "latency_s": stats(latencies), "segments_per_minute": round(pushes * 60 / elapsed),
            "stored_bytes_per_segment": stored // pushes}


def client_startup(base: Path) -> dict[str, object]:
    """The client's own cost: start, fail to connect, exit."""
    times = []
    for _ in range(15):
        started = time.monotonic()
        subprocess.run([sys.executable, "-I", "-S", client.__file__, str(base / "none.sock"), "-", "/x"],
                       capture_output=True)
        times.append(time.monotonic() - started)
    return stats(times)


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--segments", type=int, default=6)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--load-seconds", type=float, default=45)
    args = parser.parse_args()
    base = make_base_dir("drp-bench-wal-")
    try:
        sources = make_segments(base, args.segments)
        identity = base / "key.txt"
        recipient = generate_identity_file(identity)
        n = (5, 20, 40) if args.quick else (15, 60, 120)
        result = {
            "client_startup_s": client_startup(base),
            "direct": mechanism(base, "direct", sources, n[0], recipient, identity, None),
            "daemon": mechanism(base, "daemon", sources, n[1], recipient, identity, ["--read-ahead", "0"]),
            "daemon+readahead": mechanism(base, "readahead", sources, n[2], recipient, identity,
                                          ["--read-ahead", "8", "--workers", "4"]),
            "rpo": rpo_under_load(base, args.load_seconds),
            "load_average": os.getloadavg(),
            "cpus": os.cpu_count(),
        }
        print(json.dumps(result, indent=2))
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
