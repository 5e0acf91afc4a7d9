"""Framed base backups (core/frames.py) and the chunked age reader under them (core/age_chunks.py).

A synthetic data directory's tar, compressed and encrypted as a base backup is: the stock tools still read it
whole; large files get frames of their own; a reader that leaves files out passes over their chunks without
decrypting them (a byte flipped there goes unnoticed by the decryption, and is caught by every other read);
chunks moved, swapped, cut or extended, another key, a damaged header or frame table are refused.
"""

from __future__ import annotations

import io
import os
import random
from itertools import pairwise
from pathlib import Path

import pyrage
import pytest
import zstandard
from pyrage import x25519

from dr_pipelines.core import frames
from dr_pipelines.core.age_chunks import CHUNK, SEALED, AgeChunks, plaintext, x25519_keys
from dr_pipelines.core.crypto import DecryptionError, WrongKeyError
from dr_pipelines.core.frames import FRAME_ALONE, FRAME_MAX, FramedRead
from dr_pipelines.core.restore.untar import SafeUntar, TarFormatError
from dr_pipelines.core.stream import compress_encrypt, decrypt_decompress
from dr_pipelines_tests.support.backup import tar_of
from dr_pipelines_tests.test_stream import stock_decrypt

LONG = "base/16384/" + "é" * 60 + "_long_name_past_the_ustar_field"  # a GNU long-name header, and not ASCII


