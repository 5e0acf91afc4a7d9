"""`drp health` sections about WAL leaving the server: replication (as primary or standby) and archiving."""

from __future__ import annotations

from typing import Any

import psycopg

from dr_pipelines.core.health.report import (
    CRITICAL,
    OK,
    UNKNOWN,
    WARN,
    Context,
    Section,
    human_duration,
    human_size,
    iso_or_none,
    worst,
)


def replication_section(ctx: Context) -> Section:
    if ctx.in_recovery is None:
        ctx.in_recovery = ctx.conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]
    return _standby_replication(ctx) if ctx.in_recovery else _primary_replication(ctx)


def _primary_replication(ctx: Context) -> Section:
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
        status = worst(status, WARN)
        retained = sum(s["retained_bytes"] or 0 for s in slots if s["slot_name"] in inactive)
        notes.append(f"inactive slot(s) retaining {human_size(retained)} of WAL: {', '.join(inactive)}")
    if standbys:
        worst_lag = max((s["replay_lag_bytes"] or 0) for s in standbys)
        summary = f"primary, {len(standbys)} standby(s), max replay lag {human_size(worst_lag)}"
    else:
        summary = "primary, no standbys connected"
    if slots:
        summary += f", {len(slots)} slot(s)"
    if notes:
        summary += "; " + "; ".join(notes)
    return Section("replication", status, summary, {"role": "primary", "standbys": standbys, "slots": slots})


def _standby_replication(ctx: Context) -> Section:
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
        "last_replayed_xact_time": iso_or_none(last_replay),
        "received_not_replayed_bytes": behind_bytes,
    }
    if receiver is None:
        return Section("replication", WARN, "standby without a WAL receiver (not streaming; archive recovery only?)",
                       details)
    status, host, port, slot, last_msg, since_msg = receiver
    if status is None:
        return Section("replication", UNKNOWN, "standby; WAL receiver details need pg_read_all_stats", details)
    details["wal_receiver"] = {"status": status, "sender_host": host, "sender_port": port, "slot_name": slot,
                               "last_msg_receipt_time": iso_or_none(last_msg),
                               "seconds_since_last_msg": round(since_msg, 1) if since_msg is not None else None}
    delay = (f"last replayed transaction {human_duration(replay_delay)} ago" if replay_delay is not None
             else "no transaction replayed since start")
    summary = (f"standby, WAL receiver {status} from {host}:{port}, {delay},"
               f" {human_size(behind_bytes)} received not yet replayed")
    return Section("replication", OK if status == "streaming" else WARN, summary, details)


def archiving_section(ctx: Context) -> Section:
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
        "archived_count": archived, "last_archived_wal": last_wal, "last_archived_time": iso_or_none(last_time),
        "failed_count": failed, "last_failed_wal": failed_wal, "last_failed_time": iso_or_none(failed_time),
        "stats_reset": iso_or_none(reset), "failing": failing,
    })
    details["ready_segments"] = _ready_segments(ctx)
    if mode == "off":
        return Section("archiving", OK, "archive_mode off (no WAL archive: no point-in-time recovery)", details)
    counts = f"{archived} archived, {failed} failed"
    pending = f", {details['ready_segments']} segment(s) waiting" if details["ready_segments"] else ""
    if failing:
        return Section("archiving", CRITICAL, f"FAILING: archive_mode {mode}, {counts}, last failure {iso_or_none(failed_time)}"
                       f" ({failed_wal}), last success {iso_or_none(last_time) or 'never'}{pending}", details)
    if ctx.in_recovery and mode == "on":
        return Section("archiving", OK, f"archive_mode on, standby (the archiver runs only with 'always'); {counts}",
                       details)
    if command_set is False and not library:
        return Section("archiving", WARN, f"archive_mode {mode} but no archive_command or archive_library: "
                       f"WAL accumulates in pg_wal{pending}", details)
    last = f", last {last_wal} at {iso_or_none(last_time)}" if last_time else ""
    return Section("archiving", OK, f"archive_mode {mode}, {counts}{last}{pending}", details)


def _ready_segments(ctx: Context) -> int | None:
    """WAL segments waiting for the archiver (needs superuser or pg_monitor)."""
    try:
        return ctx.conn.execute(
            "SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready'"
        ).fetchone()[0]
    except psycopg.errors.InsufficientPrivilege:
        return None
