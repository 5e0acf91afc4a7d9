"""age encryption to public-key recipients: the backup host holds no private key.

Backups are readable with the stock `age` CLI (`age -d -i key.txt`), which the escape-hatch
runbook relies on.
"""

from __future__ import annotations

import os
from pathlib import Path

import pyrage
from pyrage import x25519

from dr_pipelines.core.errors import ConfigError, DrpError, read_config_text


class DecryptionError(DrpError):
    """The identity does not match the backup's recipients, or the ciphertext is damaged."""


class WrongKeyError(DecryptionError):
    """No identity given matches the object's recipients: a key problem, not a damaged backup."""


def parse_recipients(recipients: list[str]) -> list[x25519.Recipient]:
    if not recipients:
        raise ConfigError(
            "no encryption recipients are configured: backups of health data must be encrypted",
            fix="generate a key pair with `drp key generate --out backup-key.txt` (keep that file offline) "
            "and set DRP_ENCRYPTION_RECIPIENTS to the public key it prints",
        )
    out = []
    for r in recipients:
        try:
            out.append(x25519.Recipient.from_str(r))
        except pyrage.RecipientError:
            raise ConfigError(f"{r[:12]}… is not a valid age public key", fix="use the age1… line from the key file") from None
    return out


def load_identities(path: Path | str) -> list[x25519.Identity]:
    """Read an age identity file (as written by age-keygen or `drp key generate`)."""
    path = Path(path)
    text = read_config_text(path, "age identity file", missing_fix="pass --identity with the backup key file")
    identities = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            identities.append(x25519.Identity.from_str(line))
        except pyrage.IdentityError:
            raise ConfigError(
                f"line {number} of {path} is not an age identity (AGE-SECRET-KEY-1…)", fix="use the file age-keygen wrote"
            ) from None
    if not identities:
        raise ConfigError(f"{path} holds no age identity", fix="use the file age-keygen (or drp key generate) wrote")
    return identities


def generate_identity_file(path: Path | str) -> str:
    """Write a new identity (mode 0600, refusing to overwrite) in age-keygen's format; return the public key."""
    path = Path(path)
    identity = x25519.Identity.generate()
    public = str(identity.to_public())
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ConfigError(f"{path} already exists", fix="choose another path; never overwrite a backup key") from None
    with os.fdopen(fd, "w") as f:
        f.write(f"# created by drp key generate\n# public key: {public}\n{identity}\n")
    return public