def _pages(n: int, seed: int) -> bytes:
    """n bytes that compress like table pages: runs of repeated tuples and some noise."""
    rng = random.Random(seed)
    row = rng.randbytes(40)
    return b"".join(row * 180 + rng.randbytes(800) for _ in range(n // 8000 + 1))[:n]


FILES = {
    "PG_VERSION": b"15\n",
    "global/pg_control": _pages(8192, 1),
    "base/16384/16385": _pages(3 * FRAME_ALONE + 12345, 2),  # a table
    "base/16384/16390": _pages(2 * FRAME_ALONE + 512, 3),  # an index left out
    "base/16384/16390_fsm": _pages(24576, 4),  # small: in a shared frame, read past by the untar
    "base/16384/16391": _pages(FRAME_ALONE, 5),  # exactly the threshold: a frame of its own, left out too
    "base/16384/16392": _pages(FRAME_ALONE - 1, 6),  # just under: shares a frame
    LONG: _pages(FRAME_ALONE + 7, 7),
    "base/16384/16393": _pages(2 * FRAME_MAX + 777, 8),  # left out: frames of FRAME_MAX, all named after it
    "backup_manifest": b"{}\n",
}
LEFT_OUT = {"base/16384/16390", "base/16384/16390_fsm", "base/16384/16391", LONG, "base/16384/16393"}


def _tar() -> bytes:
    return tar_of(FILES)


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, bytes, list, list[object], Path]:
    """(plain tar, stored object, frame table, identities, key file)."""
    identity = x25519.Identity.generate()
    key_file = tmp_path_factory.mktemp("key") / "key.txt"
    key_file.write_text(f"{identity}\n")
    plain, table = _tar(), []
    obj = b"".join(compress_encrypt(io.BytesIO(plain), [identity.to_public()], level=3, threads=2, frame_table=table))
    return plain, obj, table, [identity], key_file


def _extract(obj: bytes, table: list | None, identities: list[object], root: Path, leave_out=None) -> SafeUntar:
    """decrypt_decompress into SafeUntar, the way base extraction does (Skipped -> untar.skip)."""
    root.mkdir()
    untar = SafeUntar(root, durable=False, leave_out=leave_out)

    class Sink:
        def write(self, data: bytes) -> int:
            return untar.write(data)

        def skip(self, n: int) -> None:
            untar.skip(n)

    framed = FramedRead(table, leave_out) if table is not None else None
    try:
        decrypt_decompress(io.BytesIO(obj), Sink(), identities, what="test", size=len(obj), framed=framed)  # type: ignore[arg-type]
        untar.finish()
    finally:
        untar.close()
    return untar


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_a_framed_object_is_plain_age_and_zstd_for_the_stock_tools(stored, tmp_path: Path) -> None:
    plain, obj, _, _, key_file = stored
    (tmp_path / "base.tar.zst.age").write_bytes(obj)
    assert stock_decrypt(tmp_path / "base.tar.zst.age", key_file) == plain


def test_large_files_get_frames_of_their_own(stored) -> None:
    plain, obj, table, _, _ = stored
    named = {name for _, _, name in table if name}
    assert named == {n for n, d in FILES.items() if len(d) >= FRAME_ALONE}
    assert table[0] == [0, 0, None] and table[-1][0] == len(plain)
    bodies: dict[str, bytes] = {}
    for (p0, _, name), (p1, _, _) in pairwise(table):
        assert p1 - p0 <= FRAME_MAX
        if name:
            bodies[name] = bodies.get(name, b"") + plain[p0:p1]
    assert bodies == {n: d for n, d in FILES.items() if len(d) >= FRAME_ALONE}  # named frames: exactly the body
    assert sum(1 for _, _, name in table if name == "base/16384/16393") == 3


def test_frames_decompress_alone_to_their_spans(stored) -> None:
    plain, obj, table, identities, _ = stored
    compressed = pyrage.decrypt(obj, identities)
    assert table[-1][1] == len(compressed)
    for (p0, c0, _), (p1, c1, _) in pairwise(table):
        frame = zstandard.ZstdDecompressor().decompressobj()
        assert frame.decompress(compressed[c0:c1]) == plain[p0:p1] and frame.eof


def test_a_partial_read_writes_the_wanted_files_and_leaves_the_others_empty(stored, tmp_path: Path) -> None:
    _, obj, table, identities, _ = stored
    untar = _extract(obj, table, identities, tmp_path / "out", leave_out=LEFT_OUT.__contains__)
    assert _tree(tmp_path / "out") == {n: (b"" if n in LEFT_OUT else d) for n, d in FILES.items()}
    assert untar.left_out == sum(len(FILES[n]) for n in LEFT_OUT)
    whole = _extract(obj, table, identities, tmp_path / "whole")  # the table, nothing left out
    assert _tree(tmp_path / "whole") == FILES and whole.left_out == 0
    _extract(obj, None, identities, tmp_path / "untabled")  # no table: one stream
    assert _tree(tmp_path / "untabled") == FILES


def _payload_start(obj: bytes) -> int:
    """Where the sealed chunks begin: after the header's MAC line and the 16-byte payload nonce."""
    return obj.index(b"\n", obj.index(b"\n--- ") + 1) + 1 + 16


def test_a_frame_past_the_one_shot_size_is_streamed(stored, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Frames larger than ONE_SHOT_MAX (none this drp writes) are decompressed as a stream: the same files."""
    _, obj, table, identities, _ = stored
    monkeypatch.setattr(frames, "ONE_SHOT_MAX", 1000)
    _extract(obj, table, identities, tmp_path / "out", leave_out=LEFT_OUT.__contains__)
    assert _tree(tmp_path / "out") == {n: (b"" if n in LEFT_OUT else d) for n, d in FILES.items()}


def _chunk_of(obj: bytes, table: list, name: str) -> int:
    """The stored offset of a byte in the middle of a sealed chunk that lies wholly inside ``name``'s frame."""
    start, end = next((c0, c1) for (_, c0, n), (_, c1, _) in pairwise(table) if n == name)
    index = -(-start // CHUNK)  # the first chunk starting inside the frame
    assert (index + 1) * CHUNK <= end, "the frame holds a whole chunk"
    return _payload_start(obj) + index * SEALED + SEALED // 2


def test_a_left_out_files_chunks_are_never_decrypted(stored, tmp_path: Path) -> None:
    """A byte flipped inside a chunk of a left-out file: the partial read never opens that chunk and succeeds;
    a whole read fails authentication on it (and read_verified's hash check catches it either way)."""
    _, obj, table, identities, _ = stored
    damaged = bytearray(obj)
    damaged[_chunk_of(obj, table, "base/16384/16390")] ^= 0x40
    _extract(bytes(damaged), table, identities, tmp_path / "partial", leave_out=LEFT_OUT.__contains__)
    with pytest.raises(DecryptionError, match="authentication failed"):
        _extract(bytes(damaged), table, identities, tmp_path / "whole")


def _sealed_chunks(obj: bytes) -> tuple[bytes, list[bytes]]:
    """(header with the payload nonce, the sealed chunks)."""
    end = _payload_start(obj)
    payload = obj[end:]
    return obj[:end], [payload[i:i + SEALED] for i in range(0, len(payload), SEALED)]


@pytest.mark.parametrize("change", ["swap", "drop-middle", "drop-last", "truncate", "extend", "flip-tag"])
def test_chunks_moved_dropped_cut_or_extended_are_refused(stored, change: str) -> None:
    plain, obj, _, identities, _ = stored
    header, chunks = _sealed_chunks(obj)
    if change == "swap":
        chunks[1], chunks[2] = chunks[2], chunks[1]
    elif change == "drop-middle":
        del chunks[3]
    elif change == "drop-last":  # cut at a chunk boundary: the new last chunk is not flagged last
        del chunks[-1]
    elif change == "truncate":
        chunks[-1] = chunks[-1][:-5]
    elif change == "extend":
        chunks.append(chunks[1])
    else:
        chunks[0] = chunks[0][:-1] + bytes([chunks[0][-1] ^ 1])
    forged = header + b"".join(chunks)
    with pytest.raises(DecryptionError, match="authentication failed|past its last chunk"):
        b"".join(plaintext(AgeChunks(io.BytesIO(forged), x25519_keys(identities), len(forged), what="t")))


def test_another_key_a_damaged_header_or_a_wrong_size_are_refused(stored) -> None:
    _, obj, _, identities, _ = stored
    keys = x25519_keys(identities)
    with pytest.raises(WrongKeyError, match="no identity matches") as wrong:
        AgeChunks(io.BytesIO(obj), x25519_keys([x25519.Identity.generate()]), len(obj), what="t")
    assert "fix:" in str(wrong.value)
    share = obj.index(b"-> X25519 ") + len(b"-> X25519 ") + 5
    for at, match in ((share, "no identity matches|malformed"), (obj.index(b"--- ") + 6, "MAC"), (3, "not an age file")):
        damaged = bytearray(obj)
        damaged[at] = ord("A") if damaged[at] != ord("A") else ord("B")
        with pytest.raises(DecryptionError, match=match):
            AgeChunks(io.BytesIO(bytes(damaged)), keys, len(obj), what="t")
    for size in (len(obj) - 1, len(obj) + 1):  # the manifest's size is not the object's
        with pytest.raises(DecryptionError, match="authentication failed"):
            b"".join(plaintext(AgeChunks(io.BytesIO(obj), keys, size, what="t")))


@pytest.mark.parametrize("n", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 1_000_003])
def test_the_chunked_reader_decrypts_what_pyrage_encrypts(n: int) -> None:
    identities = [x25519.Identity.generate(), x25519.Identity.generate()]
    data = os.urandom(n)
    obj = pyrage.encrypt(data, [i.to_public() for i in identities])
    chunks = AgeChunks(io.BytesIO(obj), x25519_keys(identities[1:]), len(obj), what="t")
    assert b"".join(plaintext(chunks)) == data and chunks.plain_size == n


def test_a_frame_table_that_disagrees_with_the_object_is_refused(stored, tmp_path: Path) -> None:
    _, obj, table, identities, _ = stored
    # a frame of small files named after a left-out file: the untar is not inside that file's body
    small = next(i for i, (_, _, name) in enumerate(table) if name is None and 0 < i < len(table) - 1)
    renamed = [list(e) for e in table]
    renamed[small][2] = "base/16384/16390"
    with pytest.raises(TarFormatError, match="frame table does not match"):
        _extract(obj, renamed, identities, tmp_path / "renamed", leave_out=LEFT_OUT.__contains__)
    shifted = [list(e) for e in table]
    shifted[2][1] += 1
    with pytest.raises(DecryptionError, match="frame|zstd"):
        _extract(obj, shifted, identities, tmp_path / "shifted")
    short = [list(e) for e in table[:-1]]
    with pytest.raises(DecryptionError, match="frame table does not match"):
        _extract(obj, short, identities, tmp_path / "short")


def test_a_skip_outside_a_left_out_body_is_refused(tmp_path: Path) -> None:
    untar = SafeUntar(tmp_path, durable=False, leave_out=lambda name: name == "gone")
    tar = _tar()
    untar.write(tar[:512])  # PG_VERSION's header: a wanted file
    with pytest.raises(TarFormatError, match="outside the body of a left-out file"):
        untar.skip(3)
    untar.close()
