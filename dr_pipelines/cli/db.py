"""`drp db profile`: the source database, read-only."""

from __future__ import annotations

import typer
from rich.table import Table

from dr_pipelines.cli.common import emit_json, out, settings

db_app = typer.Typer(help="The source database.", no_args_is_help=True)


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
