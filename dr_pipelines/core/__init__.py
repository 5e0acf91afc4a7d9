"""The dr_pipelines library: how to back up, verify, restore, export, archive, migrate.

Never imports Dagster (a test enforces it): the restore path must work when the
orchestrator is gone.
"""
