"""`drp demo up|down|status`: the local demo stack."""

from __future__ import annotations

from typing import Optional

import typer
from rich.markup import escape

from dr_pipelines.cli.common import emit_json, err, out

demo_app = typer.Typer(help="The local demo: a seeded clinic database and the Dagster UI.", no_args_is_help=True)


@demo_app.command("up")
def demo_up(
    clinics: int = typer.Option(5, min=1, help="Clinics (tenants) to generate."),
    scale: float = typer.Option(2.0, min=0.01, help="Size knob: rows per clinic grow linearly with it."),
    pg_port: Optional[int] = typer.Option(None, help="Port for the demo PostgreSQL (default: a free one)."),
    ui_host: str = typer.Option("127.0.0.1", help="Address the Dagster UI listens on."),
    ui_port: int = typer.Option(3000, help="Port of the Dagster UI."),
    portal_port: int = typer.Option(8088, help="Port of the export portal (drp portal serve)."),
    no_ui: bool = typer.Option(False, "--no-ui", help="Only prepare the database, do not start Dagster."),
) -> None:
    """Start the demo: PostgreSQL seeded with clinic data, then `dagster dev` (Ctrl-C stops both)."""
    from dr_pipelines.demo import stack

    paths = stack.DemoPaths.default()

    def progress(table: str, rows: int) -> None:
        err.print(f"  seeded {table}: {rows:,} rows")

    if not no_ui:
        stack.check_ui_port(ui_host, ui_port)
    err.print(f"demo folder: {paths.root}")
    cluster = stack.ensure_database(paths, clinics=clinics, scale=scale, port=pg_port, progress=progress)
    env = stack.demo_env(paths, cluster)
    err.print(f"demo database: {env['DRP_SOURCE_DSN']}")
    err.print(f"demo settings for drp: {stack.write_cli_settings(paths, cluster)}  (in a second terminal: scripts/drp status)")
    paths.archiving.prepare()
    if paths.archiving.configure(cluster):
        err.print("WAL archiving switched on (archive_mode needs a restart: the demo database restarted once)")
    existing = stack.restorable_backup(paths)
    if existing:
        err.print(f"demo: backup {existing} in storage, no first backup needed")
    elif stack.first_backup(paths, cluster) != 0:
        err.print("warning: the first backup failed; the UI shows the failed run")
    if no_ui:
        for key, value in env.items():
            out.print(f"export {key}='{value}'")
        return
    archiver = paths.archiving.start()
    err.print(f"WAL archiver started (drp wal archiver --switch-after 30; log {paths.archiving.log_file})")
    portal = stack.start_portal(paths, cluster, host=ui_host, port=portal_port)
    clinic, token = stack.demo_token(cluster)
    err.print(f"export portal: the clinics' page on http://{ui_host}:{portal_port}/ (API: /openapi.json; log "
              f"{paths.root / 'portal.log'}); sign in there with this token of clinic {clinic}, valid for a day:")
    out.print(token, highlight=False, soft_wrap=True)
    err.print(f"starting the Dagster UI on port {ui_port} …")

    def waiting(seconds: float) -> None:
        err.print(f"  waiting for the Dagster UI to load the code location ({seconds:.0f} s)")

    def ready(url: str, problem: str | None) -> None:
        if problem:
            err.print(f"warning: the Dagster UI answers but the code location failed to load: {escape(problem[:500])}")
        err.print(f"Dagster UI: {url}  (Ctrl-C stops the demo)")

    try:
        code = stack.run_ui(paths, cluster, host=ui_host, port=ui_port, on_ready=ready, waiting=waiting,
                            archiver=archiver)
    finally:
        stack.stop_portal(portal)
    raise typer.Exit(code)


@demo_app.command("down")
def demo_down(purge: bool = typer.Option(False, "--purge", help="Also delete the demo's data, storage and instance.")) -> None:
    """Stop the demo PostgreSQL (and with --purge remove everything the demo made)."""
    from dr_pipelines.demo import stack

    out.print(stack.down(stack.DemoPaths.default(), purge=purge))


@demo_app.command("status")
def demo_status(
    ui_url: str = typer.Option("http://127.0.0.1:3000", help="Where the Dagster UI should answer."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Is the demo database up, and does the UI serve this code location (asked through GraphQL)?"""
    from dr_pipelines.demo import status

    report = status.demo_status(ui_url)
    if as_json:
        emit_json(report)
    else:
        status.print_report(report, out)
    if not report["ok"]:
        raise typer.Exit(1)
