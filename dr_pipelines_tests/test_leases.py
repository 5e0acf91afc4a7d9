"""Lease folders (core/pg/leases.py): the folder of throwaway clusters spreads them over the filesystem."""

from __future__ import annotations

import fcntl
import os
import sys
from pathlib import Path

import pytest

from dr_pipelines.core.pg.leases import (
    CLUSTERS,
    FS_IOC_GETFLAGS,
    FS_TOPDIR_FL,
    spread_subdirectories,
    take_lease,
)


def inode_flags(path: Path) -> int | None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        flags = bytearray(8)
        fcntl.ioctl(fd, FS_IOC_GETFLAGS, flags, True)
        return int.from_bytes(flags[:4], sys.byteorder)
    except OSError:
        return None
    finally:
        os.close(fd)


def test_the_clusters_folder_is_a_top_directory_where_the_filesystem_knows_it(tmp_path: Path) -> None:
    """chattr +T: ext4 then puts each new lease folder in another block group than its deleted predecessor."""
    probe = tmp_path / "probe"
    probe.mkdir()
    spread_subdirectories(probe)
    if not sys.platform.startswith("linux") or not (inode_flags(probe) or 0) & FS_TOPDIR_FL:
        pytest.skip(f"the filesystem of {tmp_path} keeps no top-directory flag (ext4 does)")
    first = take_lease(tmp_path, CLUSTERS, "test")
    first.release()
    second = take_lease(tmp_path, CLUSTERS, "test")  # set once, kept
    assert (inode_flags(tmp_path / CLUSTERS) or 0) & FS_TOPDIR_FL
    assert not (inode_flags(second.path) or 0) & FS_TOPDIR_FL  # only the parent: a lease's own tree stays together
    second.release()
