"""`drp health`: is the live database all right? For the first minutes of an incident."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Optional

import typer
from rich.markup import escape
from rich.table import Table

from dr_pipelines.cli.common import emit_json, human_bytes, out, settings

_STYLE = {"ok": "green", "warn": "yellow", "critical": "bold red", "unknown": "dim"}


def _status(status: str) -> str:
    return f"[{_STYLE.get(status, '')}]{status.upper()}[/]"


def health(
    dsn: Optional[str] = typer.Option(
        None, "--dsn", help="Server to check (libpq DSN or URI). Default: the source DSN from settings."
    ),
    include_queries: bool = typer.Option(
        False, "--include-queries",
        help="Show the first 200 characters of long-running transactions' SQL. Off by default: "
             "query literals may hold patient data; without it only the length and leading keyword are shown.",
    ),
    long_running_minutes: int = typer.Option(
        5, "--long-running-minutes", min=0, help="A transaction open longer than this is reported (warn)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Health of a live PostgreSQL server, read-only: connectivity, version, uptime, database sizes, connections,
    long-running transactions, replication, WAL archiving, disk headroom of the data directory.

    Exit code: 0 ok, 1 warn, 2 critical (the worst section).
    Sections this role may not see (privileges, a remote data directory) are 'unknown' and do not count.
    A malformed DSN is an error: exit 2, message on stderr.

    Thresholds: free disk < 20% warn, < 10% critical.
    Connections > 90% of max_connections warn.
    Any transaction open longer than --long-running-minutes warn.
    WAL archiver failing critical. Server unreachable critical.
    """
    from dr_pipelines.core.health.checks import health_report

    report = health_report(
        dsn if dsn is not None else settings().dsn,
        long_running_after=timedelta(minutes=long_running_minutes),
        include_queries=include_queries,
    )
    data = report.as_dict()
    if as_json:
        emit_json(data)
    else:
        _print_text(data)
    raise typer.Exit(report.exit_code)


def _print_text(data: dict[str, Any]) -> None:
    sections = data["sections"]
    out.print(f"health of {escape(data['target'])} at {data['checked_at'][:19].replace('T', ' ')} UTC: "
              f"{_status(data['status'])}", highlight=False)
    table = Table("section", "status", "", box=None, show_header=False, pad_edge=False)
    for name, section in sections.items():
        table.add_row(name, _status(section["status"]), escape(section["summary"]))
    out.print(table, highlight=False)

    databases = sections["databases"].get("databases") or []
    if databases:
        dbs = Table("database", "size", "xid age", "", title="databases", title_justify="left")
        for d in sorted(databases, key=lambda d: -(d["size_bytes"] or 0)):
            note = "template" if d["template"] else ""
            if d.get("note"):
                note = f"{note}, {d['note']}" if note else d["note"]
            dbs.add_row(escape(d["name"]), human_bytes(d["size_bytes"]) if d["size_bytes"] is not None else "?",
                        f"{d['xid_age']:,}" if d["xid_age"] is not None else "?", escape(note))
        out.print(dbs, highlight=False)

    long_running = sections["long_running"]
    transactions = long_running.get("transactions") or []
    if transactions:
        # Lines, not a table: query text must not be cut to a column's width.
        out.print("long-running transactions:", highlight=False)
        for t in transactions:
            wait = f", waiting on {t['wait_event']}" if t["wait_event"] and t["state"] == "active" else ""
            if t["query_length"] is None:
                query = "query not visible to this role"
            else:
                query = f"{t['query_keyword'] or '?'} statement, {t['query_length']} chars"
            out.print(f"  pid {t['pid']} {escape(str(t['user']))}@{escape(str(t['database']))} {escape(str(t['state']))},"
                      f" open {t['age_seconds']:,.0f}s{escape(wait)}: {escape(query)}", highlight=False, soft_wrap=True)
            if long_running.get("query_text_included") and t.get("query"):
                out.print("    " + escape(" ".join(t["query"].split())), highlight=False, soft_wrap=True)

    standbys = sections["replication"].get("standbys") or []
    if standbys:
        rep = Table("standby", "address", "state", "sync", "sent lag", "replay lag", title="standbys",
                    title_justify="left")
        for s in standbys:
            rep.add_row(escape(s["application_name"] or ""), escape(s["client_addr"] or "local"), escape(str(s["state"])),
                        escape(str(s["sync_state"])), human_bytes(s["sent_lag_bytes"] or 0),
                        human_bytes(s["replay_lag_bytes"] or 0))
        out.print(rep, highlight=False)
