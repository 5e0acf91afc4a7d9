"""Base backups back onto disk: one verified read (decrypt, decompress, SHA-256) streamed into a safe untar.

``extract_base_backup`` writes a data directory and never starts anything: recovery settings and
the server start belong to point-in-time recovery (core/restore/pitr.py). ``verify_base_backup``
runs PostgreSQL's ``pg_verifybackup`` against the ``backup_manifest`` the tar carried.

No plaintext tar is staged: ``read_verified`` writes the decrypted, decompressed stream straight
into ``SafeUntar`` (core/restore/untar.py: regular files and directories only, no absolute or ``..``
paths, no links or devices), which unpacks it as it comes. The stored bytes' SHA-256 is only known
at the end, so a mismatch found then removes everything extracted: nothing readable is left behind.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

from dr_pipelines.core import checkpoints
from dr_pipelines.core.backup.catalog import BackupEntry
from dr_pipelines.core.frames import KEY as FRAMES_KEY
from dr_pipelines.core.frames import FramedRead, Skipped
from dr_pipelines.core.layout import backup_prefix
from dr_pipelines.core.pg.binaries import find_pg_binaries
from dr_pipelines.core.pg.cluster import give_to_server
from dr_pipelines.core.progress import Progress
from dr_pipelines.core.restore.guards import RestoreError
from dr_pipelines.core.restore.untar import SafeUntar, TarFormatError
from dr_pipelines.core.storage import Storage
from dr_pipelines.core.stream import writer_chunks
from dr_pipelines.core.verified_read import read_verified

EXTRACTING_AFTER = 20  # tar members (a base backup has hundreds)
_ABANDON: ContextVar[Callable[[], None] | None] = ContextVar("drp_abandon_extraction", default=None)


@contextmanager
def abandon_extraction_if(check: Callable[[], None]) -> Iterator[None]:
    """While the block runs, extractions in this thread call ``check`` after every tar member; an
    exception it raises abandons the extraction (which removes what it wrote, as for any failure).

    A point-in-time restore checks its WAL while the base backup is extracted (core/restore/pitr.py):
    a gap found then stops a long extraction early. A context variable, not a parameter, so callers
    that wrap the extraction (verification's pg_verifybackup) need not pass it through.
    """
    token = _ABANDON.set(check)
    try:
        yield
    finally:
        _ABANDON.reset(token)


def extract_base_backup(storage: Storage, entry: BackupEntry, identities: Sequence[object], data_dir: Path, *,
                        progress: Progress | None = None, durable: bool = True,
                        leave_out: Callable[[str], bool] | None = None) -> None:
    """Unpack base backup ``entry`` into ``data_dir`` (0700; created, or an empty directory).

    backup_manifest stays in data_dir (for pg_verifybackup). On any failure (a damaged object,
    a wrong key, an unsafe member) data_dir is removed (emptied if it existed before).
    ``durable`` False: files are not flushed as they are written (a throwaway running with fsync off).
    ``leave_out``: files (relative names) created empty, their bytes dropped (core/restore/partial.py).
    """
    manifest = entry.manifest
    if manifest is None or entry.kind != "base":
        raise RestoreError(f"backup {entry.id} is not a base backup ({manifest.kind if manifest else 'no manifest'})",
                           fix="extract a base backup (`drp backup list` shows each backup's kind); logical backups "
                               "are restored with `drp restore`")
    obj = manifest.object("base")
    data_dir = Path(data_dir)
    if data_dir.exists() and (not data_dir.is_dir() or any(data_dir.iterdir())):
        raise RestoreError(f"{data_dir} exists and is not an empty directory",
                           fix="give a new or empty directory for the data directory")
    created = not data_dir.exists()
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(data_dir, 0o700)
    key = f"{backup_prefix(entry.id)}/{obj.key}"
    try:
        table = (manifest.extra or {}).get(FRAMES_KEY)
        framed = FramedRead(table, leave_out) if table else None
        _untar_verified(storage, key, obj.bytes, obj.sha256, identities, data_dir, progress, durable=durable,
                        leave_out=leave_out, framed=framed)
        give_to_server(data_dir)  # the untar sets no owner: the files are ours
    except BaseException:
        if created:
            shutil.rmtree(data_dir, ignore_errors=True)
        else:
            for child in data_dir.iterdir():
                shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
        raise


def _untar_verified(storage: Storage, key: str, size: int, sha256: str, identities: Sequence[object], data_dir: Path,
                    progress: Progress | None, *, durable: bool = True,
                    leave_out: Callable[[str], bool] | None = None, framed: FramedRead | None = None) -> None:
    """The verified read on a thread (``writer_chunks``), the untar here: decryption and decompression (C and
    Rust, the GIL released) overlap the writes (``os.write``, also released) on a second core: 2.0 -> 1.6 s for
    1.1 GB here. The abandon check and crash-test checkpoints stay in this thread (the untar's); a damaged object
    raises here after its last chunk, and a refused member cancels the read."""
    untar = SafeUntar(data_dir, on_member=_checkpoint_while_extracting, durable=durable, leave_out=leave_out)
    report = (lambda n: progress("extract", n, size)) if progress else None
    try:
        for chunk in writer_chunks(lambda out: read_verified(storage, key, out, size=size, sha256=sha256, decrypt=True,
                                                             identities=identities, progress=report,
                                                             framed=framed),
                                   name="drp-base-read"):
            if isinstance(chunk, Skipped):
                untar.skip(chunk.n)  # a left-out file's frame, never decrypted (core/frames.py)
            else:
                untar.write(chunk)
        untar.finish()
    except TarFormatError as exc:
        raise RestoreError(f"cannot unpack {storage.url}/{key}: {exc}",
                           fix="the base backup holds an unsafe or damaged tar member: use another backup") from None
    finally:
        untar.close()



def _checkpoint_while_extracting(members: int) -> None:
    """Checkpoint 'base-extracting' once EXTRACTING_AFTER members are out (half-extracted: where crash
    tests kill -9 a restore); the abandon_extraction_if check after every member."""
    if members == EXTRACTING_AFTER:
        checkpoints.reached("base-extracting")
    check = _ABANDON.get()
    if check is not None:
        check()

def verify_base_backup(data_dir: Path, wal_dir: Path | None = None) -> list[str]:
    """pg_verifybackup on an extracted base backup: the problems it reports (empty: the files match backup_manifest).

    With ``wal_dir`` (the segments wal_start..wal_stop fetched from the archive) the WAL is parsed
    too; without it, ``--no-parse-wal``. Run it before recovery changes any file.
    """
    tool = find_pg_binaries().tool("pg_verifybackup")
    cmd = [tool, "--quiet", *(["--wal-directory", str(wal_dir)] if wal_dir else ["--no-parse-wal"]), str(data_dir)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    if result.returncode == 0:
        return []
    lines = [line.removeprefix("pg_verifybackup: ").removeprefix("error: ").strip()
             for line in (result.stderr + result.stdout).splitlines() if line.strip()]
    return lines or [f"pg_verifybackup failed (exit {result.returncode})"]
