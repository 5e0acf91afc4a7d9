"""The repository layout: every prefix and object name drp writes to storage, and the one id generator.

One module names the layout (as pgBackRest's ``src/storage/helper.h`` does), so a reader
can see the whole repository at a glance and no two features can drift apart on a name:

    backups/SOURCE.json                         the one source database this prefix belongs to
    backups/<backup id>/manifest.json           written last: no manifest, no backup
    backups/<backup id>/database.dump.zst.age   pg_dump custom format, sealed (core/stream.py)
    backups/<backup id>/globals.sql.zst.age     pg_dumpall --globals-only, sealed
    backups/<backup id>/base.tar.zst.age        base backup: pg_basebackup -Ft -X none (backup_manifest inside), sealed
    backups/<backup id>/pin.json                legal hold: never pruned
    backups/<backup id>/verification.json       the last verification restore's verdict
    attempts/<backup id>.json                   every backup attempt (success rate)
    exports/<export id>/…, manifest.json        tenant exports (drp export)
    analytics/<day>/<export id>/…               the daily analytics export (Dagster)
    archives/<table>/tenant=<t>/month=<YYYY-MM>/<segment id>/
        rows.parquet[.zst.age], kept.json[.zst.age], manifest.json   data-retention archives
    drills/<YYYY-MM>/report.md, report.json     restore drill reports (JSON last)
    wal/<timeline>/<segment>.zst.age[.json]     the WAL archive (core/wal/names.py maps names to keys)
    wal/<timeline>.history.zst.age, wal/events/ timeline histories; archiver events
    wal/SYSTEM.json                             the one cluster (system identifier) whose WAL the archive holds
    wal/restore-points/<name>.json              named restore points (drp wal restore-point): name, LSN, time, timeline

Ids sort by time and are unique across hosts: ``20261127T180102.123Z-3fa9``.
"""

from __future__ import annotations

import secrets
from datetime import UTC, date, datetime
from urllib.parse import quote

MANIFEST_NAME = "manifest.json"

BACKUPS = "backups"
SOURCE_NAME = "SOURCE.json"  # {"system_identifier", "database", "server", "claimed_at"}
PIN_NAME = "pin.json"
VERIFICATION_NAME = "verification.json"  # written by verification restores: {"passed": bool, ...}
DATABASE_OBJECT = "database.dump.zst.age"  # pg_dump --format=custom, zstd, age
GLOBALS_OBJECT = "globals.sql.zst.age"  # pg_dumpall --globals-only, zstd, age
BASE_OBJECT = "base.tar.zst.age"  # pg_basebackup -D - -Ft -X none (one tar, PostgreSQL's backup_manifest inside), zstd, age

ATTEMPTS = "attempts"
EXPORTS = "exports"
ANALYTICS = "analytics"

ARCHIVES = "archives"
DATA_NAME = "rows.parquet"
KEPT_NAME = "kept.json"
SEALED = ".zst.age"  # suffix of an age-encrypted (zstd inside) object

DRILLS = "drills"
DRILL_REPORT_NAME = "report.json"  # written last: the JSON is what status reads
DRILL_MARKDOWN_NAME = "report.md"

WAL = "wal"  # WAL segments and histories under wal/, their keys built in core/wal/names.py
WAL_SYSTEM_NAME = "SYSTEM.json"  # {"system_identifier", "claimed_at", "first_segment"}: written by the first push
RESTORE_POINTS = "restore-points"  # under wal/: one JSON per named restore point (core/wal/restore_points.py)


def new_id(now: datetime | None = None, *, microseconds: bool = False, random_bytes: int = 2) -> str:
    """A time-sortable id unique across hosts: 20261127T180102.123Z-3fa9.

    Milliseconds by default; archive segments, written many per second, use microseconds.
    ``random_bytes`` sets the length of the random tail (hex, two characters a byte).
    """
    now = now or datetime.now(UTC)
    fraction = f"{now.microsecond:06d}" if microseconds else f"{now.microsecond // 1000:03d}"
    return now.strftime("%Y%m%dT%H%M%S.") + f"{fraction}Z-" + secrets.token_hex(random_bytes)


def new_backup_id(now: datetime | None = None) -> str:
    return new_id(now, random_bytes=2)


def new_export_id(now: datetime | None = None) -> str:
    return new_id(now, random_bytes=3)


def new_segment_id() -> str:
    return new_id(microseconds=True, random_bytes=3)


def backup_prefix(backup_id: str) -> str:
    return f"{BACKUPS}/{backup_id}"


def source_key() -> str:
    return f"{BACKUPS}/{SOURCE_NAME}"


def wal_system_key() -> str:
    return f"{WAL}/{WAL_SYSTEM_NAME}"


def attempt_key(backup_id: str) -> str:
    return f"{ATTEMPTS}/{backup_id}.json"


def export_prefix(export_id: str) -> str:
    return f"{EXPORTS}/{export_id}"


def analytics_prefix(day: str) -> str:
    """Where the analytics export of one day (a Dagster partition key, YYYY-MM-DD) goes."""
    return f"{ANALYTICS}/{day}"


def segment_prefix(table: str, tenant_id: str, month: date, segment_id: str) -> str:
    """One archive segment's folder; table and tenant are percent-encoded so any name is a safe key."""
    return f"{ARCHIVES}/{quote(table, safe='')}/tenant={quote(str(tenant_id), safe='')}/month={month:%Y-%m}/{segment_id}"


def drill_prefix(month: str) -> str:
    return f"{DRILLS}/{month}"


def manifest_key(prefix: str) -> str:
    return f"{prefix}/{MANIFEST_NAME}"
