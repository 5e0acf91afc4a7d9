"""`drp tenant restore`: one clinic's rows at a past moment, previewed against live, copied aside, or applied."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from dr_pipelines.cli.common import emit_json, err, out, progress_bar, settings
from dr_pipelines.core import context

TARGET_ENV = "DRP_TENANT_RESTORE_TARGET"  # --into-schema's other database, kept out of argv (visible in `ps`)

tenant_app = typer.Typer(help="One clinic (tenant) at a time: restore its rows to a point in time.",
                         no_args_is_help=True)


@tenant_app.command("restore")
def restore(
    clinic: str = typer.Option(..., "--clinic", help="Clinic (tenant) id, as in the tenant root (export_tenant_root)."),
    at: Optional[str] = typer.Option(None, "--at", help="The time to go back to, with a UTC offset, e.g. "
                                     "'2026-12-01 14:05:00+00' (a point-in-time restore into a throwaway cluster)."),
    backup_id: Optional[str] = typer.Option(None, "--backup", help="Or a backup id: a logical backup, or a base "
                                            "backup (recovered to its own stop point)."),
    into_schema: Optional[str] = typer.Option(None, "--into-schema", help="Copy the clinic's past rows into this "
                                              "new schema (of live, or of --target-dsn) instead of a preview."),
    target_dsn: Optional[str] = typer.Option(None, "--target-dsn", envvar=TARGET_ENV, show_default=False,
                                             help=f"--into-schema: another database (else {TARGET_ENV}; a password "
                                                  "in argv is visible in `ps`, use the variable or a passfile)."),
    apply: bool = typer.Option(False, "--apply", help="Write the past rows back to live (one transaction)."),
    policy: Optional[str] = typer.Option(None, "--policy", help="--apply: restore-deleted, revert-changed or both."),
    on_conflict: Optional[str] = typer.Option(None, "--on-conflict", help="--apply: skip conflicting rows (else refused)."),
    reason: Optional[str] = typer.Option(None, "--reason", help="--apply: why (audited)."),
    requester: Optional[str] = typer.Option(None, "--requester", help="--apply: who asked (audited)."),
    undo_allow_plaintext: bool = typer.Option(
        False, "--undo-allow-plaintext",
        help="--apply: let the undo export (the clinic's current rows) go to storage that does not encrypt at rest "
             "(a local directory); by default it must be S3 with server-side encryption."),
    report_dir: Optional[Path] = typer.Option(None, "--report-dir", help="Where report JSON + Markdown go "
                                              "(default: the work dir)."),
    identity: Optional[Path] = typer.Option(None, "--identity", "-i", help="age identity file (else DRP_AGE_IDENTITY_FILE)."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Restore one clinic to a point in time: by default a preview of what changed since (nothing written).

    The past comes from a PITR into a throwaway cluster (--at) or a backup (--backup); live is read in \
one snapshot. Refused before anything is restored: an unknown clinic, a time in the future or before \
the oldest restorable point; refused before comparing: a schema change in the clinic's tables since.
    """
    from dr_pipelines.core.tenant_restore.run import Request, tenant_restore

    request = Request(clinic=clinic, at=at, backup_id=backup_id, into_schema=into_schema, target_dsn=target_dsn,
                      apply=apply, policy=policy, on_conflict=on_conflict, reason=reason, requester=requester,
                      undo_allow_plaintext=undo_allow_plaintext)
    request.check()  # a malformed request is refused before settings, keys or storage are read
    s = settings()
    with progress_bar(not as_json) as progress:
        outcome = tenant_restore(s, request, identities=context.identities(s, identity), report_dir=report_dir,
                                 progress=progress, log=lambda line: err.print(line, highlight=False, soft_wrap=True))
    if as_json:
        emit_json({**outcome.as_dict(), "reports": [str(p) for p in outcome.reports]})
        return
    out.print(outcome.to_markdown(), highlight=False, soft_wrap=True, markup=False)
    for path in outcome.reports:
        out.print(f"report: {path}", highlight=False, soft_wrap=True)
