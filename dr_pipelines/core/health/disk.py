"""`drp health`'s disk section: free space where the data directory and the WAL live."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import psycopg

from dr_pipelines.core.health.report import (
    CRITICAL,
    DISK_FREE_CRITICAL_PCT,
    DISK_FREE_WARN_PCT,
    LOCAL_HOSTS,
    OK,
    UNKNOWN,
    WARN,
    Context,
    Section,
    human_size,
    worst,
)


def disk_section(ctx: Context) -> Section:
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
    summary = f"{data_dir}: {free_pct}% free ({human_size(usage.free)} of {human_size(usage.total)})"
    wal = _wal_disk(path)
    if wal is not None:
        details["wal_directory"] = wal
        status = worst(status, _disk_status(wal["percent_free"]))
        summary += f"; pg_wal on {wal['path']}: {wal['percent_free']}% free"
    return Section("disk", status, summary, details)


def _disk_status(free_pct: float) -> str:
    if free_pct < DISK_FREE_CRITICAL_PCT:
        return CRITICAL
    if free_pct < DISK_FREE_WARN_PCT:
        return WARN
    return OK


def _same_server(ctx: Context, data_dir: Path) -> bool | None:
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
