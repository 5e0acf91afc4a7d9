"""schema_migrations: the source schema's migration state, and a check that fails on pending or drifted migrations."""

# No `from __future__ import annotations` here: Dagster validates the context annotation's type.
import dagster as dg

from dr_pipelines.core.migrate.files import configured_migrations
from dr_pipelines.core.migrate.runner import status
from dr_pipelines.defs.lib.resources import DrpSettingsResource
from dr_pipelines.defs.migrations.jobs import SCHEMA_KEY
from dr_pipelines.defs.source.assets import source_profile


@dg.asset(key=SCHEMA_KEY, deps=[source_profile], group_name="source", kinds={"postgres"},
          description="The source schema's version: applied migrations (drp.schema_migrations) against the files.")
def schema_migrations(drp: DrpSettingsResource) -> dg.MaterializeResult:
    s = drp.settings()
    st = status(s.dsn, configured_migrations(s.migrations_dir))
    return dg.MaterializeResult(metadata={
        "current_version": st.current_version if st.current_version is not None else "none",
        "applied": len(st.applied),
        "pending": dg.MetadataValue.json([m.name for m in st.pending]),
        "drift": dg.MetadataValue.json([d.as_dict() for d in st.drift]),
        "migrations_dir": str(s.migrations_dir),
    })


@dg.asset_check(asset=SCHEMA_KEY, description="No pending migration, none edited, missing or out of order.")
def migrations_in_sync(drp: DrpSettingsResource) -> dg.AssetCheckResult:
    s = drp.settings()
    st = status(s.dsn, configured_migrations(s.migrations_dir))
    problems = [f"pending: {m.name}" for m in st.pending] + [f"{d.kind}: {d.message}" for d in st.drift
                                                             if d.severity == "error"]
    return dg.AssetCheckResult(
        passed=st.ok, severity=dg.AssetCheckSeverity.ERROR,
        description="in sync" if st.ok else "; ".join(problems),
        metadata={"current_version": st.current_version if st.current_version is not None else "none",
                  "pending": len(st.pending), "problems": "; ".join(problems) or "none",
                  "warnings": "; ".join(d.message for d in st.drift if d.severity == "warning") or "none"},
    )
