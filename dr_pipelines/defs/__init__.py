"""The Dagster layer: one folder per area, each thin over dr_pipelines.core."""
