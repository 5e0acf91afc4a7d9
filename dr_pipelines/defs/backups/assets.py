"""logical_backup, base_backup and backup_retention: thin wrappers over dr_pipelines.core.backup."""

# No `from __future__ import annotations` here: Dagster validates the context annotation's type.
import dagster as dg

from dr_pipelines.core import context as core_context
from dr_pipelines.core.backup.logical import run_logical_backup
from dr_pipelines.core.backup.prune import prune_backups
from dr_pipelines.core.backup.service import backup_now
from dr_pipelines.core.settings import Settings
from dr_pipelines.defs.backups.history import success_rate
from dr_pipelines.defs.lib.freshness import scheduled_freshness
from dr_pipelines.defs.lib.resources import DrpSettingsResource
from dr_pipelines.defs.source.assets import source_profile

BACKUP_KEY = dg.AssetKey("logical_backup")
BACKUP_JOB = "logical_backup_job"
BASE_KEY = dg.AssetKey("base_backup")
BASE_JOB = "base_backup_job"


def build_assets(settings: Settings) -> list[dg.AssetsDefinition]:
    @dg.asset(
        key=BACKUP_KEY,
        deps=[source_profile],
        group_name="backups",
        kinds={"postgres"},
        freshness_policy=scheduled_freshness(settings.backup_cron),
        tags={"drp/source": "primary"},
        description="A logical backup (pg_dump -> zstd -> age) in storage with its manifest; fresh when its "
                    "scheduled run landed (the seconds-level RPO is wal_archive's).",
    )
    def logical_backup(context: dg.AssetExecutionContext, drp: DrpSettingsResource) -> dg.MaterializeResult:
        s = drp.settings()
        storage = core_context.storage(s)
        manifest = run_logical_backup(
            s.dsn, storage, s.encryption_recipients,
            progress=lambda phase, done, total: context.log.debug(f"{phase}: {done:,} bytes"),
        )
        plain = sum(o.plain_bytes or 0 for o in manifest.objects)
        rate = success_rate(context.instance, BACKUP_JOB, days=30)
        return dg.MaterializeResult(
            metadata={
                "backup_id": manifest.id,
                "storage_uri": f"{storage.url}/backups/{manifest.id}",
                "stored_bytes": dg.MetadataValue.int(manifest.stored_bytes),
                "plain_bytes": dg.MetadataValue.int(plain),
                "duration_s": dg.MetadataValue.float(round(manifest.duration_s, 2)),
                "throughput_mib_s": dg.MetadataValue.float(round(plain / max(manifest.duration_s, 1e-6) / 2**20, 1)),
                "tables": len(manifest.tables),
                "rows": dg.MetadataValue.int(manifest.total_rows),
                "restore_point": manifest.extra["snapshot_at"],
                "success_rate_30d": rate.describe(),
            }
        )

    @dg.asset(
        deps=[logical_backup],
        group_name="backups",
        description="Applies the GFS retention policy (restic semantics); pins and the newest restorable stay.",
    )
    def backup_retention(drp: DrpSettingsResource) -> dg.MaterializeResult:
        s = drp.settings()
        result = prune_backups(core_context.storage(s), core_context.retention_policy(s), dry_run=False)
        table = "| backup | kept | reasons |\n|---|---|---|\n" + "\n".join(
            f"| {d.candidate.id} | {'yes' if d.keep else 'deleted'} | {', '.join(d.reasons)} |" for d in result.decisions
        )
        return dg.MaterializeResult(
            metadata={
                "policy": core_context.retention_policy(s).describe(),
                "kept": len(result.kept),
                "deleted": dg.MetadataValue.json(result.deleted),
                "decisions": dg.MetadataValue.md(table),
            }
        )

    @dg.asset(
        key=BASE_KEY,
        deps=[source_profile],
        group_name="backups",
        kinds={"postgres"},
        freshness_policy=scheduled_freshness(settings.base_backup_cron),
        tags={"drp/source": "primary"},
        description="A base backup (the low-level API or pg_basebackup -> zstd -> age) in storage with its manifest: "
                    "the start of every "
                    "point-in-time restore with the archived WAL; fresh when its scheduled run landed.",
    )
    def base_backup(context: dg.AssetExecutionContext, drp: DrpSettingsResource) -> dg.MaterializeResult:
        outcome = backup_now(drp.settings(), kind="base", prune=False,  # retention: backup_retention, after the checks
                             progress=lambda phase, done, total: context.log.debug(f"{phase}: {done:,} bytes"))
        manifest, x = outcome.manifest, outcome.manifest.extra
        return dg.MaterializeResult(
            metadata={
                "backup_id": manifest.id,
                "storage_uri": outcome.storage_url,
                "stored_bytes": dg.MetadataValue.int(manifest.stored_bytes),
                "duration_s": dg.MetadataValue.float(round(manifest.duration_s, 2)),
                "timeline": int(x["timeline"]),
                "lsn_range": f"{x['start_lsn']} .. {x['stop_lsn']}",
                "wal_range": f"{x['wal_start']} .. {x['wal_stop']}",
                "restore_point": x["stop_time"],
                "method": str(x.get("method")),  # base_backup_method: which one auto chose, and why (method_note)
                **({"method_note": x["method_note"]} if x.get("method_note") else {}),
            }
        )

    return [logical_backup, base_backup, backup_retention]
