"""core/stream.py's pipeline: its output is stock `age` + `zstd`, and its memory does not grow with the input."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from pyrage import x25519

from dr_pipelines.core.pg.cluster import LocalCluster
from dr_pipelines.core.stream import CountingReader, compress_encrypt, seal


def stock_decrypt(stored: Path, key_file: Path) -> bytes:
    """`age -d -i key stored | zstd -d`: the escape hatch docs/backups.md and docs/wal.md promise."""
    if missing := [t for t in ("age", "zstd") if shutil.which(t) is None]:
        pytest.skip(f"{missing} not installed (apt-get install age zstd)")
    age = subprocess.Popen(["age", "-d", "-i", str(key_file), str(stored)], stdout=subprocess.PIPE)
    plain = subprocess.run(["zstd", "-d", "-q", "-c"], stdin=age.stdout, capture_output=True, check=True).stdout
    assert age.wait() == 0
    return plain


@pytest.fixture
def key(tmp_path: Path) -> tuple[list[object], Path]:
    identity = x25519.Identity.generate()
    key_file = tmp_path / "key.txt"
    key_file.write_text(f"{identity}\n")
    return [identity.to_public()], key_file


def test_stock_tools_read_streamed_and_sealed_output(pg_cluster: LocalCluster, fresh_db: str, tmp_path: Path,
                                                     key: tuple[list[object], Path]) -> None:
    recipients, key_file = key
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute("CREATE TABLE t AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 100000) g")
    # Streamed (backups): pg_dump's stdout, as stream_command feeds it, level 3 with 2 zstd threads.
    dump = subprocess.Popen([str(pg_cluster.binaries.bin_dir / "pg_dump"), fresh_db], stdout=subprocess.PIPE)
    reader = CountingReader(dump.stdout, hash_it=True)
    streamed = tmp_path / "dump.sql.zst.age"
    streamed.write_bytes(b"".join(compress_encrypt(reader, recipients, level=3, threads=2)))
    assert dump.wait() == 0 and reader.bytes > 3 << 20
    plain = stock_decrypt(streamed, key_file)
    assert (len(plain), hashlib.sha256(plain).hexdigest()) == (reader.bytes, reader.sha256)

    # Sealed in one call (WAL): the server's current 16 MiB segment, at the WAL level.
    with psycopg.connect(pg_cluster.dsn(), autocommit=True) as conn:
        segment = conn.execute("SELECT pg_read_binary_file('pg_wal/' || pg_walfile_name(pg_current_wal_lsn()))"
                               ).fetchone()[0]
    assert len(segment) == 16 << 20
    sealed = tmp_path / "segment.zst.age"
    sealed.write_bytes(seal(segment, recipients, level=1))
    assert hashlib.sha256(stock_decrypt(sealed, key_file)).digest() == hashlib.sha256(segment).digest()


PEAK_RSS = r'''
import hashlib, random, resource, sys
from pyrage import x25519
from dr_pipelines.core.stream import compress_encrypt

class Source:
    """MB megabytes of poorly compressible bytes, made cheaply: zstd, age and the queue all carry volume."""
    def __init__(self, mb):
        self.left, self.pool = mb << 20, random.Random(1).randbytes(8 << 20)
    def read(self, n=-1):
        n = min(self.left, 1 << 20 if n < 0 else n)
        self.left -= n
        at = (self.left * 7919) % (len(self.pool) - n)
        return self.pool[at:at + n]

sha, size = hashlib.sha256(), 0
for chunk in compress_encrypt(Source(int(sys.argv[1])), [x25519.Identity.generate().to_public()], level=3, threads=2):
    sha.update(chunk)
    size += len(chunk)
print(size, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
'''


def test_peak_memory_is_flat_with_input_size() -> None:
    """~100 MB and ~500 MB of input through the pipeline: the peak RSS must not follow the input."""
    peaks = {}
    for mb in (100, 500):
        out = subprocess.run([sys.executable, "-c", PEAK_RSS, str(mb)], capture_output=True, text=True,
                             env={**os.environ}, check=True).stdout.split()
        stored, peaks[mb] = int(out[0]), int(out[1]) * 1024
        assert stored > mb << 19  # the output really carried the volume (the pool does not compress away)
    assert peaks[500] - peaks[100] < 24 << 20, f"peak RSS grew with the input: {peaks}"


PEAK_RSS_FRAMED = r'''
import io, random, resource, sys, tarfile, tempfile
from pyrage import x25519
from dr_pipelines.core.frames import FramedRead
from dr_pipelines.core.stream import compress_encrypt, decrypt_decompress

class TarSource:
    """A tar of MB megabytes in 3 MiB members (each framed on its own), made cheaply as Source above."""
    def __init__(self, mb):
        self.pool, self.parts = random.Random(1).randbytes(8 << 20), self._parts(mb)
        self.buffer = b""
    def _parts(self, mb):
        for i in range(mb // 3):
            info = tarfile.TarInfo(f"base/1/{16384 + i}")
            info.size = 3 << 20
            yield info.tobuf(tarfile.GNU_FORMAT)
            for j in range(3):
                at = ((i * 3 + j) * 7919 * 4096) % (len(self.pool) - (1 << 20))
                yield self.pool[at:at + (1 << 20)]
        yield bytes(1024)
    def read(self, n=-1):
        while len(self.buffer) < (1 << 20):
            part = next(self.parts, None)
            if part is None:
                break
            self.buffer += part
        data, self.buffer = self.buffer[:1 << 20], self.buffer[1 << 20:]
        return data

class Sink:
    def __init__(self):
        self.bytes = self.skipped = 0
    def write(self, data):
        self.bytes += len(data)
        return len(data)
    def skip(self, n):
        self.skipped += n

identity = x25519.Identity.generate()
table = []
with tempfile.TemporaryFile() as stored:
    for chunk in compress_encrypt(TarSource(int(sys.argv[1])), [identity.to_public()], level=3, threads=2,
                                  frame_table=table):
        stored.write(chunk)
    written = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    size = stored.tell()
    stored.seek(0)
    sink = Sink()
    decrypt_decompress(stored, sink, [identity], what="t", size=size,
                       framed=FramedRead(table, lambda name: int(name.rsplit("/", 1)[1]) % 2 == 1))
print(size, written, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, sink.bytes, sink.skipped, len(table))
'''


def test_peak_memory_of_framed_writes_and_reads_is_flat_with_input_size() -> None:
    """~99 MB and ~501 MB of tar framed, encrypted, then read back leaving half the files out: the peak RSS of
    either side must not follow the input, and the bytes read and skipped add up to the whole tar."""
    peaks = {}
    for mb in (99, 501):
        out = subprocess.run([sys.executable, "-c", PEAK_RSS_FRAMED, str(mb)], capture_output=True, text=True,
                             env={**os.environ}, check=True).stdout.split()
        stored, written, read, plain, skipped, frames = (int(v) for v in out)
        peaks[mb] = (written * 1024, read * 1024)
        assert stored > mb << 19 and frames == 2 * (mb // 3) + 2  # header, body per file; the trailer; the end
        assert plain + skipped == mb // 3 * ((3 << 20) + 512) + 1024 and skipped == (mb // 3) // 2 * (3 << 20)
    assert peaks[501][0] - peaks[99][0] < 24 << 20, f"peak RSS of the framed write grew with the input: {peaks}"
    assert peaks[501][1] - peaks[99][1] < 24 << 20, f"peak RSS of the framed read grew with the input: {peaks}"
