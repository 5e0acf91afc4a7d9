"""Versioned SQL migrations: discovery, checksums, ordered application."""
