"""The WAL archive in Dagster: an asset whose freshness is the RPO, a sensor reporting it, continuity and lag checks."""
