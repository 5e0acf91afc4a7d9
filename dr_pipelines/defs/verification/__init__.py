"""Weekly verification restores in Dagster: prove the newest backup restores, block on failure."""
