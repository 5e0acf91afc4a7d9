"""Where the CPU of the zstd → age → SHA-256 pipeline goes, A/B on real data (core/stream.py).

    PYTHONPATH=.:benchmarks .venv/bin/python benchmarks/pipeline_cpu.py [--scale 20] [--rounds 3]

1. Real data: --segments full 16 MiB WAL segments of table INSERTs (wal_push.make_segments) and
   the tar stream of ``pg_basebackup -Ft -X none`` of a ``pgbench -i -s SCALE`` cluster, to files.
2. WAL: per segment, the CPU (process time, all threads) and wall time of each step of a push
   (SHA-256 of the plain, zstd at several levels, age, SHA-256 of the stored), then whole-push
   variants: the one-shot ``seal``, the streaming ``compress_encrypt``, zstd with 2 threads,
   the plain hash in a second thread. Variants alternate within each round.
3. Streams: the base backup tar through ``compress_encrypt`` (level 3, 2 threads) as shipped,
   with age's output coalesced into 1 MiB hand-offs, with 4 MiB reads, and ``zstd -T2 -3`` alone.
The machine is shared (2 cores, other engineers' tests): CPU time is the steadier measure, wall
time is reported with the load average. Prints JSON.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import queue
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pyrage
import zstandard
from _common import make_base_dir, stats
from pyrage import x25519
from wal_push import make_segments

from dr_pipelines.core import stream
from dr_pipelines.core.pg.cluster import LocalCluster

RECIPIENTS = [x25519.Identity.generate().to_public()]


def measure(fn: Callable[[], object]) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def ab(variants: dict[str, Callable[[], object]], rounds: int) -> dict[str, dict[str, object]]:
    """Run every variant once per round, alternating; medians of wall and CPU seconds."""
    walls: dict[str, list[float]] = {k: [] for k in variants}
    cpus: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            wall, cpu = measure(fn)
            walls[name].append(wall)
            cpus[name].append(cpu)
    return {k: {"wall_s": stats(walls[k], 4), "cpu_s": stats(cpus[k], 4)} for k in variants}


def hash_in_thread(data: bytes) -> bytes:
    box: list[str] = []
    t = threading.Thread(target=lambda: box.append(hashlib.sha256(data).hexdigest()))
    t.start()
    stored = stream.seal(data, RECIPIENTS, level=1)
    hashlib.sha256(stored).hexdigest()
    t.join()
    return stored


def push_cpu(data: bytes, *, level: int = 1, threads: int = 0) -> int:
    """What push_wal spends CPU on: plain hash, zstd, age, stored hash; returns the stored size."""
    hashlib.sha256(data).hexdigest()
    stored = pyrage.encrypt(zstandard.ZstdCompressor(level=level, threads=threads).compress(data), RECIPIENTS)
    hashlib.sha256(stored).hexdigest()
    return len(stored)


def streamed(data: bytes) -> None:
    sha = hashlib.sha256(data)
    for chunk in stream.compress_encrypt(stream.CountingReader(_BytesReader(data)), RECIPIENTS, level=1, threads=0):
        sha.update(chunk)


class _BytesReader:
    def __init__(self, data: bytes) -> None:
        self.view, self.at = memoryview(data), 0

    def read(self, n: int = -1) -> bytes:
        end = len(self.view) if n < 0 else self.at + n
        out, self.at = bytes(self.view[self.at:end]), min(end, len(self.view))
        return out


def wal_part(segments: list[bytes], rounds: int) -> dict[str, object]:
    steps: dict[str, Callable[[], object]] = {}
    compressed = zstandard.ZstdCompressor(level=1).compress(segments[0])
    stored = pyrage.encrypt(compressed, RECIPIENTS)
    steps["sha256 plain (16 MiB)"] = lambda: [hashlib.sha256(s).digest() for s in segments]
    for level in (1, 3, -1, -3):
        steps[f"zstd level {level}"] = lambda lv=level: [zstandard.ZstdCompressor(level=lv).compress(s) for s in segments]
    steps["age of the level-1 output"] = lambda: [pyrage.encrypt(compressed, RECIPIENTS) for _ in segments]
    steps["sha256 stored"] = lambda: [hashlib.sha256(stored).digest() for _ in segments]
    per_step = {k: _per_segment(v, len(segments)) for k, v in ab(steps, rounds).items()}
    sizes = {level: sum(push_cpu(s, level=level) for s in segments) // len(segments) for level in (1, 3, -1, -3)}
    pushes = {
        "one-shot seal + hashes (shipped)": lambda: [push_cpu(s) for s in segments],
        "one-shot, zstd threads=2": lambda: [push_cpu(s, threads=2) for s in segments],
        "one-shot, plain hash in a thread": lambda: [hash_in_thread(s) for s in segments],
        "streaming compress_encrypt": lambda: [streamed(s) for s in segments],
        "one-shot, zstd level -1": lambda: [push_cpu(s, level=-1) for s in segments],
    }
    return {"per_segment_steps": per_step, "stored_bytes_by_level": sizes,
            "per_segment_push": {k: _per_segment(v, len(segments)) for k, v in ab(pushes, rounds).items()}}


def _per_segment(result: dict[str, dict[str, float]], n: int) -> dict[str, float]:
    return {"cpu_ms": round(result["cpu_s"]["median"] * 1000 / n, 1), "wall_ms": round(result["wall_s"]["median"] * 1000 / n, 1)}


def compress_encrypt_coalesced(source: object, read_size: int) -> list[int]:
    """compress_encrypt's worker with age's output gathered into 1 MiB hand-offs (the variant measured)."""
    q: queue.Queue = queue.Queue(maxsize=8)

    class Writer:
        def __init__(self) -> None:
            self.buf = bytearray()

        def write(self, data: bytes) -> int:
            self.buf += data
            if len(self.buf) >= 1 << 20:
                q.put(bytes(self.buf))
                self.buf.clear()
            return len(data)

        def flush(self) -> None:
            pass

    def work() -> None:
        writer = Writer()
        with zstandard.ZstdCompressor(level=3, threads=2).stream_reader(source, read_size=read_size) as compressed:
            pyrage.encrypt_io(compressed, writer, RECIPIENTS)
        q.put(bytes(writer.buf))
        q.put(None)

    threading.Thread(target=work, daemon=True).start()
    sha, sizes = hashlib.sha256(), []
    while (chunk := q.get()) is not None:
        sha.update(chunk)
        sizes.append(len(chunk))
    return sizes


def stream_part(tar: Path, rounds: int) -> dict[str, object]:
    def shipped() -> None:
        with open(tar, "rb", buffering=0) as f:
            sha = hashlib.sha256()
            for chunk in stream.compress_encrypt(stream.CountingReader(f), RECIPIENTS, level=3, threads=2):
                sha.update(chunk)

    def coalesced(read_size: int) -> Callable[[], object]:
        def run() -> None:
            with open(tar, "rb", buffering=0) as f:
                compress_encrypt_coalesced(stream.CountingReader(f), read_size)
        return run

    def cli() -> None:
        with open(tar, "rb") as f:
            subprocess.run(["zstd", "-q", "-T2", "-3", "-c"], stdin=f, stdout=subprocess.DEVNULL, check=True)

    variants = {"compress_encrypt as shipped (64 KiB hand-offs, 1 MiB reads)": shipped,
                "1 MiB hand-offs": coalesced(1 << 20), "1 MiB hand-offs, 4 MiB reads": coalesced(4 << 20)}
    if shutil.which("zstd"):
        variants["zstd -T2 -3 CLI alone (CPU: its child time)"] = cli
    result = ab(variants, rounds)
    if "zstd -T2 -3 CLI alone (CPU: its child time)" in variants:  # process_time misses children: use os.times
        times = []
        for _ in range(rounds):
            before = os.times()
            cli()
            after = os.times()
            times.append(after.children_user - before.children_user + after.children_system - before.children_system)
        result["zstd -T2 -3 CLI alone (CPU: its child time)"]["cpu_s"] = stats(times, 4)
    return {"input_bytes": tar.stat().st_size, "variants": result}


def base_tar(base: Path, scale: int) -> Path:
    out = base / "base.tar"
    with LocalCluster.create(base / "pg-bb", settings={"wal_level": "replica"}, tcp_trust=True) as cluster:
        subprocess.run([str(cluster.binaries.bin_dir / "pgbench"), "-i", "-q", "-s", str(scale), "-h", "127.0.0.1",
                        "-p", str(cluster.port), "-U", "postgres", "postgres"], check=True, capture_output=True)
        with open(out, "wb") as f:
            subprocess.run([str(cluster.binaries.bin_dir / "pg_basebackup"), "-d", cluster.dsn(), "-D", "-", "-Ft",
                            "-X", "none", "--checkpoint=fast"], stdout=f, stderr=subprocess.DEVNULL, check=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--segments", type=int, default=6)
    parser.add_argument("--scale", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    base = make_base_dir("drp-bench-cpu-")
    try:
        segments = [p.read_bytes() for p in make_segments(base, args.segments)]
        tar = base_tar(base, args.scale)
        result = {"wal": wal_part(segments, args.rounds), "stream": stream_part(tar, args.rounds),
                  "load_average": os.getloadavg(), "cpus": os.cpu_count()}
        print(json.dumps(result, indent=2))
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
