"""Base backups back onto disk: one verified read (decrypt, decompress, SHA-256) streamed into a safe untar.

``extract_base_backup`` writes a data directory and never starts anything: recovery settings and
the server start belong to point-in-time recovery (core/restore/pitr.py). ``verify_base_backup``
runs PostgreSQL's ``pg_verifybackup`` against the ``backup_manifest`` the tar carried.

No plaintext tar is staged: a thread reads the object through ``read_verified`` into a pipe,
and ``tarfile`` (stream mode, the stdlib's ``data`` filter: no absolute or ``..`` paths, no links
or devices escaping the directory) unpacks it. The stored bytes' SHA-256 is only known at the
end, so a mismatch found then removes everything extracted: nothing readable is left behind.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from dr_pipelines.core import checkpoints
from dr_pipelines.core.backup.catalog import BackupEntry
from dr_pipelines.core.layout import backup_prefix
from dr_pipelines.core.pg.binaries import find_pg_binaries
from dr_pipelines.core.pg.cluster import give_to_server
from dr_pipelines.core.progress import Progress
from dr_pipelines.core.restore.guards import RestoreError
from dr_pipelines.core.storage import Storage
from dr_pipelines.core.verified_read import read_verified

TAR_BUFFER = 1 << 20
EXTRACTING_AFTER = 20  # tar members (a base backup has hundreds)


def extract_base_backup(storage: Storage, entry: BackupEntry, identities: Sequence[object], data_dir: Path, *,
                        progress: Progress | None = None) -> None:
    """Unpack base backup ``entry`` into ``data_dir`` (0700; created, or an empty directory).

    backup_manifest stays in data_dir (for pg_verifybackup). On any failure (a damaged object,
    a wrong key, an unsafe member) data_dir is removed (emptied if it existed before).
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
        _untar_verified(storage, key, obj.bytes, obj.sha256, identities, data_dir, progress)
        give_to_server(data_dir)  # the tar's data filter sets no owner: the files are ours
    except BaseException:
        if created:
            shutil.rmtree(data_dir, ignore_errors=True)
        else:
            for child in data_dir.iterdir():
                shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
        raise


def _untar_verified(storage: Storage, key: str, size: int, sha256: str, identities: Sequence[object], data_dir: Path,
                    progress: Progress | None) -> None:
    read_fd, write_fd = os.pipe()
    failure: list[BaseException] = []

    def feed() -> None:
        try:
            with os.fdopen(write_fd, "wb") as out:
                read_verified(storage, key, out, size=size, sha256=sha256, decrypt=True, identities=identities,
                              progress=(lambda n: progress("extract", n, size)) if progress else None)
        except BaseException as exc:  # noqa: BLE001 - handed to the extracting thread
            failure.append(exc)

    feeder = threading.Thread(target=feed, name="base-backup-read", daemon=True)
    feeder.start()
    untar_error: BaseException | None = None
    with os.fdopen(read_fd, "rb") as pipe:
        try:
            with tarfile.open(fileobj=pipe, mode="r|", bufsize=TAR_BUFFER) as tar:
                tar.extractall(data_dir, filter=_data_filter_passing_checkpoint())
            while pipe.read(TAR_BUFFER):  # the zero blocks after the archive: the feeder must reach the end to hash it
                pass
        except BaseException as exc:  # noqa: BLE001 - a damaged object explains a broken tar: decide after the join
            untar_error = exc
    feeder.join()
    real = [f for f in failure if not isinstance(f, BrokenPipeError)]  # a closed pipe is our own stop
    if real:
        raise real[0]
    if isinstance(untar_error, tarfile.TarError):
        raise RestoreError(f"cannot unpack {storage.url}/{key}: {untar_error}",
                           fix="the base backup holds an unsafe or damaged tar member: use another backup")
    if untar_error is not None:
        raise untar_error


def _data_filter_passing_checkpoint() -> Callable[[tarfile.TarInfo, str], tarfile.TarInfo | None]:
    """tarfile's ``data`` filter, passing checkpoint 'base-extracting' once EXTRACTING_AFTER members are out
    (half-extracted: where crash tests kill -9 a restore)."""
    seen = 0

    def check(member: tarfile.TarInfo, path: str) -> tarfile.TarInfo | None:
        nonlocal seen
        seen += 1
        if seen == EXTRACTING_AFTER:
            checkpoints.reached("base-extracting")
        return tarfile.data_filter(member, path)
    return check


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
