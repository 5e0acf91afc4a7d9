"""What the server says about archiving: how far behind it is and how big pg_wal has grown.

PostgreSQL never drops un-archived WAL: when storage is unreachable pg_wal grows until the disk
is full and the server stops. These numbers drive the alerts that must fire well before that.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from dr_pipelines.core.errors import DrpError
from dr_pipelines.core.pg.connect import connect
from dr_pipelines.core.storage import Storage
from dr_pipelines.core.wal.archive import read_sidecar

ARCHIVING_FIX = ("in postgresql.conf set wal_level = replica, archive_mode = on and archive_command = the line "
                 "`drp wal archive-command --socket …` prints, then restart PostgreSQL (archive_mode and wal_level "
                 "need a restart); docs/wal.md, Settings")


class WalArchivingOffError(DrpError):
    """The source server does not archive WAL: nothing reaches the archive, point-in-time recovery is impossible."""


@dataclass(frozen=True)
class PgWalState:
    current_wal: str  # the segment being written (not complete, so not archivable yet)
    wal_level: str
    archive_mode: str
    archive_command_runs_drp: bool | None  # None: this role may not read archive_command (its text may hold secrets: not kept)
    archive_library: str
    archive_timeout_s: int
    last_archived_wal: str | None
    last_archived_time: datetime | None
    failed_count: int
    last_failed_wal: str | None
    last_failed_time: datetime | None
    ready_count: int  # completed segments waiting for archive_command
    oldest_ready_age_s: float | None  # the archive lag: how long the oldest waiting segment has waited
    pg_wal_bytes: int

    def as_dict(self) -> dict[str, Any]:
        return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in asdict(self).items()}


def read_pg_wal_state(dsn: str) -> PgWalState:
    """One read-only look (needs superuser or pg_monitor for pg_ls_waldir/pg_ls_archive_statusdir).

    The segment being written is the one holding the *next* byte: pg_walfile_name(lsn) names the segment of
    byte lsn - 1, so right after a switch (an idle server after archive_timeout) it would name the segment
    just completed and archived, and verify would never notice that one missing from the archive.
    """
    with connect(dsn, autocommit=True) as conn:
        current, level, mode, command, library, timeout = conn.execute(
            "SELECT pg_walfile_name(pg_current_wal_lsn() + 1), current_setting('wal_level'), current_setting('archive_mode'),"
            " (SELECT setting FROM pg_settings WHERE name = 'archive_command'),"
            " coalesce((SELECT setting FROM pg_settings WHERE name = 'archive_library'), ''),"
            " extract(epoch FROM current_setting('archive_timeout')::interval)::int"
        ).fetchone()
        archived_wal, archived_at, failed, failed_wal, failed_at = conn.execute(
            "SELECT last_archived_wal, last_archived_time, failed_count, last_failed_wal, last_failed_time"
            " FROM pg_stat_archiver"
        ).fetchone()
        ready, oldest = conn.execute(
            "SELECT count(*), extract(epoch FROM now() - min(modification))::float8"
            " FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready'"
        ).fetchone()
        wal_bytes = conn.execute("SELECT coalesce(sum(size), 0)::bigint FROM pg_ls_waldir()").fetchone()[0]
    return PgWalState(current, level, mode, None if command is None else runs_drp(command), library, timeout, archived_wal, archived_at, failed, failed_wal, failed_at, ready,
                      oldest, wal_bytes)


def server_wal_state(dsn: str) -> tuple[PgWalState | None, str]:
    """The server's archiving state, or None with the reason (callers go on from storage alone without it)."""
    try:
        return read_pg_wal_state(dsn), "ok"
    except DrpError as exc:
        return None, exc.problem


def wal_alerts(state: PgWalState, *, lag_limit_s: float, pg_wal_limit_bytes: int) -> list[str]:
    """Human-readable alerts; empty when archiving keeps up."""
    alerts = []
    off = archiving_off(state)
    if off:
        alerts.append(f"{off}; fix: {ARCHIVING_FIX}")
    if state.oldest_ready_age_s is not None and state.oldest_ready_age_s > lag_limit_s:
        alerts.append(f"WAL archive lag {state.oldest_ready_age_s:.0f} s > {lag_limit_s:.0f} s: {state.ready_count} "
                      f"segment(s) waiting, last failure on {state.last_failed_wal or '-'}")
    if state.pg_wal_bytes > pg_wal_limit_bytes:
        alerts.append(f"pg_wal holds {state.pg_wal_bytes:,} bytes > {pg_wal_limit_bytes:,}: archiving is behind "
                      "and the disk will fill; fix the archive target (never delete WAL by hand)")
    return alerts


def archive_is_current(state: PgWalState | None, storage: Storage, newest_name: str) -> bool:
    """Whether the server is caught up (``caught_up``) into this archive, whose newest segment is ``newest_name``."""
    if state is None or state.last_archived_wal is None:
        return False
    here = state.last_archived_wal == newest_name or read_sidecar(storage, state.last_archived_wal) is not None
    return caught_up(state, here)


def caught_up(state: PgWalState, archived_here: bool) -> bool:
    """Nothing completed waits: no segment is .ready, the last failure (if any) was retried successfully, and
    the server's last archived file is in this archive (``archived_here``). Commits in the open segment are
    not seen here; archive_timeout and the archiver's --switch-after bound how long they stay open."""
    failed_since = state.last_failed_time is not None and (
        state.last_archived_time is None or state.last_failed_time > state.last_archived_time)
    return state.archive_mode != "off" and state.ready_count == 0 and not failed_since and archived_here


def archiving_off(state: PgWalState) -> str | None:
    """Why the server archives no WAL at all (wal_level minimal, archive_mode off), or None."""
    reasons = [f"wal_level is {state.wal_level}"] if state.wal_level == "minimal" else []
    if state.archive_mode == "off":
        reasons.append("archive_mode is off")
    if not reasons:
        return None
    return " and ".join(reasons) + ": the server archives no WAL, point-in-time recovery is impossible"


def require_archiving(state: PgWalState) -> None:
    """WalArchivingOffError unless the server archives WAL (checked by verify and the archiver)."""
    off = archiving_off(state)
    if off:
        raise WalArchivingOffError(off, fix=ARCHIVING_FIX)


def archiving_warnings(state: PgWalState) -> list[str]:
    """Settings that archive, but not through drp: the archive this repository checks gets nothing."""
    if archiving_off(state):
        return []
    if state.archive_library:
        return [f"archive_library = {state.archive_library!r} is set: PostgreSQL ignores archive_command and "
                "archives through that module, not through drp; clear it (restart) to archive with drp"]
    if state.archive_command_runs_drp is False:
        return ["archive_command does not run drp: segments do not reach this archive; set it to the line "
                "`drp wal archive-command --socket …` prints, then reload"]
    return []


def runs_drp(command: str) -> bool:
    """The client of `drp wal archive-command`, or `drp wal push` itself."""
    return "core/wal/client.py" in command or " wal push " in f" {command} "
