"""Leases: throwaway clusters and staged plaintext that a killed process cannot leave behind.

Throwaway clusters and staged (decrypted) dumps hold health data. Each lives in a leased
folder ``<work_dir>/<kind>/<purpose>-<hex>/`` whose ``owner.json`` names the owning process
(pid + start time + host); ``sweep_leftovers``, run at the start of every command that makes
them, stops and deletes the clusters (and the staged plaintext, ``<work_dir>/staging/``) of
owners that died (kill -9) before removing them. A lease may name a ``data_dir`` outside it: a
cluster we made there (its passfile says so), or a directory the lease fills from empty
(``fills_data_dir``: a base backup being extracted for a point-in-time restore, before any passfile).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import secrets
import shutil
import socket
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from dr_pipelines.core.pg.cluster import PASSFILE, LocalCluster, write_private

OWNER_FILE = "owner.json"
CLUSTERS, STAGING = "clusters", "staging"  # lease kinds under the work dir
FILLS_DATA_DIR = "fills_data_dir"  # lease field: data_dir was new or empty when taken, all it holds is ours
LEASE_GRACE_S = 60  # a lease folder without owner file younger than this is being created, not dead
FS_IOC_GETFLAGS, FS_IOC_SETFLAGS = 0x80086601, 0x40086602  # <linux/fs.h>, 64-bit
FS_TOPDIR_FL = 0x00020000

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Lease:
    """A scratch folder ``<work_dir>/<kind>/<purpose>-<hex>/`` whose owner.json names the process owning it."""

    path: Path

    def release(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def take_lease(work_dir: Path | str, kind: str, purpose: str, *, mode: int = 0o700, **extra: object) -> Lease:
    """A new leased folder owned by this process (pid + process start time, so a reused pid is not mistaken)."""
    root = Path(work_dir).resolve() / kind
    root.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(PermissionError):
        root.chmod(0o711)  # the postgres OS user traverses it when we are root; nobody lists it
    spread_subdirectories(root)
    path = root / f"{purpose}-{secrets.token_hex(4)}"
    path.mkdir(mode=mode)
    path.chmod(mode)  # mkdir's mode is masked by the umask
    owner = {"pid": os.getpid(), "started": _process_start(os.getpid()), "host": socket.gethostname(), "purpose": purpose,
             "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **extra}
    write_private(path / OWNER_FILE, json.dumps(owner))
    return Lease(path)


def spread_subdirectories(root: Path) -> None:
    """Mark ``root`` as the top of unrelated directory trees (``chattr +T``, FS_TOPDIR_FL), where the filesystem
    knows the flag (ext4; others refuse it and nothing changes).

    Each lease folder is its own tree, made right after an earlier one was deleted (a tenant restore removes
    its 1 GB throwaway; the next one extracts ~1,000 files). ext4 puts a new folder's inodes in its parent's
    block group and skips every inode freed there in the last minutes (``recently_deleted``): each file created
    walked over the whole deleted cluster's inodes, ~20% of an extraction's CPU in perf (docs/benchmarks.md).
    Under a top directory the Orlov allocator spreads new folders over other groups instead.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        flags = bytearray(8)  # the kernel reads and writes an int; the request's size field says long
        fcntl.ioctl(fd, FS_IOC_GETFLAGS, flags, True)
        current = int.from_bytes(flags[:4], sys.byteorder)
        if not current & FS_TOPDIR_FL:
            fcntl.ioctl(fd, FS_IOC_SETFLAGS, (current | FS_TOPDIR_FL).to_bytes(4, sys.byteorder) + bytes(4))
    except OSError:
        pass  # not ext4 (ENOTTY, EOPNOTSUPP) or not ours (EPERM): only slower
    finally:
        os.close(fd)


@contextlib.contextmanager
def staging_dir(work_dir: Path | str, purpose: str) -> Iterator[Path]:
    """A private (0700) folder for decrypted plaintext, deleted when the block ends and swept if its owner dies."""
    lease = take_lease(work_dir, STAGING, purpose)
    try:
        yield lease.path
    finally:
        lease.release()


