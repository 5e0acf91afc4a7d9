"""Restore one clinic to a point in time: preview, side schema and apply (issue 14; docs/tenant-restore.md)."""
