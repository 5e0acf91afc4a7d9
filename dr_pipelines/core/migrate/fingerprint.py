"""The parser's view of a migration: its statements, and a fingerprint that ignores formatting.

The fingerprint is sha256 over pglast's deparse of each parsed statement: whitespace, comments,
keyword case and redundant parentheses do not change it, literal values and identifiers do. (libpg_query's
own fingerprint is not used: it ignores literal values, so `DEFAULT 0` -> `DEFAULT 1` would look the same.)
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from pglast import parser
from pglast.stream import RawStream

from dr_pipelines.core.errors import MigrationError


@dataclass(frozen=True)
class Statement:
    index: int  # 0-based position in the script
    line: int  # 1-based line where the statement starts
    sql: str  # the statement's text as written (no trailing semicolon)


def _parse(sql: str, name: str) -> tuple:
    try:
        return parser.parse_sql(sql)
    except parser.ParseError as exc:
        message, offset = (exc.args + (None,))[:2]
        line = sql.count("\n", 0, offset) + 1 if isinstance(offset, int) else None
        where = f" at line {line}" if line else ""
        raise MigrationError(f"{name} does not parse{where}: {message}", fix="correct the SQL syntax") from None


def split_statements(sql: str, name: str = "migration") -> list[Statement]:
    """One Statement per SQL statement, so each can be run, timed and lock-inspected alone."""
    out = []
    for i, raw in enumerate(_parse(sql, name)):
        start = raw.stmt_location
        text = sql[start : start + raw.stmt_len] if raw.stmt_len else sql[start:]
        out.append(Statement(i, sql.count("\n", 0, start) + 1, text.strip().rstrip(";").strip()))
    return out


def fingerprint(sql: str, name: str = "migration") -> str:
    """sha256 over the deparsed statements: equal for two scripts that differ only in formatting."""
    canonical = ";\n".join(RawStream()(raw.stmt) for raw in _parse(sql, name))
    return hashlib.sha256(canonical.encode()).hexdigest()
