"""Blocking checks on the newest backup: an unprovable backup must not count as restorable."""

# No `from __future__ import annotations` here: Dagster validates the context annotation's type.
import dagster as dg

from dr_pipelines.core import context as core_context
from dr_pipelines.core.backup.catalog import backup_prefix
from dr_pipelines.core.backup.integrity import manifest_problems, object_problems
from dr_pipelines.core.errors import DrpError
from dr_pipelines.core.manifest import read_manifest
from dr_pipelines.defs.backups.assets import BACKUP_KEY
from dr_pipelines.defs.lib.resources import DrpSettingsResource


def _latest_backup_id(context: dg.AssetCheckExecutionContext) -> str | None:
    event = context.instance.get_latest_materialization_event(BACKUP_KEY)
    if event is None or event.asset_materialization is None:
        return None
    value = event.asset_materialization.metadata.get("backup_id")
    return str(value.value) if value is not None else None


@dg.asset_check(asset=BACKUP_KEY, blocking=True, description="The manifest exists, parses, and lists objects and tables.")
def manifest_complete(context: dg.AssetCheckExecutionContext, drp: DrpSettingsResource) -> dg.AssetCheckResult:
    backup_id = _latest_backup_id(context)
    if backup_id is None:
        return dg.AssetCheckResult(passed=False, severity=dg.AssetCheckSeverity.ERROR, description="no backup recorded")
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


@dg.asset_check(asset=BACKUP_KEY, blocking=True, description="Every object in the manifest is in storage with its listed size.")
def objects_present(context: dg.AssetCheckExecutionContext, drp: DrpSettingsResource) -> dg.AssetCheckResult:
    backup_id = _latest_backup_id(context)
    if backup_id is None:
        return dg.AssetCheckResult(passed=False, severity=dg.AssetCheckSeverity.ERROR, description="no backup recorded")
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
