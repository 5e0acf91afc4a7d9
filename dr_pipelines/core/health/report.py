"""`drp health`'s vocabulary: statuses, thresholds, the report and its sections, and the helpers
every section shares (guarded queries, scrubbed errors, human units, the leading SQL keyword)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # psycopg only where a check runs: `drp` formats sizes with human_size without it
    import psycopg

OK, WARN, CRITICAL, UNKNOWN = "ok", "warn", "critical", "unknown"
_RANK = {OK: 0, WARN: 1, CRITICAL: 2}
EXIT_CODES = {OK: 0, WARN: 1, CRITICAL: 2}

SECTIONS = ("connectivity", "server", "databases", "connections", "long_running", "replication", "archiving", "disk")

# Thresholds (documented in the CLI help).
DISK_FREE_CRITICAL_PCT = 10.0
DISK_FREE_WARN_PCT = 20.0
CONNECTIONS_WARN_PCT = 90.0
XID_AGE_WARN = 1_000_000_000  # half-way to wraparound (2^31)
XID_AGE_CRITICAL = 1_500_000_000
QUERY_PREVIEW_CHARS = 200
STATEMENT_TIMEOUT = "15s"
LOCAL_HOSTS = {"", "localhost", "127.0.0.1", "::1"}


@dataclass
class Section:
    name: str
    status: str
    summary: str
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"status": self.status, "summary": self.summary, **self.details}


@dataclass
class HealthReport:
    target: str  # host:port/dbname, never credentials
    checked_at: datetime
    reachable: bool
    sections: list[Section]

    @property
    def status(self) -> str:
        known = [s.status for s in self.sections if s.status in _RANK]
        return max(known, key=_RANK.__getitem__) if known else UNKNOWN

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(self.status, 1)

    def section(self, name: str) -> Section:
        return next(s for s in self.sections if s.name == name)

    def as_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "checked_at": self.checked_at.isoformat(),
            "status": self.status,
            "reachable": self.reachable,
            "unknown_sections": [s.name for s in self.sections if s.status == UNKNOWN],
            "sections": {s.name: s.as_dict() for s in self.sections},
        }





@dataclass
class Context:
    conn: psycopg.Connection
    params: dict[str, str]
    sees_all_stats: bool
    in_recovery: bool | None = None
    start_time: datetime | None = None


def guarded(name: str, check: Callable[[], Section]) -> Section:
    """A section whose queries failed still appears: privileges -> unknown, anything else -> warn."""
    import psycopg

    try:
        return check()
    except psycopg.errors.InsufficientPrivilege as exc:
        return Section(name, UNKNOWN, f"not visible to this role: {first_line(exc)}", {"error": first_line(exc)})
    except psycopg.Error as exc:
        return Section(name, WARN, f"check failed: {first_line(exc)}", {"error": first_line(exc)})


def first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def scrub(text: str, password: str | None) -> str:
    if password and len(password) >= 3:
        text = text.replace(password, "********")
    return text


def worst(*statuses: str) -> str:
    return max(statuses, key=lambda s: _RANK.get(s, -1)) if statuses else OK


def human_duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    s = int(seconds)
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {s:02d}s"
    return f"{seconds:.1f}s" if seconds < 10 else f"{s}s"


def human_size(n: float | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return str(n)


def iso_or_none(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


_LEADING_NOISE = re.compile(r"(?:\s+|--[^\n]*(?:\n|$)|/\*.*?\*/|\()*", re.S)
_KEYWORD = re.compile(r"[A-Za-z]+")


def leading_keyword(query: str | None) -> str | None:
    """The first SQL keyword (SELECT, UPDATE, WITH, ...) after whitespace and comments."""
    if not query:
        return None
    rest = query[_LEADING_NOISE.match(query).end():]  # type: ignore[union-attr]
    match = _KEYWORD.match(rest)
    return match.group(0).upper() if match else None
