"""The DRP_* environment a deployment would set, built from what a test has (one helper, not hand-typed keys).

``drp_env(source=dsn, storage=path, keys=keys, work=path, export_max_per_hour=5)`` gives
``{"DRP_SOURCE_DSN": dsn, "DRP_STORAGE_URL": path, "DRP_ENCRYPTION_RECIPIENTS": ...,
"DRP_EXPORT_MAX_PER_HOUR": "5", ...}``: any other setting by its field name, so a misspelt
one fails here instead of being silently ignored. Pass the result to `drp` subprocesses,
``load_settings(env=...)``, or ``set_drp_env`` (conftest) for in-process Dagster tests.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dr_pipelines.core.settings import FIELDS, env_name
from dr_pipelines_tests.support.backup import Keys
from dr_pipelines_tests.support.s3 import MotoServer


def drp_env(*, source: str | None = None, storage: Path | str | None = None, keys: Keys | None = None,
            identity: bool = False, work: Path | None = None, s3: MotoServer | None = None,
            **settings: Any) -> dict[str, str]:
    """Settings as DRP_* variables; ``keys`` sets the recipient (and with ``identity=True`` the identity file),
    ``s3`` the endpoint, region and credentials of a moto server (``storage`` then names an s3:// URL)."""
    env: dict[str, str] = {}
    if s3 is not None:
        env.update(DRP_S3_ENDPOINT_URL=s3.endpoint_url, DRP_S3_REGION=s3.region, DRP_S3_ACCESS_KEY_ID=s3.access_key,
                   DRP_S3_SECRET_ACCESS_KEY=s3.secret_key)
    if source is not None:
        env["DRP_SOURCE_DSN"] = source
    if storage is not None:
        env["DRP_STORAGE_URL"] = str(storage)
    if keys is not None:
        env["DRP_ENCRYPTION_RECIPIENTS"] = keys.recipient
        if identity:
            env["DRP_AGE_IDENTITY_FILE"] = str(keys.identity_file)
    if work is not None:
        env["DRP_WORK_DIR"] = str(work)
    for field, value in settings.items():
        if field not in FIELDS:
            raise TypeError(f"{field} is not a setting (see core/settings.py)")
        env[env_name(field)] = str(value)
    return env
