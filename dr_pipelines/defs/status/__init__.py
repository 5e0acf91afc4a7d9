"""One view of the success metrics in Dagster (the same numbers `drp status` prints)."""
