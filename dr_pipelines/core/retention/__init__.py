"""Retention: which backups to keep (GFS), and later data-retention policies."""
