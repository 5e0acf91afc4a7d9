"""The catalog: what backups exist in storage, which are restorable, which are pinned.

Layout: ``backups/<id>/`` holds the objects, ``manifest.json`` (written last: no manifest
means not a backup) and optionally ``pin.json`` (legal hold). Ids sort by time.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from dr_pipelines.core.errors import DrpError, ObjectNotFoundError
from dr_pipelines.core.manifest import MANIFEST_NAME, Manifest, ManifestError, read_manifest
from dr_pipelines.core.storage import Storage

PREFIX = "backups"
PIN_NAME = "pin.json"
VERIFICATION_NAME = "verification.json"  # written by verification restores: {"passed": bool, ...}


class BackupNotFoundError(DrpError):
    """No restorable backup with that id (or none at all)."""


def new_backup_id(now: datetime | None = None) -> str:
    """Sortable by time to the millisecond, unique across hosts: 20261127T180102.123Z-3fa9."""
    now = now or datetime.now(UTC)
    return now.strftime("%Y%m%dT%H%M%S.") + f"{now.microsecond // 1000:03d}Z-" + secrets.token_hex(2)


def backup_prefix(backup_id: str) -> str:
    return f"{PREFIX}/{backup_id}"


@dataclass
class BackupEntry:
    id: str
    manifest: Manifest | None
    pin: dict[str, Any] | None
    keys: list[str]
    stored_bytes: int
    error: str | None = None  # unreadable manifest
    verification: dict[str, Any] | None = None

    @property
    def complete(self) -> bool:
        return self.manifest is not None

    @property
    def committed(self) -> bool:
        """A manifest was written (even if it no longer reads): never garbage-collected."""
        return MANIFEST_NAME in self.keys

    @property
    def status(self) -> str:
        if self.error:
            return "damaged"
        return "complete" if self.manifest else "incomplete"

    @property
    def restore_point(self) -> datetime | None:
        """The snapshot time: what a restore of this backup brings back."""
        if not self.manifest:
            return None
        snap = self.manifest.extra.get("snapshot_at")
        return datetime.fromisoformat(snap) if snap else self.manifest.started_at


def list_backups(storage: Storage) -> list[BackupEntry]:
    """Every backup id under backups/, oldest first, complete or not."""
    groups: dict[str, list[tuple[str, int]]] = {}
    for obj in storage.list(PREFIX + "/"):
        parts = obj.key.split("/")
        if len(parts) < 3:
            continue
        groups.setdefault(parts[1], []).append((parts[-1], obj.size))
    entries = []
    for backup_id in sorted(groups):
        names = [n for n, _ in groups[backup_id]]
        manifest, error, pin = None, None, None
        if MANIFEST_NAME in names:
            try:
                manifest = read_manifest(storage, backup_prefix(backup_id))
            except (ManifestError, ObjectNotFoundError) as exc:
                error = str(exc)
        if PIN_NAME in names:
            pin = json.loads(storage.get_bytes(f"{backup_prefix(backup_id)}/{PIN_NAME}"))
        verification = None
        if VERIFICATION_NAME in names:
            verification = json.loads(storage.get_bytes(f"{backup_prefix(backup_id)}/{VERIFICATION_NAME}"))
        entries.append(
            BackupEntry(backup_id, manifest, pin, names, sum(s for _, s in groups[backup_id]), error, verification)
        )
    return entries


def restorable(entries: list[BackupEntry]) -> list[BackupEntry]:
    """Complete, readable, and not proven broken by a failed verification."""
    return [e for e in entries if e.complete and not e.error and (e.verification or {}).get("passed") is not False]


def newest_restorable(entries: list[BackupEntry]) -> BackupEntry | None:
    ok = restorable(entries)
    return ok[-1] if ok else None


def find_backup(storage: Storage, backup_id: str | None) -> BackupEntry:
    """A restorable backup by id, or the newest one when backup_id is None or 'latest'."""
    entries = list_backups(storage)
    if backup_id in (None, "latest"):
        entry = newest_restorable(entries)
        if entry is None:
            raise BackupNotFoundError(f"no restorable backup in {storage.url}", fix="run `drp backup run` first, or check DRP_STORAGE_URL")
        return entry
    for e in entries:
        if e.id == backup_id:
            if not e.committed:
                raise BackupNotFoundError(
                    f"backup {backup_id} has no manifest: it was interrupted and is not restorable",
                    fix="choose another backup (`drp backup list`)",
                )
            if e.error:
                raise BackupNotFoundError(f"backup {backup_id} is damaged: {e.error}", fix="choose another backup")
            return e
    raise BackupNotFoundError(f"no backup {backup_id!r} in {storage.url}", fix="see `drp backup list` for the ids")


def remove_incomplete(storage: Storage, *, keep: frozenset[str] = frozenset()) -> list[str]:
    """Delete the leftovers of interrupted runs (ids without a manifest, partial uploads); return the ids removed.

    Only call this holding the source's backup lock: then no writer of this storage prefix is
    alive, and every partial upload is garbage whatever its age (one source per prefix).
    """
    removed = []
    for entry in list_backups(storage):
        if not entry.committed and entry.id not in keep and entry.pin is None:
            for name in entry.keys:
                storage.delete(f"{backup_prefix(entry.id)}/{name}")
            removed.append(entry.id)
    storage.cleanup_incomplete(older_than=timedelta(0))
    return removed


def delete_backup(storage: Storage, entry: BackupEntry) -> None:
    """Manifest first, so a crash midway leaves an incomplete set (cleaned later), never a broken 'backup'."""
    if entry.pin is not None:
        raise DrpError(f"backup {entry.id} is pinned and cannot be deleted", fix=f"`drp backup unpin {entry.id}` first")
    prefix = backup_prefix(entry.id)
    if MANIFEST_NAME in entry.keys:
        storage.delete(f"{prefix}/{MANIFEST_NAME}")
    for name in entry.keys:
        if name != MANIFEST_NAME:
            storage.delete(f"{prefix}/{name}")


def pin_backup(storage: Storage, backup_id: str, *, reason: str, by: str) -> dict[str, Any]:
    entry = find_backup(storage, backup_id)
    if not reason.strip():
        raise DrpError("a pin needs a reason", fix="pass --reason, e.g. 'legal hold case 1234'")
    pin = {"reason": reason, "by": by, "at": datetime.now(UTC).isoformat()}
    storage.put_bytes(f"{backup_prefix(entry.id)}/{PIN_NAME}", json.dumps(pin).encode())
    return pin


def unpin_backup(storage: Storage, backup_id: str) -> None:
    entry = find_backup(storage, backup_id)
    if entry.pin is None:
        raise DrpError(f"backup {backup_id} is not pinned", fix="nothing to do")
    storage.delete(f"{backup_prefix(entry.id)}/{PIN_NAME}")
