"""`drp config show`: the effective settings, secrets masked."""

from __future__ import annotations

import typer
from rich.table import Table

from dr_pipelines.cli.common import emit_json, out, settings, settings_origin

config_app = typer.Typer(help="Settings (DRP_* environment variables and an optional YAML file).", no_args_is_help=True)


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
