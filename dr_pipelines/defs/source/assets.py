"""source_profile: what the source database is right now (version, size, schema version, tables)."""

from __future__ import annotations

import dagster as dg

from dr_pipelines.core.pg.connect import describe
from dr_pipelines.core.pg.profile import profile_database
from dr_pipelines.defs.lib.resources import DrpSettingsResource


@dg.asset(group_name="source", kinds={"postgres"})
def source_profile(drp: DrpSettingsResource) -> dg.MaterializeResult:
    """A read-only profile of the source database; later backups record the same facts."""
    dsn = drp.settings().dsn
    p = profile_database(dsn)
    largest = sorted(p.tables, key=lambda t: t.bytes, reverse=True)[:10]
    return dg.MaterializeResult(
        metadata={
            "server": describe(dsn),
            "server_version": p.server_version,
            "system_identifier": p.system_identifier,
            "size_bytes": dg.MetadataValue.int(p.size_bytes),
            "schema_version": p.schema_version if p.schema_version is not None else "untracked",
            "tables": len(p.tables),
            "largest_tables": dg.MetadataValue.md(
                "| table | bytes | est. rows |\n|---|---:|---:|\n"
                + "\n".join(f"| {t.name} | {t.bytes:,} | {t.estimated_rows:,} |" for t in largest)
            ),
        }
    )


source_profile_job = dg.define_asset_job("source_profile_job", selection=[source_profile])
