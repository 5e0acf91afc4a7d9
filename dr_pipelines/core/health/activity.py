"""`drp health` sections about what the server is doing: server, databases, connections, long-running
transactions."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from dr_pipelines.core.health.report import (
    CONNECTIONS_WARN_PCT,
    CRITICAL,
    OK,
    QUERY_PREVIEW_CHARS,
    WARN,
    XID_AGE_CRITICAL,
    XID_AGE_WARN,
    Context,
    Section,
    human_duration,
    human_size,
    iso_or_none,
    leading_keyword,
    worst,
)
from dr_pipelines.core.pg.profile import server_identity


def server_section(ctx: Context) -> Section:
    ident = server_identity(ctx.conn)
    start_time, uptime, in_recovery = ctx.conn.execute(
        "SELECT pg_postmaster_start_time(), extract(epoch FROM clock_timestamp() - pg_postmaster_start_time())::float8,"
        " pg_is_in_recovery()"
    ).fetchone()
    ctx.in_recovery, ctx.start_time = in_recovery, start_time
    role = "standby" if in_recovery else "primary"
    return Section("server", OK, f"PostgreSQL {ident.version}, {role}, up {human_duration(uptime)}", {
        "version": ident.version, "version_num": ident.version_num, "major": ident.major,
        "system_identifier": ident.system_identifier, "role": role, "in_recovery": in_recovery,
        "started_at": iso_or_none(start_time), "uptime_seconds": round(uptime, 1),
    })


def databases_section(ctx: Context) -> Section:
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
        status = worst(status, WARN)
        notes.append(f"invalid: {', '.join(invalid_dbs)}")
    sized = [d for d in databases if d["size_bytes"] is not None]
    total = sum(d["size_bytes"] for d in sized)
    user_dbs = [d for d in sized if not d["template"]]
    summary = f"{len(databases)} databases, {human_size(total)} total"
    if user_dbs:
        largest = max(user_dbs, key=lambda d: d["size_bytes"])
        summary += f" (largest {largest['name']} {human_size(largest['size_bytes'])})"
    if len(sized) < len(databases):
        summary += f", {len(databases) - len(sized)} not sized"
    if notes:
        summary += "; " + "; ".join(notes)
    return Section("databases", status, summary, {"total_bytes": total, "databases": databases})


def connections_section(ctx: Context) -> Section:
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


def long_running_section(ctx: Context, threshold: timedelta, include_queries: bool) -> Section:
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
            "wait_event": f"{wtype}:{wevent}" if wtype else None, "xact_start": iso_or_none(xstart),
            "age_seconds": round(age, 1),
            "query_length": length if visible else None,
            "query_keyword": leading_keyword(head) if visible else None,
        }
        if include_queries:
            entry["query"] = head[:QUERY_PREVIEW_CHARS] if visible else None
        transactions.append(entry)
    prepared = [
        {"gid": gid, "owner": owner, "database": db, "prepared_at": iso_or_none(at), "age_seconds": round(age, 1)}
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
        return Section("long_running", OK, f"none open longer than {human_duration(threshold.total_seconds())}", details)
    parts = []
    if transactions:
        oldest = transactions[0]
        parts.append(f"{len(transactions)} transaction(s) open longer than {human_duration(threshold.total_seconds())},"
                     f" oldest {human_duration(oldest['age_seconds'])} (pid {oldest['pid']} {oldest['user']}@"
                     f"{oldest['database']}, {oldest['state']})")
    if prepared:
        parts.append(f"{len(prepared)} prepared transaction(s) older than {human_duration(threshold.total_seconds())}")
    return Section("long_running", WARN, "; ".join(parts), details)
