"""Run the backup job once in the demo's Dagster instance, so a newcomer sees a materialized backup.

Run as a module with the demo's environment (DAGSTER_HOME, DRP_*): `python -m dr_pipelines.demo.first_backup`.
"""

from __future__ import annotations

import sys

import dagster as dg

from dr_pipelines.definitions import build_definitions
from dr_pipelines.defs.backups.assets import BACKUP_JOB, BACKUP_KEY


def main() -> int:
    with dg.DagsterInstance.get() as instance:
        if instance.get_latest_materialization_event(BACKUP_KEY) is not None:
            print("demo: a backup is already materialized", file=sys.stderr)
            return 0
        result = build_definitions().resolve_job_def(BACKUP_JOB).execute_in_process(instance=instance, raise_on_error=False)
        (mat,) = result.asset_materializations_for_node(BACKUP_KEY.path[-1]) or [None]
        if not result.success or mat is None:
            print("demo: the first backup failed; see the run in the Dagster UI", file=sys.stderr)
            return 1
        print(f"demo: first backup {mat.metadata['backup_id'].value} taken (run {result.run_id})", file=sys.stderr)
        return 0


if __name__ == "__main__":
    sys.exit(main())
