"""Domain errors: each names the problem and the fix.

The CLI prints ``str(error)`` without a traceback and exits non-zero, so a message
must be complete on its own. Never put secrets (passwords, keys, tokens) in one.
"""

from __future__ import annotations


class DrpError(Exception):
    """Base of every error this project raises on purpose."""

    exit_code = 1

    def __init__(self, problem: str, fix: str | None = None) -> None:
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem}\n  fix: {fix}" if fix else problem)


class ConfigError(DrpError):
    """A setting is missing, malformed or out of range."""

    exit_code = 2


class PostgresNotFoundError(DrpError):
    """PostgreSQL server binaries are not installed or not where we look."""

    exit_code = 3


class ClusterError(DrpError):
    """A local PostgreSQL cluster could not be created, started or stopped."""


class DatabaseError(DrpError):
    """Connecting to or querying a database failed."""


class StorageError(DrpError):
    """The storage backend failed or refused an operation."""


class ObjectNotFoundError(StorageError):
    """A key does not exist in the storage backend."""


class MigrationError(DrpError):
    """A migration is malformed, edited after being applied, or failed to apply."""
