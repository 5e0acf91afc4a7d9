"""Blocking checks on the newest backup of each kind: an unprovable backup must not count as restorable.

Both backup assets (logical_backup, base_backup) get manifest_complete and objects_present; base_backup
also wal_archived (its own WAL, wal_start..wal_stop, in the archive: until then it restores nothing).
"""

# No `from __future__ import annotations` here: Dagster validates the context annotation's type.
import time

import dagster as dg

from dr_pipelines.core import context as core_context
from dr_pipelines.core.backup.catalog import backup_prefix, list_backups
from dr_pipelines.core.backup.integrity import manifest_problems, object_problems
from dr_pipelines.core.errors import DrpError
from dr_pipelines.core.manifest import read_manifest
from dr_pipelines.defs.backups.assets import BACKUP_KEY, BASE_KEY
from dr_pipelines.defs.lib.resources import DrpSettingsResource

WAL_WAIT_S = 60  # pg_backup_stop switched the segment; the archiver pushes it within seconds


def _latest_backup_id(context: dg.AssetCheckExecutionContext, key: dg.AssetKey = BACKUP_KEY) -> str | None:
    event = context.instance.get_latest_materialization_event(key)
    if event is None or event.asset_materialization is None:
        return None
    value = event.asset_materialization.metadata.get("backup_id")
    return str(value.value) if value is not None else None


def _no_backup() -> dg.AssetCheckResult:
    return dg.AssetCheckResult(passed=False, severity=dg.AssetCheckSeverity.ERROR, description="no backup recorded")


def build_checks(key: dg.AssetKey) -> list[dg.AssetChecksDefinition]:
    """manifest_complete and objects_present on the backup asset ``key``."""

    @dg.asset_check(asset=key, blocking=True, description="The manifest exists, parses, and lists its objects "
                    "(and, for a logical backup, its tables).")
    def manifest_complete(context: dg.AssetCheckExecutionContext, drp: DrpSettingsResource) -> dg.AssetCheckResult:
        backup_id = _latest_backup_id(context, key)
        if backup_id is None:
            return _no_backup()
        try:
            manifest = read_manifest(core_context.storage(drp.settings()), backup_prefix(backup_id))
        except DrpError as exc:
            return dg.AssetCheckResult(passed=False, severity=dg.AssetCheckSeverity.ERROR,
                                       metadata={"backup_id": backup_id, "error": exc.problem})
        problems = manifest_problems(manifest)
        return dg.AssetCheckResult(
            passed=not problems, severity=dg.AssetCheckSeverity.ERROR,
            metadata={"backup_id": backup_id, "objects": len(manifest.objects), "tables": len(manifest.tables),
                      "problems": "; ".join(problems) or "none"},
        )

    @dg.asset_check(asset=key, blocking=True, description="Every object in the manifest is in storage with its listed size.")
    def objects_present(context: dg.AssetCheckExecutionContext, drp: DrpSettingsResource) -> dg.AssetCheckResult:
        backup_id = _latest_backup_id(context, key)
        if backup_id is None:
            return _no_backup()
        storage = core_context.storage(drp.settings())
        prefix = backup_prefix(backup_id)
        try:
            manifest = read_manifest(storage, prefix)
        except DrpError as exc:
            return dg.AssetCheckResult(passed=False, severity=dg.AssetCheckSeverity.ERROR, metadata={"error": exc.problem})
        problems = object_problems(storage, prefix, manifest)
        return dg.AssetCheckResult(
            passed=not problems, severity=dg.AssetCheckSeverity.ERROR,
            metadata={"backup_id": backup_id, "checked": len(manifest.objects), "problems": "; ".join(problems) or "none"},
        )

    return [manifest_complete, objects_present]


manifest_complete, objects_present = build_checks(BACKUP_KEY)


@dg.asset_check(asset=BASE_KEY, blocking=True, description="The base backup's own WAL (wal_start..wal_stop) is in "
                "the archive, so it is restorable (waits up to a minute for the archiver).")
def wal_archived(context: dg.AssetCheckExecutionContext, drp: DrpSettingsResource) -> dg.AssetCheckResult:
    backup_id = _latest_backup_id(context, BASE_KEY)
    if backup_id is None:
        return _no_backup()
    storage = core_context.storage(drp.settings())
    deadline = time.monotonic() + WAL_WAIT_S
    while True:
        entry = next((e for e in list_backups(storage) if e.id == backup_id), None)
        if entry is None or entry.wal_archived or time.monotonic() > deadline:
            break
        time.sleep(1)
    x = entry.manifest.extra if entry and entry.manifest else {}
    return dg.AssetCheckResult(
        passed=bool(entry and entry.wal_archived), severity=dg.AssetCheckSeverity.ERROR,
        metadata={"backup_id": backup_id, "wal": f"{x.get('wal_start')} .. {x.get('wal_stop')}",
                  "status": entry.status if entry else "gone from storage"},
    )


base_checks = [*build_checks(BASE_KEY), wal_archived]
