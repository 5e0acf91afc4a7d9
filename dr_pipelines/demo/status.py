"""`drp demo status`: the demo database and the Dagster UI, checked for real."""

from __future__ import annotations

from typing import Any

import psycopg
from rich.console import Console

from dr_pipelines.core.errors import DrpError
from dr_pipelines.core.pg.cluster import LocalCluster
from dr_pipelines.demo.stack import DEMO_DB, DemoPaths, cluster_exists, restorable_backup
from dr_pipelines.demo.ui import LOCATION, code_locations


def demo_status(ui_url: str) -> dict[str, Any]:
    paths = DemoPaths.default()
    report: dict[str, Any] = {"demo_dir": str(paths.root), "database": None, "newest_backup": None, "ui": None, "ok": False}
    if cluster_exists(paths):
        cluster = LocalCluster.attach(paths.pg)
        db: dict[str, Any] = {"dsn": cluster.dsn(DEMO_DB), "running": cluster.is_running()}
        if db["running"]:
            try:
                with psycopg.connect(cluster.dsn(DEMO_DB), connect_timeout=5) as conn:
                    db["clinics"] = conn.execute("SELECT count(*) FROM clinics").fetchone()[0]
                    db["size_bytes"] = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
            except psycopg.Error as exc:
                db["error"] = str(exc).strip().splitlines()[0]
        report["database"] = db
    report["newest_backup"] = restorable_backup(paths)
    try:
        locations = [loc for loc in code_locations(ui_url) if loc.name == LOCATION]
        report["ui"] = {"url": ui_url, "location_loaded": bool(locations) and not locations[0].error}
        if locations:
            loc = locations[0]
            report["ui"].update(assets=loc.assets, schedules=loc.schedules, sensors=loc.sensors, error=loc.error)
    except DrpError as exc:
        report["ui"] = {"url": ui_url, "location_loaded": False, "error": exc.problem}
    db_ok = bool(report["database"] and report["database"].get("clinics"))
    report["ok"] = db_ok and report["ui"]["location_loaded"]
    return report


def print_report(report: dict[str, Any], console: Console) -> None:
    db = report["database"]
    if not db:
        console.print("database: no demo cluster (run `drp demo up`)")
    elif not db["running"]:
        console.print("database: stopped (run `drp demo up`)")
    else:
        console.print(f"database: up, {db.get('clinics', '?')} clinics, {db.get('size_bytes', 0):,} bytes  ({db['dsn']})")
    console.print(f"newest backup: {report['newest_backup'] or 'none yet'}")
    ui = report["ui"]
    if ui["location_loaded"]:
        console.print(f"UI: {ui['url']} serves location '{LOCATION}' with assets {', '.join(ui['assets'])}")
        for kind in ("schedules", "sensors"):
            for name, state in ui[kind].items():
                console.print(f"  {kind[:-1]} {name}: {state}")
    else:
        console.print(f"UI: {ui['url']}: {ui.get('error') or 'location not loaded'}")
