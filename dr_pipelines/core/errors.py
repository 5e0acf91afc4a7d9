"""Domain errors: each names the problem and the fix.

The CLI prints ``str(error)`` without a traceback and exits non-zero, so a message
must be complete on its own. Never put secrets (passwords, keys, tokens) in one.
"""

from __future__ import annotations

import functools
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


class ExportError(DrpError):
    """An export failed; nothing was committed (no manifest)."""


class ExportRefusedError(ExportError):
    """An export was refused before any tenant data was read."""

    exit_code = 4


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


class _DuplicateKey(Exception):
    def __init__(self, key: object, line: int, first_line: int) -> None:
        self.key, self.line, self.first_line = key, line, first_line


@functools.cache
def _strict_loader() -> type:
    """A SafeLoader that refuses a repeated mapping key: plain YAML keeps the last value silently,
    so a key appended further down a settings file would quietly override the first one."""
    import yaml

    class StrictLoader(yaml.SafeLoader):
        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            seen: dict[object, int] = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                try:
                    if key in seen:
                        raise _DuplicateKey(key, line, seen[key])
                except TypeError:  # an unhashable key: let PyYAML report it
                    break
                seen[key] = line
            return super().construct_mapping(node, deep=deep)

    return StrictLoader


def read_config_yaml(path: Path, what: str, *, missing_fix: str) -> Any:
    """A YAML file a person pointed us at, parsed; a ConfigError naming the line if it is not YAML."""
    import yaml

    text = read_config_text(path, what, missing_fix=missing_fix)
    try:
        return yaml.load(text, Loader=_strict_loader())  # noqa: S506 - a SafeLoader subclass
    except _DuplicateKey as dup:
        raise ConfigError(
            f"{what} {path} has duplicate key {dup.key!r} at line {dup.line} (first at line {dup.first_line})",
            fix="keep one of them (YAML would silently use the last)",
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{what} {path} is not valid YAML{where}", fix="fix the syntax") from None
