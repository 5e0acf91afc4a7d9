"""`drp drill run|list`: monthly DR drills and their reports."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from dr_pipelines.cli.common import emit_json, out, report_swept, settings
from dr_pipelines.core import context

drill_app = typer.Typer(help="Monthly DR drills: restore the newest backup as if the primary were gone.",
                        no_args_is_help=True)


@drill_app.command("run")
def drill_run(
    identity: Optional[Path] = typer.Option(None, "--identity", "-i", help="age identity file (else DRP_AGE_IDENTITY_FILE)."),
    month: Optional[str] = typer.Option(None, help="Report month YYYY-MM (default: this month)."),
    as_json: bool = typer.Option(False, "--json", help="The drill report as JSON."),
) -> None:
    """Run a DR drill now: newest backup from storage only, fresh cluster, all checks, RTO and RPO measured."""
    from dr_pipelines.core.verify.drill import drill_now

    s = settings()
    report_swept(Path(s.work_dir))
    report = drill_now(s, identity=identity, month=month)
    if as_json:
        out.print(report.to_json(), end="", highlight=False, soft_wrap=True)
    else:
        out.print(report.to_markdown(), highlight=False)
    if not report.passed:
        raise typer.Exit(1)


@drill_app.command("list")
def drill_list(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """Every drill report in storage, oldest first."""
    from dr_pipelines.core.verify.drill import drill_reports

    reports = drill_reports(context.storage(settings()))
    rows = [{k: r.get(k) for k in ("month", "passed", "backup_id", "rto_seconds", "rpo_seconds", "finished_at")}
            for r in reports]
    if as_json:
        emit_json(rows)
        return
    table = Table("month", "result", "backup", "RTO", "RPO", "finished")
    for r in rows:
        rpo = f"{r['rpo_seconds'] / 60:.1f} min" if r["rpo_seconds"] is not None else "n/a"
        table.add_row(r["month"], "passed" if r["passed"] else "FAILED", r["backup_id"] or "",
                      f"{r['rto_seconds'] / 60:.1f} min", rpo, r["finished_at"][:19])
    out.print(table)
