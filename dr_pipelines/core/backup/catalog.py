"""The catalog: what backups exist in storage, which are restorable, which are pinned.

Layout (names in core/layout.py): ``backups/<id>/`` holds the objects, ``manifest.json`` (written last: no manifest
means not a backup) and optionally ``pin.json`` (legal hold). Ids sort by time.
``backups/SOURCE.json`` names the one source database the prefix belongs to.

Two kinds share the catalog, retention and pins: logical backups (pg_dump) and base backups
(pg_basebackup). A base backup is restorable only once the WAL from its start to its stop
segment is committed in the WAL archive (core/wal: a segment's sidecar is its commit); until
then its status is 'waiting for WAL' and nothing picks it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from dr_pipelines.core.errors import DrpError, ObjectNotFoundError
from dr_pipelines.core.layout import (  # noqa: F401 - VERIFICATION_NAME: re-exported for callers of the catalog
    BACKUPS,
    BASE_OBJECT,
    MANIFEST_NAME,
    PIN_NAME,
    VERIFICATION_NAME,
    backup_prefix,
    source_key,
)
from dr_pipelines.core.manifest import Manifest, ManifestError, read_manifest
from dr_pipelines.core.storage import Storage
from dr_pipelines.core.wal.names import PREFIX as WAL_PREFIX
from dr_pipelines.core.wal.names import SIDECAR_SUFFIX, Segment

BASE_KIND = "base-backup"  # Manifest.kind of a base backup (core/backup/physical.py); logical ones: "logical-backup"


class BackupNotFoundError(DrpError):
    """No restorable backup with that id (or none at all)."""


class BackupKindError(BackupNotFoundError):
    """A backup of the other kind than the operation needs (a base backup given to `drp restore`, ...)."""


class SourceMismatchError(DrpError):
    """The backup prefix belongs to another source database."""


@dataclass
class BackupEntry:
    id: str
    manifest: Manifest | None
    pin: dict[str, Any] | None
    keys: list[str]
    stored_bytes: int
    error: str | None = None  # unreadable manifest
    verification: dict[str, Any] | None = None
    wal_archived: bool | None = None  # base backups: every segment wal_start..wal_stop committed in the WAL archive

    @property
    def complete(self) -> bool:
        return self.manifest is not None

    @property
    def kind(self) -> str:
        """'base' (pg_basebackup) or 'logical' (pg_dump); an interrupted set by the object it left."""
        if self.manifest is not None:
            return "base" if self.manifest.kind == BASE_KIND else "logical"
        return "base" if BASE_OBJECT in self.keys else "logical"

    @property
    def restorable(self) -> bool:
        """Complete, readable, not proven broken by a failed verification, and (base backups) its WAL archived."""
        return (self.complete and not self.error and (self.verification or {}).get("passed") is not False
                and (self.kind != "base" or self.wal_archived is True))

    @property
    def committed(self) -> bool:
        """A manifest was written (even if it no longer reads): never garbage-collected."""
        return MANIFEST_NAME in self.keys

    @property
    def status(self) -> str:
        if self.error:
            return "damaged"
        if not self.manifest:
            return "incomplete"
        return "waiting for WAL" if self.kind == "base" and not self.wal_archived else "complete"

    @property
    def verification_state(self) -> str:
        """'verified' or 'failed' as the last verification restore recorded it, else 'unverified'.

        A backup with a manifest is restorable in principle; only a verification proves it.
        """
        passed = (self.verification or {}).get("passed")
        if passed is True:
            return "verified"
        return "failed" if passed is False else "unverified"

    @property
    def verified_at(self) -> str | None:
        """When the last verification restore of this backup finished (ISO), if there was one."""
        return (self.verification or {}).get("finished_at") if self.verification_state != "unverified" else None

    @property
    def restore_point(self) -> datetime | None:
        """The snapshot time (base backups: the stop time): the earliest moment a restore of it brings back."""
        if not self.manifest:
            return None
        snap = self.manifest.extra.get("stop_time" if self.kind == "base" else "snapshot_at")
        return datetime.fromisoformat(snap) if snap else self.manifest.started_at


def list_backups(storage: Storage) -> list[BackupEntry]:
    """Every backup id under backups/, oldest first, complete or not.

    A manifest that does not read (not JSON, malformed) makes a 'damaged' entry, never a
    silent omission; an unreadable pin still pins (deleting is the unsafe guess) and an
    unreadable verification record leaves the backup unverified.
    """
    groups: dict[str, list[tuple[str, int]]] = {}
    for obj in storage.list(BACKUPS + "/"):
        parts = obj.key.split("/")
        if len(parts) < 3:
            continue
        groups.setdefault(parts[1], []).append((parts[-1], obj.size))
    entries = []
    for backup_id in sorted(groups):
        names = [n for n, _ in groups[backup_id]]
        manifest, error, pin, verification = None, None, None, None
        if MANIFEST_NAME in names:
            try:
                manifest = read_manifest(storage, backup_prefix(backup_id))
            except (ManifestError, ObjectNotFoundError) as exc:
                error = str(exc)
        if PIN_NAME in names:
            pin = _read_record(storage, backup_id, PIN_NAME) or {"reason": f"({PIN_NAME} is unreadable)"}
        if VERIFICATION_NAME in names:
            verification = _read_record(storage, backup_id, VERIFICATION_NAME)
        entries.append(
            BackupEntry(backup_id, manifest, pin, names, sum(s for _, s in groups[backup_id]), error, verification)
        )
    _mark_wal_archived(storage, entries)
    return entries


def wal_segments(manifest: Manifest) -> list[str]:
    """The WAL segment names a base backup needs, wal_start to wal_stop (its manifest's extra)."""
    extra = manifest.extra
    size = int(extra.get("segment_bytes") or 16 * 1024 * 1024)
    first, last = Segment.parse(extra["wal_start"]), Segment.parse(extra["wal_stop"])
    per_log = 0x100000000 // size
    return [Segment(last.timeline, n // per_log, n % per_log).name
            for n in range(first.number(size), last.number(size) + 1)]


def _mark_wal_archived(storage: Storage, entries: list[BackupEntry]) -> None:
    """Set wal_archived on every complete base backup: one listing per timeline involved, not a get per segment."""
    bases = [e for e in entries if e.manifest is not None and e.kind == "base"]
    committed: dict[str, set[str]] = {}
    for entry in bases:
        assert entry.manifest is not None
        try:
            needed = wal_segments(entry.manifest)
        except (KeyError, DrpError):
            entry.wal_archived = False
            continue
        timeline = needed[-1][:8]
        if timeline not in committed:
            committed[timeline] = {o.key.rsplit("/", 1)[-1][: -len(SIDECAR_SUFFIX)]
                                   for o in storage.list(f"{WAL_PREFIX}/{timeline}/") if o.key.endswith(SIDECAR_SUFFIX)}
        entry.wal_archived = all(name in committed[timeline] for name in needed)


def _read_record(storage: Storage, backup_id: str, name: str) -> dict[str, Any] | None:
    """A small JSON record beside a backup, or None if it is gone or does not parse as an object."""
    try:
        record = json.loads(storage.get_bytes(f"{backup_prefix(backup_id)}/{name}"))
    except (ObjectNotFoundError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def damaged(entries: list[BackupEntry]) -> list[BackupEntry]:
    """Backups whose manifest was written but no longer reads: never restorable, always reported."""
    return [e for e in entries if e.error]


def restorable(entries: list[BackupEntry], kind: str | None = None) -> list[BackupEntry]:
    """Restorable backups (BackupEntry.restorable), of one kind ('logical' | 'base') if given."""
    return [e for e in entries if e.restorable and kind in (None, e.kind)]


def newest_restorable(entries: list[BackupEntry], kind: str | None = None) -> BackupEntry | None:
    ok = restorable(entries, kind)
    return ok[-1] if ok else None


_KIND_WORDS = {"logical": "logical backup (pg_dump)", "base": "base backup (pg_basebackup)"}
_KIND_FIX = {"logical": "restore it with `drp restore ID` (a logical restore)",
             "base": "restore it with point-in-time recovery (`drp restore --pitr`)"}


def find_backup(storage: Storage, backup_id: str | None, *, kind: str | None = None) -> BackupEntry:
    """A backup by id, or the newest restorable one when backup_id is None or 'latest'.

    ``kind`` ('logical' | 'base'): what the caller can restore. 'latest' then picks the newest
    restorable of that kind; an id of the other kind, or a base backup whose WAL is not archived
    yet, is refused naming why.
    """
    entries = list_backups(storage)
    if backup_id in (None, "latest"):
        entry = newest_restorable(entries, kind)
        if entry is None:
            raise BackupNotFoundError(f"no restorable backup in {storage.url}"
                                      + (f" that is a {_KIND_WORDS[kind]}" if kind else ""),
                                      fix="run `drp backup run` first (`--physical` for a base backup), or check DRP_STORAGE_URL")
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
            if kind is not None and e.kind != kind:
                raise BackupKindError(f"backup {backup_id} is a {_KIND_WORDS[e.kind]}, not a {_KIND_WORDS[kind]}",
                                      fix=_KIND_FIX[e.kind])
            if kind is not None and not e.restorable and e.status == "waiting for WAL":
                raise BackupNotFoundError(
                    f"base backup {backup_id} is waiting for WAL: not every segment from "
                    f"{e.manifest.extra.get('wal_start')} to {e.manifest.extra.get('wal_stop')} is archived yet",
                    fix="check that WAL archiving works (`drp wal status`, `drp wal verify`), or choose another backup")
            return e
    raise BackupNotFoundError(f"no backup {backup_id!r} in {storage.url}", fix="see `drp backup list` for the ids")


def remove_incomplete(storage: Storage, *, keep: frozenset[str] = frozenset()) -> list[str]:
    """Delete the leftovers of interrupted runs (ids without a manifest, partial uploads); return the ids removed.

    Only call this holding the source's backup lock on a prefix claimed for that source
    (check_source): then no backup writer of backups/ is alive, so manifest-less sets and
    partial uploads into them are garbage whatever their age. Partial uploads into committed
    backups (a pin or verification being written) go only once stale, and nothing outside
    backups/ (a running export, an archive) is touched: their writers hold no lock we hold.
    """
    entries = list_backups(storage)
    committed = {e.id for e in entries if e.committed}
    removed = []
    for entry in entries:
        if not entry.committed and entry.id not in keep and entry.pin is None:
            for name in entry.keys:
                storage.delete(f"{backup_prefix(entry.id)}/{name}")
            removed.append(entry.id)

    def by_a_dead_backup(key: str) -> bool:
        parts = key.split("/")
        return len(parts) >= 3 and parts[1] not in committed and parts[1] not in keep

    storage.cleanup_incomplete(f"{BACKUPS}/", dead=by_a_dead_backup)
    return removed


def check_source(storage: Storage, source: dict[str, Any], *, replaced: bool = False) -> None:
    """Refuse a backup of ``source`` into a prefix that holds another source database's backups.

    remove_incomplete's rule (no other writer alive while we hold the source's lock) holds
    only with one source per prefix, and `latest` must never pick another database's backup.
    The prefix's source is backups/SOURCE.json, or for a prefix from before that record
    existed, its newest manifest's source. ``replaced``: the operator says this cluster
    replaced the recorded one (after a restore the system identifier is new); the database
    name must still match.
    """
    recorded = _recorded_source(storage)
    if recorded is None:
        manifests = [e.manifest for e in list_backups(storage) if e.manifest]
        recorded = manifests[-1].source if manifests else None
    if recorded is None or _same_source(recorded, source):
        return
    if replaced and recorded.get("database") == source["database"]:
        return
    raise SourceMismatchError(
        f"{storage.url} holds backups of {_describe_source(recorded)}; this backup is of "
        f"{_describe_source(source)}: one backup prefix holds one source database",
        fix="give this source its own prefix or bucket in DRP_STORAGE_URL (e.g. s3://bucket/<cluster>/<database>)"
        + ("; if this cluster replaced the recorded one (restored after losing it), run "
           "`drp backup run --source-replaced` once" if recorded.get("database") == source["database"] else ""),
    )


def record_source(storage: Storage, source: dict[str, Any], *, replaced: bool = False) -> None:
    """After a prefix's first committed backup (or one from a replacing cluster), record whose backups it holds."""
    if replaced or _recorded_source(storage) is None:
        record = {k: source.get(k) for k in ("system_identifier", "database", "server")}
        record["claimed_at"] = datetime.now(UTC).isoformat()
        storage.put_bytes(source_key(), json.dumps(record).encode())


def _recorded_source(storage: Storage) -> dict[str, Any] | None:
    key = source_key()
    try:
        recorded = json.loads(storage.get_bytes(key))
    except ObjectNotFoundError:
        return None
    except ValueError:
        recorded = None
    if not isinstance(recorded, dict):
        raise SourceMismatchError(
            f"{storage.url}/{key} is not a JSON object: cannot tell which source database this prefix belongs to",
            fix=f"check that {storage.url} is the right storage target; if it is, remove {key} "
            "(the next backup records its source again)",
        )
    return recorded


def _same_source(recorded: dict[str, Any], mine: dict[str, Any]) -> bool:
    """Same database name, and the same cluster where both system identifiers are known."""
    if recorded.get("database") != mine["database"]:
        return False
    theirs, ours = recorded.get("system_identifier"), mine["system_identifier"]
    return theirs is None or ours is None or str(theirs) == str(ours)


def _describe_source(source: dict[str, Any]) -> str:
    return (f"database {source.get('database')!r} on {source.get('server') or 'an unnamed server'} "
            f"(system identifier {source.get('system_identifier') or 'unknown'})")


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