@contextlib.contextmanager
def throwaway_cluster(work_dir: Path | str, purpose: str, *, settings: Mapping[str, str] | None = None
                      ) -> Iterator[LocalCluster]:
    """A password-protected cluster under a lease in work_dir, removed when the block ends (swept if we die)."""
    lease = take_lease(work_dir, CLUSTERS, purpose, mode=0o711)  # the server's OS user must traverse it
    try:
        cluster = LocalCluster.create(lease.path / "data", settings=settings)
        try:
            yield cluster
        finally:
            cluster.remove()
    finally:
        lease.release()


@contextlib.contextmanager
def leased_cluster(work_dir: Path | str, purpose: str, *, data_dir: Path | None = None, port: int | None = None,
                   settings: Mapping[str, str] | None = None) -> Iterator[LocalCluster]:
    """A password-protected cluster, leased while the block runs (so a killed run's is swept).

    Without `data_dir`: a throwaway cluster under the lease, removed when the block ends.
    With `data_dir` (a --new-cluster restore): the user's new cluster there, removed if the
    block fails, else handed over when it ends (the lease names it; only the lease goes).
    """
    if data_dir is None:
        with throwaway_cluster(work_dir, purpose, settings=settings) as cluster:
            yield cluster
        return
    data_dir = Path(data_dir).resolve()
    created_dir = not data_dir.exists()
    cluster = LocalCluster.create(data_dir, port=port, settings=settings)  # refuses a non-empty directory
    try:
        lease = take_lease(work_dir, CLUSTERS, purpose, data_dir=str(data_dir), created_dir=created_dir)
        try:
            yield cluster
        finally:
            lease.release()
    except BaseException:
        cluster.remove(keep_dir=not created_dir)
        raise


def sweep_leftovers(work_dir: Path | str) -> list[str]:
    """Stop and delete the throwaway clusters, and delete the staged plaintext, of processes that are gone.

    Called at the start of every command that makes them (a kill -9 runs no cleanup). Returns
    one line per removed folder (also logged), for the command to report.
    """
    removed: list[str] = []
    for kind in (CLUSTERS, STAGING):
        root = Path(work_dir).resolve() / kind
        for path in sorted(root.iterdir()) if root.is_dir() else []:
            owner = _read_owner(path)
            if owner is None and time.time() - path.stat().st_mtime < LEASE_GRACE_S:
                continue  # being created right now
            if owner is not None and _alive(owner):
                continue
            owner = owner or {}
            line = f"{kind}/{path.name} of {owner.get('purpose', 'an unknown command')} (pid {owner.get('pid', '?')}, gone)"
            data_dir = Path(owner["data_dir"]) if "data_dir" in owner else path / "data"
            # Only a cluster we made (its passfile), or a directory the lease filled from empty (an extraction
            # killed before the passfile existed): never a user's folder. A folder that existed is emptied, not deleted.
            ours = (data_dir / PASSFILE).exists() or (owner.get(FILLS_DATA_DIR) and data_dir.is_dir())
            if kind == CLUSTERS and ours:
                keep = not owner.get("created_dir", True)
                LocalCluster(data_dir=data_dir, port=0).remove(keep_dir=keep)
                line += f": server stopped, {data_dir} {'emptied' if keep else 'deleted'}"
            shutil.rmtree(path, ignore_errors=True)
            log.warning("removed leftover %s", line)
            removed.append(line)
    return removed


def _read_owner(path: Path) -> dict | None:  # type: ignore[type-arg]
    try:
        return json.loads((path / OWNER_FILE).read_text())
    except (OSError, ValueError):
        return None


def _process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (/proc/<pid>/stat field 22); None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()  # the command name may hold spaces and parentheses
    return None if fields[0] == "Z" else fields[19]  # a zombie is dead, only not reaped yet


def _alive(owner: Mapping[str, object]) -> bool:
    """Whether the owning process still runs; a lease from another host (a shared work dir) counts as alive."""
    if owner.get("host", socket.gethostname()) != socket.gethostname():
        return True  # its pid means nothing here
    pid = owner.get("pid")
    if not isinstance(pid, int):
        return False
    if not Path("/proc/self/stat").exists():  # no procfs: the pid alone has to do
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return _process_start(pid) == owner.get("started")
