"""Runtime objects built from Settings: the storage backend, age identities, probes, the GFS policy.

Settings is pure data (validated values, no I/O); whatever opens a bucket or reads a key
file is built here, once per use, by the CLI, the Dagster resources and core's use cases
(backup, migrate's dry-run, status). Archive keys are built by ``ArchiveKeys.from_settings``
in core/retention, the one layer that knows them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from dr_pipelines.core.errors import ConfigError
from dr_pipelines.core.storage import Storage, open_storage

if TYPE_CHECKING:  # each builder imports what it builds: `drp wal push` needs no psycopg (probes), no pydantic here
    from pydantic import SecretStr

    from dr_pipelines.core.backup.gfs import RetentionPolicy
    from dr_pipelines.core.settings import Settings
    from dr_pipelines.core.verify.checks import Probe


def storage(settings: Settings, url: str | None = None, **s3_client: float | None) -> Storage:
    """The configured storage backend, or ``url`` with the same S3 endpoint and credentials.

    ``s3_client``: s3_max_attempts / s3_connect_timeout overrides (see open_storage).
    """

    def secret(value: SecretStr | None) -> str | None:
        return value.get_secret_value() if value else None

    return open_storage(
        url or settings.storage_url,
        s3_endpoint_url=settings.s3_endpoint_url,
        s3_region=settings.s3_region,
        s3_access_key=secret(settings.s3_access_key_id),
        s3_secret_key=secret(settings.s3_secret_access_key),
        s3_sse=None if settings.s3_sse == "none" else settings.s3_sse,
        s3_sse_kms_key_id=settings.s3_sse_kms_key_id if settings.s3_sse == "aws:kms" else None,
        **s3_client,  # type: ignore[arg-type]
    )


def identities(settings: Settings, override: Path | None = None) -> list[object]:
    """The age identities for reading backups: --identity, else age_identity_file."""
    from dr_pipelines.core.crypto import load_identities

    path = override or settings.age_identity_file
    if path is None:
        raise ConfigError(
            "no age identity given: reading backups needs the private key",
            fix="pass --identity FILE or set DRP_AGE_IDENTITY_FILE",
        )
    return load_identities(path)


def probes(settings: Settings) -> list[Probe]:
    """The application probes of verification_probes_file (none when unset)."""
    from dr_pipelines.core.verify.checks import load_probes

    return load_probes(settings.verification_probes_file) if settings.verification_probes_file else []


def retention_policy(settings: Settings) -> RetentionPolicy:
    """The GFS policy for backups (backup_retention, already validated by Settings)."""
    from dr_pipelines.core.backup.gfs import RetentionPolicy

    return RetentionPolicy.parse(settings.backup_retention)
