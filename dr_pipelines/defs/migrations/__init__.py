"""Schema migrations in Dagster: lint -> pre-migration backup -> apply (or dry-run), a sync check, a file sensor."""
