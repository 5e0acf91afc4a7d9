"""Restore one clinic to a point in time (issue 14): docs/tenant-restore.md."""
