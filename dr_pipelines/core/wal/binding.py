"""One WAL archive holds one cluster's WAL: segments of another system identifier are refused.

Two clusters archiving into one prefix write segments with the same names (both start at timeline
1, segment 1): the second one's pushes would be refused one by one as conflicts at best, or fill
gaps of the first with foreign WAL that recovery would replay. So the archive is bound to one
cluster: to backups/SOURCE.json's system identifier when the backups there name one (the backup
catalog's binding, core/backup/catalog.py), and in any case to ``wal/SYSTEM.json``, written by the
first segment pushed. A segment whose header names another system identifier is refused loudly,
with an event under wal/events/, before anything is written.
"""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime
from typing import NoReturn

from dr_pipelines.core.backup.catalog import recorded_system_identifiers
from dr_pipelines.core.layout import wal_system_key
from dr_pipelines.core.storage import Storage
from dr_pipelines.core.wal.events import WalConflictError, record_event

_confirmed: dict[str, str] = {}  # storage url -> system identifier already checked by this process
_lock = threading.Lock()


class WalForeignSystemError(WalConflictError):
    """A segment of another cluster (system identifier) than the one the archive is bound to."""


def check_system(storage: Storage, system_identifier: str, name: str) -> None:
    """Refuse ``name`` unless the archive is bound to ``system_identifier`` (binding it on the first push).

    A long-running archiver checks once: the records are never rewritten by drp (a replaced source
    cluster gets SOURCE.json rewritten, whose WAL then still needs its own prefix: same segment names).
    """
    if _confirmed.get(storage.url) == system_identifier:
        return
    with _lock:
        records = recorded_system_identifiers(storage, skip_unreadable_source=True)  # SOURCE.json, wal/SYSTEM.json
        wal = records.get(wal_system_key())
        foreign = {key: sysid for key, sysid in records.items() if sysid != system_identifier}
        if foreign:
            _refuse(storage, name, system_identifier, foreign)
        if wal is None:
            body = {"system_identifier": system_identifier, "claimed_at": datetime.now(UTC).isoformat(),
                    "first_segment": name}
            storage.put_bytes(wal_system_key(), json.dumps(body, sort_keys=True).encode() + b"\n")
        _confirmed[storage.url] = system_identifier


def _refuse(storage: Storage, name: str, mine: str, foreign: dict[str, str]) -> NoReturn:
    bound = ", ".join(f"{key} says {sysid}" for key, sysid in sorted(foreign.items()))
    record_event(storage, "foreign-system", name, {"system_identifier": mine, "bound_to": foreign})
    raise WalForeignSystemError(
        f"WAL file {name} is from the cluster with system identifier {mine}, but the archive {storage.url} "
        f"belongs to another cluster ({bound}); refusing to archive it",
        fix="give each cluster its own storage prefix (e.g. s3://bucket/<cluster>/): two clusters write segments "
        "with the same names; a restored cluster is a new cluster and archives to a new prefix too "
        "(event under wal/events/)")
