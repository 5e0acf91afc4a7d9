"""Data offsets added to a pipe-written custom archive equal what pg_dump writes to a seekable file."""

from __future__ import annotations

import subprocess
from pathlib import Path

from dr_pipelines.core.pg.binaries import find_pg_binaries
from dr_pipelines.core.pg.tools import client_tool
from dr_pipelines.core.restore.dump_offsets import OFFSET_NOT_SET, OFFSET_SET, add_data_offsets, data_offsets


def dump(dsn: str, target: Path, *, through_pipe: bool) -> Path:
    pg_dump = client_tool("pg_dump", find_pg_binaries().major)
    if through_pipe:  # what our backup does: stdout is a pipe, pg_dump cannot seek back
        proc = subprocess.run([pg_dump, "-Fc", "-Z0", f"--dbname={dsn}"], capture_output=True, check=True)
        target.write_bytes(proc.stdout)
    else:
        subprocess.run([pg_dump, "-Fc", "-Z0", f"--dbname={dsn}", "-f", str(target)], check=True)
    return target


def offsets(path: Path) -> tuple[dict[int, int], dict[int, int]]:
    with open(path, "rb") as f:
        _, fields, blocks = data_offsets(f)
    return {k: state for k, (_, state) in fields.items()}, blocks


def test_patched_pipe_dump_matches_a_seekable_dump(demo_db: str, tmp_path: Path) -> None:
    piped = dump(demo_db, tmp_path / "piped.dump", through_pipe=True)
    seekable = dump(demo_db, tmp_path / "seekable.dump", through_pipe=False)
    states, _ = offsets(piped)
    assert OFFSET_NOT_SET in states.values() and OFFSET_SET not in states.values()

    written = add_data_offsets(piped)
    assert written and written == sum(1 for s in states.values() if s == OFFSET_NOT_SET)
    assert offsets(piped) == offsets(seekable)  # same states, same block positions
    assert add_data_offsets(piped) == 0  # idempotent
    listing = subprocess.run([client_tool("pg_restore", find_pg_binaries().major), "--list", str(piped)], capture_output=True, text=True)
    assert listing.returncode == 0 and "TABLE DATA public patients" in listing.stdout


def test_unpatchable_files_are_left_untouched(demo_db: str, tmp_path: Path) -> None:
    not_archive = tmp_path / "notes.txt"
    not_archive.write_bytes(b"hello, not an archive")
    assert add_data_offsets(not_archive) is None
    assert not_archive.read_bytes() == b"hello, not an archive"

    truncated = dump(demo_db, tmp_path / "piped.dump", through_pipe=True)
    data = truncated.read_bytes()[:-1000]
    truncated.write_bytes(data)
    assert add_data_offsets(truncated) is None
    assert truncated.read_bytes() == data  # nothing written unless the whole file parsed
