"""Logical backups in Dagster: the backup asset, its blocking checks, retention, schedule, RPO sensor."""
