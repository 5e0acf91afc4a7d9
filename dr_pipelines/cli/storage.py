"""`drp storage check|ls`: the storage target."""

from __future__ import annotations

from typing import Any

import typer
from rich.table import Table

from dr_pipelines.cli.common import emit_json, out, settings
from dr_pipelines.core import context

storage_app = typer.Typer(help="The storage target (local directory or S3).", no_args_is_help=True)


def _storage() -> Any:
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
