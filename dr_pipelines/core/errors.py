"""Domain errors: each names the problem and the fix.

The CLI prints ``str(error)`` without a traceback and exits non-zero, so a message
must be complete on its own. Never put secrets (passwords, keys, tokens) in one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


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


def read_config_text(path: Path, what: str, *, missing_fix: str) -> str:
    """A small text file a person pointed us at (settings, key, probes), or a ConfigError naming it."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist", fix=missing_fix) from None
    except (PermissionError, IsADirectoryError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{what} {path} cannot be read ({type(exc).__name__})", fix="check the path and its permissions") from None


def read_config_yaml(path: Path, what: str, *, missing_fix: str) -> Any:
    """A YAML file a person pointed us at, parsed; a ConfigError naming the line if it is not YAML."""
    import yaml

    text = read_config_text(path, what, missing_fix=missing_fix)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{what} {path} is not valid YAML{where}", fix="fix the syntax") from None
