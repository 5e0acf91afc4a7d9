"""Named restore points: pg_create_restore_point on the source, recorded in storage.

PostgreSQL writes a restore point into the WAL only; nothing lists them afterwards. A PITR to a
name must choose a base backup that stopped before it and check the WAL up to it, so the name's
LSN, time and timeline are recorded next to the archive (``wal/restore-points/<name>.json``).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass

from dr_pipelines.core.errors import ConfigError, DrpError, ObjectNotFoundError
from dr_pipelines.core.pg.connect import connect
from dr_pipelines.core.storage import Storage
from dr_pipelines.core.wal.names import RESTORE_POINTS_PREFIX

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")  # a storage key, and within PostgreSQL's 63 bytes


class RestorePointError(DrpError):
    """A restore point name is unknown, taken or malformed."""


@dataclass(frozen=True)
class RestorePoint:
    name: str
    lsn: str  # PostgreSQL text form, e.g. 0/3000090
    time: str  # ISO-8601 UTC, the server's clock
    timeline: int


def _key(name: str) -> str:
    return f"{RESTORE_POINTS_PREFIX}{name}.json"


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise ConfigError(f"restore point name {name!r} is not allowed",
                          fix="use 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit")
    return name


def create_restore_point(dsn: str, storage: Storage, name: str) -> RestorePoint:
    """pg_create_restore_point(name) on the source, then record it; a name already recorded is refused
    (recovery stops at the first point of that name, so a second one could never be reached)."""
    check_name(name)
    known = list_restore_points(storage)
    if name in known:
        raise RestorePointError(f"restore point {name!r} already exists (LSN {known[name].lsn}, {known[name].time})",
                                fix="choose another name")
    with connect(dsn, autocommit=True) as conn:
        lsn, time, walfile = conn.execute(
            "SELECT lsn::text, now(), pg_walfile_name(lsn) FROM pg_create_restore_point(%s) AS lsn", (name,)).fetchone()
    point = RestorePoint(name=name, lsn=lsn, time=time.isoformat(), timeline=int(walfile[:8], 16))
    storage.put_bytes(_key(name), json.dumps(asdict(point), sort_keys=True).encode() + b"\n")
    return point


def list_restore_points(storage: Storage) -> dict[str, RestorePoint]:
    points = {}
    for info in storage.list(RESTORE_POINTS_PREFIX):
        if info.key.endswith(".json"):
            try:
                data = json.loads(storage.get_bytes(info.key))
                point = RestorePoint(**data)
            except (ValueError, TypeError, ObjectNotFoundError):
                continue  # unreadable: not a usable target, and never the reason another one fails
            points[point.name] = point
    return points


def find_restore_point(storage: Storage, name: str) -> RestorePoint:
    known = list_restore_points(storage)
    if name not in known:
        listed = ", ".join(sorted(known)) or "none"
        raise RestorePointError(f"no restore point named {name!r} in {storage.url} (known: {listed})",
                                fix="pass one of the known names, or create one with `drp wal restore-point NAME`")
    return known[name]
