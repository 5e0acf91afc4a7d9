"""`drp verify`, `drp drill run|list`, `drp status`: proof that backups restore, and the success metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from dr_pipelines.cli.common import emit_json, err, out, progress_bar, report_swept, settings
from dr_pipelines.core import context

drill_app = typer.Typer(help="Monthly DR drills: restore the newest backup as if the primary were gone.",
                        no_args_is_help=True)


def verify(
    backup_id: str = typer.Argument("latest", help="Backup id, or 'latest' (newest restorable)."),
    identity: Optional[Path] = typer.Option(None, "--identity", "-i", help="age identity file (else DRP_AGE_IDENTITY_FILE)."),
    markdown: Optional[Path] = typer.Option(None, "--markdown", help="Also write the report as Markdown to this file."),
    no_record: bool = typer.Option(False, "--no-record", help="Do not record the result in the catalog."),
    as_json: bool = typer.Option(False, "--json", help="The report as JSON."),
) -> None:
    """Restore a backup into a throwaway cluster and prove it: rows, checksums, amcheck, FKs, sequences, probes.

    Exit code 0 when every check passes, 1 when any fails (the backup is then marked unverified).
    """
    from dr_pipelines.core.backup.catalog import find_backup
    from dr_pipelines.core.verify.restore import verify_backup

    s = settings()
    identities = context.identities(s, identity)
    storage = context.storage(s)
    entry = find_backup(storage, backup_id)
    report_swept(Path(s.work_dir))
    with progress_bar(not as_json) as progress:
        report = verify_backup(storage, entry, identities, Path(s.work_dir), probes=context.probes(s), record=not no_record,
                               progress=progress)
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


@drill_app.command("run")
def drill_run(
    identity: Optional[Path] = typer.Option(None, "--identity", "-i", help="age identity file (else DRP_AGE_IDENTITY_FILE)."),
    month: Optional[str] = typer.Option(None, help="Report month YYYY-MM (default: this month)."),
    as_json: bool = typer.Option(False, "--json", help="The drill report as JSON."),
) -> None:
    """Run a DR drill now: newest backup from storage only, fresh cluster, all checks, RTO and RPO measured."""
    from dr_pipelines.core.verify.drill import run_drill

    s = settings()
    report_swept(Path(s.work_dir))
    report = run_drill(context.storage(s), context.identities(s, identity), Path(s.work_dir), rto_target_minutes=s.rto_minutes,
                       rpo_target_minutes=s.rpo_minutes, probes=context.probes(s), month=month)
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


def status(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """Backup success rate, newest restorable backup vs RPO, last verification, last drill vs RTO (storage only).

    Exit code 0 when all targets are met, 1 otherwise.
    """
    from dr_pipelines.core.status import current_status

    st = current_status(settings())
    if as_json:
        emit_json(st.as_dict())
    else:
        rate = f"{st.success_rate_30d:.1%}" if st.success_rate_30d is not None else "n/a"
        out.print(f"storage:            {st.storage}")
        damaged = f", {len(st.damaged)} DAMAGED" if st.damaged else ""
        out.print(f"backups:            {st.backups} complete{damaged}; success rate 30d {rate} "
                  f"({st.attempts_30d['succeeded']} ok, {st.attempts_30d['failed']} failed)")
        age = f"{st.newest_age_minutes} min old" if st.newest_age_minutes is not None else "none"
        out.print(f"newest restorable:  {st.newest_restorable or 'none'} ({age}; RPO target {st.rpo_target_minutes} min: "
                  f"{'met' if st.rpo_met else 'MISSED'})")
        v = st.last_verification
        out.print(f"last verification:  {v['backup_id'] + (' passed' if v['passed'] else ' FAILED') if v else 'never'}")
        d = st.last_drill
        if d:
            out.print(f"last drill:         {d['month']} {'passed' if d['passed'] else 'FAILED'}, "
                      f"RTO {d['rto_seconds'] / 60:.1f} min (target {st.rto_target_minutes} min)")
        else:
            out.print("last drill:         never")
        for p in st.problems:
            err.print(f"problem: {p}")
    if not st.ok:
        raise typer.Exit(1)
