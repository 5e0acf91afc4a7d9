"""`drp`: the on-call engineer's entry point. Thin: parse, call core, print (a table or --json).

Domain errors are printed as one message (problem + fix) without a traceback, exit non-zero.
"""

from __future__ import annotations

import sys
from importlib.metadata import version as _pkg_version
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from dr_pipelines.cli import backup as backup_cli
from dr_pipelines.cli import export as export_cli
from dr_pipelines.cli import health as health_cli
from dr_pipelines.cli import migrate as migrate_cli
from dr_pipelines.cli import retention as retention_cli
from dr_pipelines.cli import verify as verify_cli
from dr_pipelines.cli.common import emit_json, err, out, settings, settings_origin, state
from dr_pipelines.core import context
from dr_pipelines.core.errors import DrpError

app = typer.Typer(help="dr_pipelines: backups, verification, restores and DR drills for PostgreSQL.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
demo_app = typer.Typer(help="The local demo: a seeded clinic database and the Dagster UI.", no_args_is_help=True)
storage_app = typer.Typer(help="The storage target (local directory or S3).", no_args_is_help=True)
config_app = typer.Typer(help="Settings (DRP_* environment variables and an optional YAML file).", no_args_is_help=True)
db_app = typer.Typer(help="The source database.", no_args_is_help=True)
app.add_typer(demo_app, name="demo")
app.add_typer(storage_app, name="storage")
app.add_typer(config_app, name="config")
app.add_typer(db_app, name="db")
app.add_typer(backup_cli.backup_app, name="backup")
app.add_typer(backup_cli.key_app, name="key")
app.command("restore")(backup_cli.restore)
app.command("verify")(verify_cli.verify)
app.command("status")(verify_cli.status)
app.add_typer(verify_cli.drill_app, name="drill")
app.command("health")(health_cli.health)
app.command("export")(export_cli.export)
app.command("export-sweep")(export_cli.sweep)
app.add_typer(migrate_cli.migrate_app, name="migrate")
app.add_typer(retention_cli.retention_app, name="retention")
app.add_typer(retention_cli.archive_app, name="archive")

def _version(value: bool) -> None:
    if value:
        out.print(f"drp {_pkg_version('dr_pipelines')}")
        raise typer.Exit()


@app.callback()
def _root(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML settings file (else DRP_CONFIG).", envvar="DRP_CONFIG"),
    _v: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    state["config"] = config


# -- config -----------------------------------------------------------------------------------


@config_app.command("show")
def config_show(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """Print the effective settings, secrets masked."""
    described = settings().describe()
    if as_json:
        emit_json(described)
        return
    out.print(f"settings from: {settings_origin()}")
    table = Table("key", "value")
    for key, value in described.items():
        table.add_row(key, "" if value is None else str(value))
    out.print(table)


# -- storage ----------------------------------------------------------------------------------


def _storage():  # type: ignore[no-untyped-def]
    return context.storage(settings())


@storage_app.command("check")
def storage_check() -> None:
    """Check that the storage target is reachable and usable."""
    storage = _storage()
    storage.check()
    out.print(f"ok: {storage.url}")


@storage_app.command("ls")
def storage_ls(
    prefix: str = typer.Argument("", help="Only keys under this prefix."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """List objects in the storage target."""
    objects = list(_storage().list(prefix))
    if as_json:
        emit_json([{"key": o.key, "size": o.size, "modified": o.modified.isoformat()} for o in objects])
        return
    table = Table("key", "bytes", "modified (UTC)")
    for o in objects:
        table.add_row(o.key, f"{o.size:,}", o.modified.strftime("%Y-%m-%d %H:%M:%S"))
    out.print(table)


# -- db ---------------------------------------------------------------------------------------


@db_app.command("profile")
def db_profile(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """Version, size, schema version and tables of the source database (read-only)."""
    from dr_pipelines.core.pg.profile import profile_database

    p = profile_database(settings().dsn)
    if as_json:
        emit_json(p.as_dict())
        return
    out.print(f"PostgreSQL {p.server_version}, database {p.database}, {p.size_bytes:,} bytes, "
              f"schema version {p.schema_version if p.schema_version is not None else 'untracked'}")
    table = Table("table", "bytes", "est. rows")
    for t in p.tables:
        table.add_row(t.name, f"{t.bytes:,}", f"{t.estimated_rows:,}")
    out.print(table)


# -- demo -------------------------------------------------------------------------------------


@demo_app.command("up")
def demo_up(
    clinics: int = typer.Option(5, min=1, help="Clinics (tenants) to generate."),
    scale: float = typer.Option(2.0, min=0.01, help="Size knob: rows per clinic grow linearly with it."),
    pg_port: Optional[int] = typer.Option(None, help="Port for the demo PostgreSQL (default: a free one)."),
    ui_host: str = typer.Option("127.0.0.1", help="Address the Dagster UI listens on."),
    ui_port: int = typer.Option(3000, help="Port of the Dagster UI."),
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
    if stack.first_backup(paths, cluster) != 0:
        err.print("warning: the first backup failed; the UI shows the failed run")
    if no_ui:
        for key, value in env.items():
            out.print(f"export {key}='{value}'")
        return
    err.print(f"starting the Dagster UI on port {ui_port} …")

    def waiting(seconds: float) -> None:
        err.print(f"  waiting for the Dagster UI to load the code location ({seconds:.0f} s)")

    def ready(url: str, problem: str | None) -> None:
        if problem:
            err.print(f"warning: the Dagster UI answers but the code location failed to load: {escape(problem[:500])}")
        err.print(f"Dagster UI: {url}  (Ctrl-C stops the demo)")

    raise typer.Exit(stack.run_ui(paths, cluster, host=ui_host, port=ui_port, on_ready=ready, waiting=waiting))


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


def main() -> None:
    try:
        app()
    except DrpError as exc:
        err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
