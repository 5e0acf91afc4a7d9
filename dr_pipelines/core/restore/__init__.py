"""Restores: fetch and prove the objects, then hand them to pg_restore."""
