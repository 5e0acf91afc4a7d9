"""`drp verify`: restore a backup into a throwaway cluster and prove it."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from dr_pipelines.cli.common import err, out, progress_bar, settings


def verify(
    backup_id: str = typer.Argument("latest", help="Backup id, or 'latest' (newest restorable)."),
    identity: Optional[Path] = typer.Option(None, "--identity", "-i", help="age identity file (else DRP_AGE_IDENTITY_FILE)."),
    markdown: Optional[Path] = typer.Option(None, "--markdown", help="Also write the report as Markdown to this file."),
    no_record: bool = typer.Option(False, "--no-record", help="Do not record the result in the catalog."),
    as_json: bool = typer.Option(False, "--json", help="The report as JSON."),
    kind: Optional[str] = typer.Option(None, "--kind", help="With 'latest': the newest restorable 'logical' (default) "
                                       "or 'base' backup (a base backup is recovered to its stop point)."),
) -> None:
    """Restore a backup into a throwaway cluster and prove it: rows, checksums, amcheck, FKs, sequences, probes.

    Exit code 0 when every check passes, 1 when any fails (the backup is then marked unverified).
    """
    from dr_pipelines.core.verify.restore import verify_now

    with progress_bar(not as_json) as progress:
        report = verify_now(settings(), backup_id, identity, record=not no_record, progress=progress,
                            log=lambda line: err.print(line, highlight=False), kind=_kind(kind))
    if markdown:
        markdown.write_text(report.to_markdown())
    if as_json:
        out.print(report.to_json(), end="", highlight=False, soft_wrap=True)
    else:
        table = Table("check", "result", "checked", "seconds", "detail")
        for c in report.checks:
            table.add_row(c.name, "pass" if c.passed else "[red]FAIL[/]", str(c.checked), f"{c.seconds:.2f}", c.detail)
        out.print(table)
        out.print(report.summary(), highlight=False)
    if not report.passed:
        raise typer.Exit(1)


def _kind(kind: str | None) -> str | None:
    from dr_pipelines.core.errors import ConfigError

    if kind not in (None, "logical", "base"):
        raise ConfigError(f"--kind {kind!r} is not a backup kind", fix="pass --kind logical or --kind base")
    return kind
