"""`drp`: the on-call engineer's entry point. Thin: parse, call core, print (a table or --json).

This module only assembles: each command group lives in the module of its name
(cli/backup.py is `drp backup`, cli/restore.py is `drp restore`, ...); shared helpers in cli/common.py.

Domain errors are printed as one message (problem + fix) without a traceback, exit non-zero.
"""

from __future__ import annotations

import gc

# No collections while the command modules import: every object they make lives until exit, and the
# collector walking them again and again was ~0.08 s of each command's start (main() freezes and re-enables).
gc.disable()

import sys  # noqa: E402
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from dr_pipelines.cli import archive, backup, config, db, demo, drill, export, health, key, migrate, restore, retention
from dr_pipelines.cli import portal as portal_cli
from dr_pipelines.cli import status as status_cli
from dr_pipelines.cli import storage as storage_cli
from dr_pipelines.cli import tenant as tenant_cli
from dr_pipelines.cli import verify as verify_cli
from dr_pipelines.cli import wal as wal_cli
from dr_pipelines.cli.common import err, out, state
from dr_pipelines.core.errors import DrpError
from dr_pipelines.core.pg.binaries import find_pg_binaries
from dr_pipelines.core.pg.tools import tool_version

app = typer.Typer(help="dr_pipelines: backups, verification, restores and DR drills for PostgreSQL.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
app.add_typer(demo.demo_app, name="demo")
app.add_typer(storage_cli.storage_app, name="storage")
app.add_typer(config.config_app, name="config")
app.add_typer(db.db_app, name="db")
app.add_typer(backup.backup_app, name="backup")
app.add_typer(key.key_app, name="key")
app.command("restore")(restore.restore)
app.command("verify")(verify_cli.verify)
app.command("status")(status_cli.status)
app.add_typer(drill.drill_app, name="drill")
app.command("health")(health.health)
app.command("export")(export.export)
app.command("export-sweep")(export.sweep)
app.add_typer(migrate.migrate_app, name="migrate")
app.add_typer(retention.retention_app, name="retention")
app.add_typer(archive.archive_app, name="archive")
app.add_typer(wal_cli.wal_app, name="wal")
app.add_typer(portal_cli.portal_app, name="portal")
app.add_typer(tenant_cli.tenant_app, name="tenant")


def _pg_client_version() -> str:
    """pg_dump's version line from the discovered binaries (what backups will run), or why there is none."""
    try:
        pg_dump = find_pg_binaries().tool("pg_dump")
        return f"{tool_version(pg_dump)[1]} ({pg_dump})"
    except DrpError as exc:
        return f"not found: {exc}"


def _version(value: bool) -> None:
    """drp's, the PostgreSQL client's and Dagster's versions: the three a bug report needs."""
    if value:
        from importlib.metadata import version as _pkg_version  # here: every other command starts without it

        out.print(f"drp {_pkg_version('dr_pipelines')}", highlight=False)
        out.print(f"PostgreSQL client: {escape(_pg_client_version())}", highlight=False)
        out.print(f"Dagster: {_pkg_version('dagster')}", highlight=False)
        raise typer.Exit()


@app.callback()
def _root(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML settings file (else DRP_CONFIG).", envvar="DRP_CONFIG"),
    _v: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    state["config"] = config


def main() -> None:
    """Run the command line. The garbage collector: what is imported by now is frozen (never walked again) and
    collection re-enabled for the command; at the end everything is frozen again, so the interpreter's
    collections at exit walk nothing (they were 0.15-0.2 s after a tenant restore; finalizers, atexit
    handlers and thread joins all still run)."""
    gc.freeze()
    gc.enable()
    try:
        app()
    except DrpError as exc:
        err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
    finally:
        gc.freeze()


if __name__ == "__main__":
    main()
