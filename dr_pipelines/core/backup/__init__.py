"""Backups: logical (pg_dump) today; the catalog of what is restorable."""
