"""`drp health`: a read-only look at a live PostgreSQL server for incident response.

One report, one section per concern (connectivity, server, databases, connections,
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

import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

from dr_pipelines.core.errors import DatabaseError
from dr_pipelines.core.pg.connect import connect, describe, parse_dsn
from dr_pipelines.core.pg.profile import server_identity

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
        reason = _scrub(exc.problem, params.get("password"))
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
            reason = _scrub(_first_line(exc), params.get("password"))
            sections = [Section("connectivity", CRITICAL, f"connected, but the first query failed: {reason}",
                                {"reachable": True, "connect_ms": connect_ms, "error": reason})]
            sections += [Section(name, UNKNOWN, "not checked: first query failed") for name in SECTIONS[1:]]
            return HealthReport(target, checked_at, True, sections)
        sections = [Section("connectivity", OK, f"connected in {connect_ms:g} ms as {user}"
                            + (" (superuser)" if superuser else ""),
                            {"reachable": True, "connect_ms": connect_ms, "user": user, "superuser": superuser})]
        ctx = _Context(conn, params, superuser or read_all_stats)
        checks: list[tuple[str, Callable[[], Section]]] = [
            ("server", lambda: _server(ctx)),
            ("databases", lambda: _databases(ctx)),
            ("connections", lambda: _connections(ctx)),
            ("long_running", lambda: _long_running(ctx, long_running_after, include_queries)),
            ("replication", lambda: _replication(ctx)),
            ("archiving", lambda: _archiving(ctx)),
            ("disk", lambda: _disk(ctx)),
        ]
        for name, check in checks:
            sections.append(_guarded(name, check))
    return HealthReport(target, checked_at, True, sections)


# -- plumbing ----------------------------------------------------------------------------------


@dataclass
class _Context:
    conn: psycopg.Connection
    params: dict[str, str]
    sees_all_stats: bool
    in_recovery: bool | None = None
    start_time: datetime | None = None


def _guarded(name: str, check: Callable[[], Section]) -> Section:
    """A section whose queries failed still appears: privileges -> unknown, anything else -> warn."""
    try:
        return check()
    except psycopg.errors.InsufficientPrivilege as exc:
        return Section(name, UNKNOWN, f"not visible to this role: {_first_line(exc)}", {"error": _first_line(exc)})
    except psycopg.Error as exc:
        return Section(name, WARN, f"check failed: {_first_line(exc)}", {"error": _first_line(exc)})


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _scrub(text: str, password: str | None) -> str:
    if password and len(password) >= 3:
        text = text.replace(password, "********")
    return text


def _worst(*statuses: str) -> str:
    return max(statuses, key=lambda s: _RANK.get(s, -1)) if statuses else OK


def _duration(seconds: float | None) -> str:
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


def _bytes(n: float | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return str(n)


def _iso(value: datetime | None) -> str | None:
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


# -- sections ----------------------------------------------------------------------------------


def _server(ctx: _Context) -> Section:
    ident = server_identity(ctx.conn)
    start_time, uptime, in_recovery = ctx.conn.execute(
        "SELECT pg_postmaster_start_time(), extract(epoch FROM clock_timestamp() - pg_postmaster_start_time())::float8,"
        " pg_is_in_recovery()"
    ).fetchone()
    ctx.in_recovery, ctx.start_time = in_recovery, start_time
    role = "standby" if in_recovery else "primary"
    return Section("server", OK, f"PostgreSQL {ident.version}, {role}, up {_duration(uptime)}", {
        "version": ident.version, "version_num": ident.version_num, "major": ident.major,
        "system_identifier": ident.system_identifier, "role": role, "in_recovery": in_recovery,
        "started_at": _iso(start_time), "uptime_seconds": round(uptime, 1),
    })


def _databases(ctx: _Context) -> Section:
    rows = ctx.conn.execute(
        """
        SELECT d.datname, d.datistemplate, d.datallowconn, d.datconnlimit = -2 AS invalid,
               (has_database_privilege(d.oid, 'CONNECT') OR %(stats)s) AS may_size,
               CASE WHEN d.datconnlimit <> -2 AND (has_database_privilege(d.oid, 'CONNECT') OR %(stats)s)
                    THEN pg_database_size(d.oid) END,
               age(d.datfrozenxid)
        FROM pg_database d ORDER BY d.datname
        """,
        {"stats": ctx.sees_all_stats},
    ).fetchall()
    databases = []
    for name, template, allow_conn, invalid, may_size, size, xid_age in rows:
        entry: dict[str, Any] = {"name": name, "size_bytes": size, "template": template,
                                 "allow_connections": allow_conn, "xid_age": xid_age}
        if invalid:
            entry["note"] = "invalid (an interrupted DROP DATABASE): drop it"
        elif not may_size:
            entry["note"] = "size not visible: no CONNECT privilege"
        databases.append(entry)
    status = OK
    notes = []
    wraparound = [d for d in databases if d["xid_age"] is not None and d["xid_age"] >= XID_AGE_WARN]
    if wraparound:
        oldest = max(wraparound, key=lambda d: d["xid_age"])
        status = CRITICAL if oldest["xid_age"] >= XID_AGE_CRITICAL else WARN
        notes.append(f"transaction ID wraparound approaching in {oldest['name']} (age {oldest['xid_age']:,})")
    invalid_dbs = [d["name"] for d in databases if "invalid" in d.get("note", "")]
    if invalid_dbs:
        status = _worst(status, WARN)
        notes.append(f"invalid: {', '.join(invalid_dbs)}")
    sized = [d for d in databases if d["size_bytes"] is not None]
    total = sum(d["size_bytes"] for d in sized)
    user_dbs = [d for d in sized if not d["template"]]
    summary = f"{len(databases)} databases, {_bytes(total)} total"
    if user_dbs:
        largest = max(user_dbs, key=lambda d: d["size_bytes"])
        summary += f" (largest {largest['name']} {_bytes(largest['size_bytes'])})"
    if len(sized) < len(databases):
        summary += f", {len(databases) - len(sized)} not sized"
    if notes:
        summary += "; " + "; ".join(notes)
    return Section("databases", status, summary, {"total_bytes": total, "databases": databases})


def _connections(ctx: _Context) -> Section:
    used, max_conn, reserved = ctx.conn.execute(
        "SELECT (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'),"
        " current_setting('max_connections')::int, current_setting('superuser_reserved_connections')::int"
    ).fetchone()
    by_state = dict(ctx.conn.execute(
        "SELECT coalesce(state, 'not visible'), count(*) FROM pg_stat_activity"
        " WHERE backend_type = 'client backend' GROUP BY 1 ORDER BY 1"
    ).fetchall())
    pct = round(100.0 * used / max_conn, 1) if max_conn else None
    available = max_conn - reserved
    if used >= available:
        status = CRITICAL
    elif pct is not None and pct > CONNECTIONS_WARN_PCT:
        status = WARN
    else:
        status = OK
    states = ", ".join(f"{n} {s}" for s, n in sorted(by_state.items()))
    return Section("connections", status, f"{used} of {max_conn} used ({pct}%)" + (f": {states}" if states else ""), {
        "used": used, "max_connections": max_conn, "superuser_reserved": reserved, "percent_used": pct,
        "by_state": by_state,
    })


def _long_running(ctx: _Context, threshold: timedelta, include_queries: bool) -> Section:
    rows = ctx.conn.execute(
        """
        SELECT pid, usename, datname, state, backend_type, host(client_addr), wait_event_type, wait_event,
               xact_start, extract(epoch FROM clock_timestamp() - xact_start)::float8,
               left(query, 1000), length(query)
        FROM pg_stat_activity
        WHERE xact_start IS NOT NULL AND clock_timestamp() - xact_start > %s
          AND pid <> pg_backend_pid() AND backend_type = 'client backend'
        ORDER BY xact_start
        """,
        (threshold,),
    ).fetchall()
    transactions = []
    for pid, user, db, state, btype, addr, wtype, wevent, xstart, age, head, length in rows:
        visible = head is not None and head != "<insufficient privilege>"
        entry: dict[str, Any] = {
            "pid": pid, "user": user, "database": db, "state": state, "backend_type": btype, "client_addr": addr,
            "wait_event": f"{wtype}:{wevent}" if wtype else None, "xact_start": _iso(xstart),
            "age_seconds": round(age, 1),
            "query_length": length if visible else None,
            "query_keyword": leading_keyword(head) if visible else None,
        }
        if include_queries:
            entry["query"] = head[:QUERY_PREVIEW_CHARS] if visible else None
        transactions.append(entry)
    prepared = [
        {"gid": gid, "owner": owner, "database": db, "prepared_at": _iso(at), "age_seconds": round(age, 1)}
        for gid, owner, db, at, age in ctx.conn.execute(
            "SELECT gid, owner, database, prepared, extract(epoch FROM clock_timestamp() - prepared)::float8"
            " FROM pg_prepared_xacts WHERE clock_timestamp() - prepared > %s ORDER BY prepared",
            (threshold,),
        ).fetchall()
    ]
    details = {
        "threshold_seconds": threshold.total_seconds(), "visibility": "all" if ctx.sees_all_stats else "own role only",
        "query_text_included": include_queries, "transactions": transactions, "prepared_transactions": prepared,
    }
    if not transactions and not prepared:
        return Section("long_running", OK, f"none open longer than {_duration(threshold.total_seconds())}", details)
    parts = []
    if transactions:
        oldest = transactions[0]
        parts.append(f"{len(transactions)} transaction(s) open longer than {_duration(threshold.total_seconds())},"
                     f" oldest {_duration(oldest['age_seconds'])} (pid {oldest['pid']} {oldest['user']}@"
                     f"{oldest['database']}, {oldest['state']})")
    if prepared:
        parts.append(f"{len(prepared)} prepared transaction(s) older than {_duration(threshold.total_seconds())}")
    return Section("long_running", WARN, "; ".join(parts), details)


def _replication(ctx: _Context) -> Section:
    if ctx.in_recovery is None:
        ctx.in_recovery = ctx.conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]
    return _standby_replication(ctx) if ctx.in_recovery else _primary_replication(ctx)


def _primary_replication(ctx: _Context) -> Section:
    standbys = [
        {"application_name": app, "client_addr": addr, "state": state, "sync_state": sync,
         "sent_lag_bytes": sent_lag, "replay_lag_bytes": replay_lag,
         "replay_lag_seconds": round(replay_s, 3) if replay_s is not None else None}
        for app, addr, state, sync, sent_lag, replay_lag, replay_s in ctx.conn.execute(
            """
            SELECT application_name, host(client_addr), state, sync_state,
                   pg_wal_lsn_diff(pg_current_wal_lsn(), sent_lsn)::bigint,
                   pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::bigint,
                   extract(epoch FROM replay_lag)::float8
            FROM pg_stat_replication ORDER BY application_name, client_addr
            """
        ).fetchall()
    ]
    slots = [
        {"slot_name": name, "slot_type": stype, "active": active, "wal_status": wal_status, "retained_bytes": retained}
        for name, stype, active, wal_status, retained in ctx.conn.execute(
            "SELECT slot_name, slot_type, active, wal_status,"
            " pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint FROM pg_replication_slots ORDER BY slot_name"
        ).fetchall()
    ]
    status, notes = OK, []
    # Without pg_read_all_stats the state is NULL: not a finding.
    not_streaming = [s for s in standbys if s["state"] is not None and s["state"] != "streaming"]
    if not_streaming:
        status = WARN
        notes.append(f"{len(not_streaming)} not streaming ({', '.join(str(s['state']) for s in not_streaming)})")
    lost = [s["slot_name"] for s in slots if s["wal_status"] == "lost"]
    inactive = [s["slot_name"] for s in slots if not s["active"] and s["wal_status"] != "lost"]
    if lost:
        status = CRITICAL
        notes.append(f"slot(s) lost their WAL: {', '.join(lost)}")
    if inactive:
        status = _worst(status, WARN)
        retained = sum(s["retained_bytes"] or 0 for s in slots if s["slot_name"] in inactive)
        notes.append(f"inactive slot(s) retaining {_bytes(retained)} of WAL: {', '.join(inactive)}")
    if standbys:
        worst_lag = max((s["replay_lag_bytes"] or 0) for s in standbys)
        summary = f"primary, {len(standbys)} standby(s), max replay lag {_bytes(worst_lag)}"
    else:
        summary = "primary, no standbys connected"
    if slots:
        summary += f", {len(slots)} slot(s)"
    if notes:
        summary += "; " + "; ".join(notes)
    return Section("replication", status, summary, {"role": "primary", "standbys": standbys, "slots": slots})


def _standby_replication(ctx: _Context) -> Section:
    receiver = ctx.conn.execute(
        """
        SELECT status, sender_host, sender_port, slot_name, last_msg_receipt_time,
               extract(epoch FROM clock_timestamp() - last_msg_receipt_time)::float8
        FROM pg_stat_wal_receiver
        """
    ).fetchone()
    replay_delay, behind_bytes, last_replay = ctx.conn.execute(
        """
        SELECT extract(epoch FROM clock_timestamp() - pg_last_xact_replay_timestamp())::float8,
               pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())::bigint,
               pg_last_xact_replay_timestamp()
        """
    ).fetchone()
    details: dict[str, Any] = {
        "role": "standby",
        "wal_receiver": None,
        "replay_delay_seconds": round(replay_delay, 3) if replay_delay is not None else None,
        "last_replayed_xact_time": _iso(last_replay),
        "received_not_replayed_bytes": behind_bytes,
    }
    if receiver is None:
        return Section("replication", WARN, "standby without a WAL receiver (not streaming; archive recovery only?)",
                       details)
    status, host, port, slot, last_msg, since_msg = receiver
    if status is None:
        return Section("replication", UNKNOWN, "standby; WAL receiver details need pg_read_all_stats", details)
    details["wal_receiver"] = {"status": status, "sender_host": host, "sender_port": port, "slot_name": slot,
                               "last_msg_receipt_time": _iso(last_msg),
                               "seconds_since_last_msg": round(since_msg, 1) if since_msg is not None else None}
    delay = (f"last replayed transaction {_duration(replay_delay)} ago" if replay_delay is not None
             else "no transaction replayed since start")
    summary = (f"standby, WAL receiver {status} from {host}:{port}, {delay},"
               f" {_bytes(behind_bytes)} received not yet replayed")
    return Section("replication", OK if status == "streaming" else WARN, summary, details)


def _archiving(ctx: _Context) -> Section:
    mode, library = ctx.conn.execute(
        "SELECT current_setting('archive_mode'), coalesce(current_setting('archive_library', true), '')"
    ).fetchone()
    details: dict[str, Any] = {"archive_mode": mode, "archive_library": library or None}
    # The command may hold credentials: only "is it set" is computed, on the server.
    try:
        command_set = ctx.conn.execute(
            "SELECT CASE WHEN c = '(disabled)' THEN NULL ELSE c <> '' END"
            " FROM current_setting('archive_command') AS c"
        ).fetchone()[0]
    except psycopg.errors.InsufficientPrivilege:
        command_set = None
        details["archive_command_visible"] = False
    details["archive_command_set"] = command_set
    row = ctx.conn.execute(
        "SELECT archived_count, last_archived_wal, last_archived_time, failed_count, last_failed_wal,"
        " last_failed_time, stats_reset FROM pg_stat_archiver"
    ).fetchone()
    archived, last_wal, last_time, failed, failed_wal, failed_time, reset = row
    failing = failed_time is not None and (last_time is None or failed_time > last_time)
    details.update({
        "archived_count": archived, "last_archived_wal": last_wal, "last_archived_time": _iso(last_time),
        "failed_count": failed, "last_failed_wal": failed_wal, "last_failed_time": _iso(failed_time),
        "stats_reset": _iso(reset), "failing": failing,
    })
    details["ready_segments"] = _ready_segments(ctx)
    if mode == "off":
        return Section("archiving", OK, "archive_mode off (no WAL archive: no point-in-time recovery)", details)
    counts = f"{archived} archived, {failed} failed"
    pending = f", {details['ready_segments']} segment(s) waiting" if details["ready_segments"] else ""
    if failing:
        return Section("archiving", CRITICAL, f"FAILING: archive_mode {mode}, {counts}, last failure {_iso(failed_time)}"
                       f" ({failed_wal}), last success {_iso(last_time) or 'never'}{pending}", details)
    if ctx.in_recovery and mode == "on":
        return Section("archiving", OK, f"archive_mode on, standby (the archiver runs only with 'always'); {counts}",
                       details)
    if command_set is False and not library:
        return Section("archiving", WARN, f"archive_mode {mode} but no archive_command or archive_library: "
                       f"WAL accumulates in pg_wal{pending}", details)
    last = f", last {last_wal} at {_iso(last_time)}" if last_time else ""
    return Section("archiving", OK, f"archive_mode {mode}, {counts}{last}{pending}", details)


def _ready_segments(ctx: _Context) -> int | None:
    """WAL segments waiting for the archiver (needs superuser or pg_monitor)."""
    try:
        return ctx.conn.execute(
            "SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready'"
        ).fetchone()[0]
    except psycopg.errors.InsufficientPrivilege:
        return None


def _disk(ctx: _Context) -> Section:
    try:
        data_dir = ctx.conn.execute("SELECT current_setting('data_directory')").fetchone()[0]
    except psycopg.errors.InsufficientPrivilege:
        return Section("disk", UNKNOWN, "data directory not visible: needs superuser or pg_read_all_settings",
                       {"visible": False, "data_directory": None})
    details: dict[str, Any] = {"visible": False, "data_directory": data_dir}
    path = Path(data_dir)
    try:
        exists = path.is_dir()
    except OSError:
        exists = False
    if not exists:
        return Section("disk", UNKNOWN, f"data directory {data_dir} is not on this machine", details)
    same = _same_server(ctx, path)
    details["same_server"] = same
    if same is False:
        return Section("disk", UNKNOWN, f"{data_dir} exists here but belongs to another server", details)
    host = ctx.params.get("host") or ctx.params.get("hostaddr") or ""
    if same is None and host not in LOCAL_HOSTS and not host.startswith("/"):
        return Section("disk", UNKNOWN, f"{data_dir} exists here but the server is remote (could not confirm)",
                       details)
    usage = shutil.disk_usage(path)
    free_pct = round(100.0 * usage.free / usage.total, 1) if usage.total else 0.0
    details.update({"visible": True, "total_bytes": usage.total, "free_bytes": usage.free, "used_bytes": usage.used,
                    "percent_free": free_pct})
    status = _disk_status(free_pct)
    summary = f"{data_dir}: {free_pct}% free ({_bytes(usage.free)} of {_bytes(usage.total)})"
    wal = _wal_disk(path)
    if wal is not None:
        details["wal_directory"] = wal
        status = _worst(status, _disk_status(wal["percent_free"]))
        summary += f"; pg_wal on {wal['path']}: {wal['percent_free']}% free"
    return Section("disk", status, summary, details)


def _disk_status(free_pct: float) -> str:
    if free_pct < DISK_FREE_CRITICAL_PCT:
        return CRITICAL
    if free_pct < DISK_FREE_WARN_PCT:
        return WARN
    return OK


def _same_server(ctx: _Context, data_dir: Path) -> bool | None:
    """postmaster.pid names the running server's port and start time; None when we may not read it."""
    try:
        lines = (data_dir / "postmaster.pid").read_text().splitlines()
        started, port = int(lines[2]), int(lines[3])
    except (OSError, ValueError, IndexError):
        return None
    server_port = int(ctx.conn.execute("SELECT current_setting('port')").fetchone()[0])
    if ctx.start_time is None:
        return port == server_port
    return port == server_port and abs(started - ctx.start_time.timestamp()) <= 2


def _wal_disk(data_dir: Path) -> dict[str, Any] | None:
    """pg_wal when it lives on another file system (a symlink at initdb --waldir)."""
    try:
        wal = (data_dir / "pg_wal").resolve()
        if os.stat(wal).st_dev == os.stat(data_dir).st_dev:
            return None
        usage = shutil.disk_usage(wal)
    except OSError:
        return None
    return {"path": str(wal), "total_bytes": usage.total, "free_bytes": usage.free,
            "percent_free": round(100.0 * usage.free / usage.total, 1) if usage.total else 0.0}

