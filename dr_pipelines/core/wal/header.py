"""The long page header at the start of every WAL segment: whose cluster wrote it, and is it one at all.

PostgreSQL's xlog_internal.h (15; unchanged in 16 and 17): the first page of each segment starts
with XLogLongPageHeaderData, i.e. XLogPageHeaderData (xlp_magic uint16, xlp_info uint16, xlp_tli
uint32, xlp_pageaddr uint64, xlp_rem_len uint32: 20 bytes, MAXALIGNed to 24) followed by xlp_sysid
uint64, xlp_seg_size uint32 and xlp_xlog_blcksz uint32, all in the server's byte order
(little-endian on every platform we run). Checked against pg_control_system() on a real segment
(dr_pipelines_tests/test_wal_system.py).

The system identifier binds the archive to one cluster (core/wal/binding.py); the size and page
address prove that a file named like a segment is that segment, whole.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from dr_pipelines.core.errors import DrpError
from dr_pipelines.core.wal.names import segments_per_log

XLP_LONG_HEADER = 0x0002
_PAGE_HEADER = struct.Struct("<HHIQI")  # magic, info, tli, pageaddr, rem_len
_LONG_FIELDS = struct.Struct("<QII")  # sysid, seg_size, xlog_blcksz
LONG_FIELDS_OFFSET = 24  # MAXALIGN(sizeof(XLogPageHeaderData)) = MAXALIGN(20)
HEADER_BYTES = LONG_FIELDS_OFFSET + _LONG_FIELDS.size
MIN_SEGMENT_BYTES, MAX_SEGMENT_BYTES = 1 << 20, 1 << 30  # initdb --wal-segsize 1..1024 MB, powers of 2


class WalFileError(DrpError):
    """A file named like a WAL segment is not one (wrong size, no segment header, another segment's pages)."""

    exit_code = 2


@dataclass(frozen=True)
class SegmentHeader:
    magic: int
    timeline: int
    pageaddr: int  # LSN of the segment's first byte
    system_identifier: str  # as pg_control_system() prints it (a uint64 in decimal)
    segment_bytes: int
    block_bytes: int


def read_segment_header(data: bytes, name: str) -> SegmentHeader:
    """The header of segment ``name`` (or ``name.partial``), or WalFileError naming what is wrong with it."""
    fix = "archive_command must pass %p, the segment PostgreSQL just completed, unchanged"
    if len(data) < HEADER_BYTES:
        raise WalFileError(f"{name} is {len(data)} bytes: too short to be a WAL segment", fix=fix)
    magic, info, tli, pageaddr, _ = _PAGE_HEADER.unpack_from(data)
    sysid, seg_size, blcksz = _LONG_FIELDS.unpack_from(data, LONG_FIELDS_OFFSET)
    if not info & XLP_LONG_HEADER:
        raise WalFileError(f"{name} does not start with a WAL segment header (xlp_info {info:#06x})", fix=fix)
    if not _power_of_two(seg_size, MIN_SEGMENT_BYTES, MAX_SEGMENT_BYTES) or not _power_of_two(blcksz, 1024, 65536):
        raise WalFileError(f"{name} has an implausible segment header (segment size {seg_size}, page size {blcksz})",
                           fix=fix)
    if len(data) != seg_size:
        raise WalFileError(f"{name} is {len(data):,} bytes but its header says segments are {seg_size:,} bytes: "
                           "a truncated or padded copy", fix=fix)
    expected = _segment_start(name, seg_size)
    if pageaddr != expected:
        raise WalFileError(f"{name} holds the pages of another segment (starts at {_lsn(pageaddr)}, "
                           f"its name says {_lsn(expected)})", fix=fix)
    return SegmentHeader(magic, tli, pageaddr, str(sysid), seg_size, blcksz)


def _segment_start(name: str, seg_size: int) -> int:
    log, seg = int(name[8:16], 16), int(name[16:24], 16)
    return (log * segments_per_log(seg_size) + seg) * seg_size


def _power_of_two(value: int, low: int, high: int) -> bool:
    return low <= value <= high and value & (value - 1) == 0


def _lsn(value: int) -> str:
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"
