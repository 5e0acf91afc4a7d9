"""`drp key generate`: age keys for backup encryption."""

from __future__ import annotations

from pathlib import Path

import typer

from dr_pipelines.cli.common import err, out

key_app = typer.Typer(help="age keys for backup encryption.", no_args_is_help=True)


@key_app.command("generate")
def key_generate(out_file: Path = typer.Option(..., "--out", help="Where to write the identity (private key), mode 0600.")) -> None:
    """Create an age key pair; put the printed public key in DRP_ENCRYPTION_RECIPIENTS and keep the file offline."""
    from dr_pipelines.core.crypto import generate_identity_file

    public = generate_identity_file(out_file)
    err.print(f"identity written to {out_file} (keep it off the backup host; without it backups cannot be read)")
    out.print(public)
