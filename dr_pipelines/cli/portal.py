"""`drp portal`: the clinics' self-service export portal (serve) and its clinic tokens (create, list, revoke)."""

from __future__ import annotations

import getpass
from typing import Optional

import typer
from rich.table import Table

from dr_pipelines.cli.common import emit_json, err, out, settings

portal_app = typer.Typer(help="The clinics' export portal: an HTTP API (docs/portal.md) and its clinic tokens.",
                         no_args_is_help=True)
token_app = typer.Typer(help="Clinic tokens of the portal: shown once, stored hashed.", no_args_is_help=True)
portal_app.add_typer(token_app, name="token")


@portal_app.command("serve")
def serve(
    host: Optional[str] = typer.Option(None, "--host", help="Bind address (default: portal_host, 127.0.0.1)."),
    port: Optional[int] = typer.Option(None, "--port", min=1, max=65535, help="Port (default: portal_port)."),
) -> None:
    """Serve the export portal until interrupted (prints where it listens)."""
    from dr_pipelines.portal.app import serve as run

    run(settings(), host=host, port=port, announce=lambda line: out.print(line, highlight=False))


@token_app.command("create")
def token_create(
    clinic: str = typer.Option(..., "--clinic", help="The clinic (tenant) id the token may export."),
    expires: Optional[str] = typer.Option(None, "--expires", help="30d, 12h, 90m or an ISO date "
                                          "(default: portal_token_ttl_days)."),
    label: str = typer.Option("", "--label", help="A note for the operator (who holds it)."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Create a token for one clinic; the token is printed once and only its sha256 is kept."""
    from dr_pipelines.core.export.tenants import tenant_snapshot
    from dr_pipelines.core.pg.connect import connect
    from dr_pipelines.portal.tokens import create_token, parse_expiry

    s = settings()
    expires_at = parse_expiry(expires or f"{s.portal_token_ttl_days}d")
    with tenant_snapshot(s.dsn, [clinic], root=s.export_tenant_root, key_column=s.export_tenant_key) as snap:
        clinic_id = snap.tenants[0]  # refused (exit 4) if the clinic does not exist
    with connect(s.dsn, autocommit=True) as conn:
        token_id, token = create_token(conn, clinic_id, expires_at=expires_at, created_by=getpass.getuser(),
                                       label=label)
    if as_json:
        emit_json({"token_id": token_id, "clinic_id": clinic_id, "expires_at": expires_at.isoformat(),
                   "token": token})
        return
    err.print(f"token {token_id} for clinic {clinic_id}, valid until {expires_at:%Y-%m-%d %H:%M} UTC "
              "(shown once; only its hash is stored):", highlight=False)
    out.print(token, highlight=False, soft_wrap=True)


@token_app.command("list")
def token_list(
    clinic: Optional[str] = typer.Option(None, "--clinic", help="Only this clinic's tokens."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Every token (never the token itself): clinic, state, creator, expiry, revocation."""
    from dr_pipelines.core.pg.connect import connect
    from dr_pipelines.portal.tokens import list_tokens

    with connect(settings().dsn, autocommit=True) as conn:
        rows = list_tokens(conn, clinic)
    if as_json:
        emit_json(rows)
        return
    table = Table("token", "clinic", "state", "label", "created by", "created", "expires", "revoked")
    for r in rows:
        table.add_row(r["token_id"], r["clinic_id"], r["state"], r["label"], r["created_by"],
                      f"{r['created_at']:%Y-%m-%d %H:%M}", f"{r['expires_at']:%Y-%m-%d %H:%M}",
                      f"{r['revoked_at']:%Y-%m-%d %H:%M} by {r['revoked_by']}" if r["revoked_at"] else "")
    out.print(table)


@token_app.command("revoke")
def token_revoke(token_id: str = typer.Argument(..., help="The token id (pt_…), as `drp portal token list` shows.")) -> None:
    """Revoke a token: every later request with it is refused (401)."""
    from dr_pipelines.core.errors import ConfigError
    from dr_pipelines.core.pg.connect import connect
    from dr_pipelines.portal.tokens import revoke_token

    with connect(settings().dsn, autocommit=True) as conn:
        if not revoke_token(conn, token_id, revoked_by=getpass.getuser()):
            raise ConfigError(f"no active token {token_id}", fix="check the id with `drp portal token list`")
    out.print(f"token {token_id} revoked", highlight=False)
