"""Where backups are kept: a local directory or S3, behind one atomic, streaming interface."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

from dr_pipelines.core.errors import ConfigError
from dr_pipelines.core.storage.base import ObjectInfo, PutResult, Storage

__all__ = ["ObjectInfo", "PutResult", "Storage", "open_storage"]

_FORMS = "file:///absolute/path, a plain directory path, s3://bucket or s3://bucket/prefix"


def open_storage(
    url: str,
    *,
    s3_endpoint_url: str | None = None,
    s3_region: str | None = None,
    s3_access_key: str | None = None,
    s3_secret_key: str | None = None,
    s3_sse: str | None = None,
    s3_sse_kms_key_id: str | None = None,
    s3_max_attempts: int | None = None,
    s3_connect_timeout: float | None = None,
) -> Storage:
    """Build the backend a storage URL names; credentials never travel inside the URL.

    ``s3_max_attempts``/``s3_connect_timeout`` override the client's defaults (the WAL archiver
    wants to fail fast: PostgreSQL retries a failed archive_command by itself).
    """
    if not url or not url.strip():
        raise ConfigError("the storage URL is empty", fix=f"set DRP_STORAGE_URL to one of: {_FORMS}")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if "@" in parts.netloc:
        raise ConfigError(
            f"the {scheme} storage URL contains credentials (user@host), which are not accepted",
            fix="remove them from the URL; for S3 set DRP_S3_ACCESS_KEY_ID/DRP_S3_SECRET_ACCESS_KEY "
            "or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY",
        )
    if scheme == "":
        from dr_pipelines.core.storage.local import LocalStorage

        return LocalStorage(Path(url).expanduser().absolute())
    if scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise ConfigError(
                f"file storage URL {url!r} is not of the form file:///absolute/path",
                fix=f"use one of: {_FORMS}",
            )
        from dr_pipelines.core.storage.local import LocalStorage

        return LocalStorage(unquote(parts.path))
    if scheme == "s3":
        if not parts.netloc or parts.query or parts.fragment:
            raise ConfigError(
                f"S3 storage URL {url!r} is not of the form s3://bucket[/prefix]",
                fix=f"use one of: {_FORMS}",
            )
        from dr_pipelines.core.storage.s3 import S3Storage

        return S3Storage(
            parts.netloc,
            unquote(parts.path),
            endpoint_url=s3_endpoint_url,
            region=s3_region,
            access_key=s3_access_key,
            secret_key=s3_secret_key,
            sse=s3_sse,
            sse_kms_key_id=s3_sse_kms_key_id,
            **{k: v for k, v in (("max_attempts", s3_max_attempts), ("connect_timeout", s3_connect_timeout))
               if v is not None},
        )
    raise ConfigError(
        f"unsupported storage URL scheme {scheme!r}", fix=f"use one of: {_FORMS}"
    )
