"""`drp health`: a read-only look at a live PostgreSQL server for incident response.

One report, one section per concern (health/activity.py, wal.py, disk.py; the shared
vocabulary in health/report.py) (connectivity, server, databases, connections,
long-running transactions, replication, WAL archiving, disk headroom), each with a
status ``ok | warn | critical | unknown`` and the numbers behind it.

Rules this module keeps:

* An unreachable server is a finding, not an exception: the report says
  ``reachable: False`` with libpq's reason, and never the password.
* Query text may hold PHI literals: it is reported only when asked (``include_queries``);
  otherwise only its length and leading SQL keyword.
* ``archive_command`` may hold credentials: only whether it is set ever leaves the server
  (the comparison runs in SQL, the command itself is never fetched).
* ``unknown`` means "PostgreSQL would not show us" (privileges, a data directory on
  another machine); it does not change the overall status, which is the worst of the
  ok/warn/critical sections. A catalog query that fails for another reason is a ``warn``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import psycopg

from dr_pipelines.core.errors import DatabaseError
from dr_pipelines.core.health.activity import (
    connections_section,
    databases_section,
    long_running_section,
    server_section,
)
from dr_pipelines.core.health.disk import disk_section
from dr_pipelines.core.health.report import (
    CRITICAL,
    DISK_FREE_CRITICAL_PCT,
    DISK_FREE_WARN_PCT,
    EXIT_CODES,
    OK,
    SECTIONS,
    STATEMENT_TIMEOUT,
    UNKNOWN,
    Context,
    HealthReport,
    Section,
    first_line,
    guarded,
    leading_keyword,
    scrub,
)
from dr_pipelines.core.health.wal import archiving_section, replication_section
from dr_pipelines.core.pg.connect import connect, describe, parse_dsn

__all__ = ["DISK_FREE_CRITICAL_PCT", "DISK_FREE_WARN_PCT", "EXIT_CODES", "SECTIONS", "HealthReport", "Section", "health_report",
           "leading_keyword"]


def health_report(
    dsn: str,
    *,
    long_running_after: timedelta = timedelta(minutes=5),
    include_queries: bool = False,
    connect_timeout: int = 5,
) -> HealthReport:
    """Check a live server. Read-only; raises only for a malformed DSN (ConfigError)."""
    params = parse_dsn(dsn)
    target = describe(dsn)
    checked_at = datetime.now(UTC)
    started = time.monotonic()
    try:
        conn = connect(dsn, autocommit=True, connect_timeout=connect_timeout, application_name="drp health")
    except DatabaseError as exc:
        reason = scrub(exc.problem, params.get("password"))
        sections = [Section("connectivity", CRITICAL, reason,
                            {"reachable": False, "error": reason, "connect_ms": None})]
        sections += [Section(name, UNKNOWN, "not checked: server unreachable") for name in SECTIONS[1:]]
        return HealthReport(target, checked_at, False, sections)
    connect_ms = round((time.monotonic() - started) * 1000, 1)
    with conn:
        try:
            conn.execute("SELECT set_config('statement_timeout', %s, false)", (STATEMENT_TIMEOUT,))
            user, superuser, read_all_stats = conn.execute(
                "SELECT current_user, rolsuper, pg_has_role(current_user, 'pg_read_all_stats', 'MEMBER')"
                " FROM pg_roles WHERE rolname = current_user"
            ).fetchone()
        except psycopg.Error as exc:  # connected, but not to a PostgreSQL that answers catalog queries
            reason = scrub(first_line(exc), params.get("password"))
            sections = [Section("connectivity", CRITICAL, f"connected, but the first query failed: {reason}",
                                {"reachable": True, "connect_ms": connect_ms, "error": reason})]
            sections += [Section(name, UNKNOWN, "not checked: first query failed") for name in SECTIONS[1:]]
            return HealthReport(target, checked_at, True, sections)
        sections = [Section("connectivity", OK, f"connected in {connect_ms:g} ms as {user}"
                            + (" (superuser)" if superuser else ""),
                            {"reachable": True, "connect_ms": connect_ms, "user": user, "superuser": superuser})]
        ctx = Context(conn, params, superuser or read_all_stats)
        checks: list[tuple[str, Callable[[], Section]]] = [
            ("server", lambda: server_section(ctx)),
            ("databases", lambda: databases_section(ctx)),
            ("connections", lambda: connections_section(ctx)),
            ("long_running", lambda: long_running_section(ctx, long_running_after, include_queries)),
            ("replication", lambda: replication_section(ctx)),
            ("archiving", lambda: archiving_section(ctx)),
            ("disk", lambda: disk_section(ctx)),
        ]
        for name, check in checks:
            sections.append(guarded(name, check))
    return HealthReport(target, checked_at, True, sections)
