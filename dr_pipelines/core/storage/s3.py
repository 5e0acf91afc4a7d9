"""S3 backend (AWS or any S3-compatible endpoint such as MinIO, Ceph or moto).

S3 makes an object visible only when ``put_object`` or ``complete_multipart_upload``
succeeds, which gives the all-or-nothing contract; a failed multipart upload is aborted so
it neither lingers nor costs storage.
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, BinaryIO, NoReturn, cast
from urllib.parse import urlsplit, urlunsplit

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    NoCredentialsError,
)
from botocore.exceptions import (
    ConnectionError as BotoConnectionError,
)

from dr_pipelines.core.errors import ConfigError, ObjectNotFoundError, StorageError
from dr_pipelines.core.storage.base import (
    STALE_UPLOAD,
    InvalidKeyError,
    ObjectInfo,
    PutResult,
    Storage,
    StorageProperties,
    close_chunks,
    validate_key,
    validate_prefix,
)

log = logging.getLogger(__name__)

PART_SIZE = 8 * 1024 * 1024  # memory per upload is about one part; S3's minimum is 5 MiB
MIN_PART_SIZE = 5 * 1024 * 1024

_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_CREDENTIAL_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403"}
_MISSING_KEY_CODES = {"NoSuchKey", "404", "NotFound"}
_CREDENTIALS_FIX = (
    "check DRP_S3_ACCESS_KEY_ID/DRP_S3_SECRET_ACCESS_KEY (or, if unset, boto3's "
    "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, profile or role): "
    "the key must exist and be allowed to read, write, list and delete in the bucket"
)


def _safe_url(url: str) -> str:
    """Drop any user:password@ from an endpoint URL so it can go into messages."""
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class _BodyReader(io.RawIOBase):
    """Adapts a botocore StreamingBody to a raw stream whose failures are StorageErrors."""

    def __init__(self, body: Any, describe: str) -> None:
        self._body = body
        self._describe = describe

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        try:
            data = self._body.read(len(buffer))
        except (BotoCoreError, OSError) as exc:
            raise StorageError(
                f"reading {self._describe} failed midway: {exc}",
                fix="retry; if it persists check the network path to the S3 endpoint",
            ) from exc
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._body.close()
        super().close()


class S3Storage(Storage):
    """Objects live in ``bucket`` under ``prefix``; keys are relative to the prefix."""

    properties = StorageProperties(presign=True, server_side_encryption=True, atomic_rename=False)

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
        part_size: int = PART_SIZE,
        connect_timeout: float = 10,
        max_attempts: int = 5,
        sse: str | None = None,
        sse_kms_key_id: str | None = None,
    ) -> None:
        if (access_key is None) != (secret_key is None):
            raise ConfigError(
                "only one of the S3 access key and secret key is set",
                fix="set both, or neither to use boto3's default credential chain",
            )
        if part_size < MIN_PART_SIZE:
            raise ConfigError(
                f"S3 part size {part_size} is below S3's minimum of {MIN_PART_SIZE} bytes",
                fix=f"use a part size of at least {MIN_PART_SIZE}",
            )
        if not _BUCKET_NAME.fullmatch(bucket):
            raise ConfigError(
                f"{bucket!r} is not a valid S3 bucket name",
                fix="use 3-63 lowercase letters, digits, dots and hyphens (DRP_STORAGE_URL)",
            )
        prefix = prefix.strip("/")
        if prefix:
            try:
                validate_key(prefix)
            except InvalidKeyError as exc:
                raise ConfigError(exc.problem.replace("storage key", "S3 prefix"), fix=exc.fix) from exc
        self.bucket = bucket
        self.prefix = f"{prefix}/" if prefix else ""
        # Server-side encryption asked for on every object written (AES256 = SSE-S3, aws:kms = SSE-KMS).
        self.sse_args: dict[str, str] = {"ServerSideEncryption": sse} if sse else {}
        if sse and sse_kms_key_id:
            self.sse_args["SSEKMSKeyId"] = sse_kms_key_id
        self.part_size = part_size
        self.url = f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"
        self._where = f"at {_safe_url(endpoint_url)}" if endpoint_url else "on AWS S3"
        config = Config(
            retries={"mode": "standard", "max_attempts": max_attempts},
            connect_timeout=connect_timeout,
            s3={"addressing_style": "path"} if endpoint_url else None,
        )
        session = boto3.Session(
            aws_access_key_id=access_key, aws_secret_access_key=secret_key, region_name=region
        )
        self.client = session.client("s3", endpoint_url=endpoint_url, config=config)

    @property
    def encrypts_at_rest(self) -> bool:
        return bool(self.sse_args)  # server-side encryption asked for on every object written

    # -- helpers -----------------------------------------------------------------------

    def _full(self, key: str) -> str:
        return self.prefix + validate_key(key)

    def _raise(self, exc: Exception, action: str, key: str | None = None) -> NoReturn:
        """Translate a botocore failure into a StorageError that names the problem and fix."""
        target = f"'{key}' in {self.url}" if key else self.url
        if isinstance(exc, NoCredentialsError):
            raise StorageError(
                f"no S3 credentials found to {action} {target}", fix=_CREDENTIALS_FIX
            ) from exc
        if isinstance(exc, BotoConnectionError):
            raise StorageError(
                f"cannot reach the S3 endpoint {self._where} to {action} {target} "
                f"({type(exc).__name__})",
                fix="check DRP_S3_ENDPOINT_URL, that the S3 service is running, "
                "and the network/firewall between here and it",
            ) from exc
        if isinstance(exc, HTTPClientError):  # connected, then the connection broke off or timed out
            raise StorageError(
                f"the connection to the S3 endpoint {self._where} broke off while trying to {action} {target} "
                f"({type(exc).__name__}, after retries)",
                fix="check the network path to the S3 endpoint (proxies, load balancers, firewalls), then "
                "run again: nothing partial was kept",
            ) from exc
        if isinstance(exc, ClientError):
            error = exc.response.get("Error", {})
            code = str(error.get("Code", "Unknown"))
            if code == "NoSuchBucket" or (code in _MISSING_KEY_CODES and key is None):
                raise StorageError(
                    f"S3 bucket '{self.bucket}' does not exist {self._where}",
                    fix="create the bucket or correct DRP_STORAGE_URL",
                ) from exc
            if code in _MISSING_KEY_CODES:
                raise ObjectNotFoundError(
                    f"object '{key}' not found in {self.url}", fix="check the key, e.g. with list()"
                ) from exc
            if code in _CREDENTIAL_CODES:
                # The server's message is left out: some echo the access key id.
                raise StorageError(
                    f"S3 {self._where} refused access to {action} {target} ({code}): "
                    "the credentials are wrong or lack permission",
                    fix=_CREDENTIALS_FIX,
                ) from exc
            raise StorageError(
                f"S3 {self._where} failed to {action} {target}: {code} {error.get('Message', '')}",
                fix="retry; if it persists check the bucket's configuration and the S3 service",
            ) from exc
        raise StorageError(
            f"S3 request to {action} {target} {self._where} failed: {type(exc).__name__}",
            fix="retry; if it persists check the S3 endpoint and client configuration",
        ) from exc

    def _call(self, operation: str, action: str, key: str | None, **kwargs: Any) -> Any:
        try:
            return getattr(self.client, operation)(Bucket=self.bucket, **kwargs)
        except (BotoCoreError, ClientError) as exc:
            self._raise(exc, action, key)

    def _pages(self, operation: str, action: str, result_key: str, **kwargs: Any) -> Iterator[Any]:
        pages = iter(self.client.get_paginator(operation).paginate(Bucket=self.bucket, **kwargs))
        while True:
            try:
                page = next(pages)
            except StopIteration:
                return
            except (BotoCoreError, ClientError) as exc:
                self._raise(exc, action)
            yield from page.get(result_key, [])

    # -- Storage -----------------------------------------------------------------------
    def put_stream(self, key: str, chunks: Iterable[bytes]) -> PutResult:
        full = self._full(key)
        digest, size = hashlib.sha256(), 0
        buffer = bytearray()
        upload_id: str | None = None
        parts: list[dict[str, Any]] = []

        def upload_part(data: bytes) -> None:
            number = len(parts) + 1
            response = self._call(
                "upload_part", "upload", key, Key=full, UploadId=upload_id, PartNumber=number, Body=data
            )
            parts.append({"PartNumber": number, "ETag": response["ETag"]})

        try:
            for chunk in chunks:  # the iterator's own exceptions propagate unwrapped
                digest.update(chunk)
                size += len(chunk)
                buffer += chunk
                # Strictly greater: an object of exactly one part still goes as one put_object.
                while len(buffer) > self.part_size:
                    if upload_id is None:
                        upload_id = self._call(
                            "create_multipart_upload", "upload", key, Key=full, **self.sse_args
                        )["UploadId"]
                    with memoryview(buffer) as view:
                        part = bytes(view[: self.part_size])
                    del buffer[: self.part_size]
                    upload_part(part)
                    del part
            if upload_id is None:
                self._call("put_object", "upload", key, Key=full, Body=bytes(buffer), **self.sse_args)
            else:
                upload_part(bytes(buffer))
                self._call(
                    "complete_multipart_upload", "upload", key,
                    Key=full, UploadId=upload_id, MultipartUpload={"Parts": parts},
                )
        except BaseException:
            close_chunks(chunks)
            if upload_id is not None:
                try:
                    self.client.abort_multipart_upload(Bucket=self.bucket, Key=full, UploadId=upload_id)
                except (BotoCoreError, ClientError) as exc:
                    log.warning(
                        "could not abort multipart upload of %s in %s (%s); "
                        "cleanup_incomplete() will remove it", key, self.url, type(exc).__name__,
                    )
            raise
        return PutResult(key, size, digest.hexdigest())

    def open(self, key: str) -> BinaryIO:
        body = self._call("get_object", "read", key, Key=self._full(key))["Body"]
        return cast(BinaryIO, io.BufferedReader(_BodyReader(body, f"'{key}' in {self.url}")))

    def presign_get(self, key: str, expires_in: int) -> str:
        """A time-limited GET URL signed with this storage's credentials (no request is made)."""
        return str(self.client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": self._full(key)}, ExpiresIn=expires_in,
        ))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        validate_prefix(prefix)
        for obj in self._pages("list_objects_v2", "list", "Contents", Prefix=self.prefix + prefix):
            key = obj["Key"][len(self.prefix):]
            try:
                validate_key(key)
            except InvalidKeyError:  # e.g. "folder/" markers made by consoles: not ours
                continue
            yield ObjectInfo(key, obj["Size"], obj["LastModified"].astimezone(UTC))

    def stat(self, key: str) -> ObjectInfo:
        head = self._call("head_object", "stat", key, Key=self._full(key))
        return ObjectInfo(key, head["ContentLength"], head["LastModified"].astimezone(UTC))

    def delete(self, key: str) -> None:
        self._call("delete_object", "delete", key, Key=self._full(key))  # absent: S3 says 204

    def check(self) -> None:
        self._call("head_bucket", "access", None)

    def cleanup_incomplete(
        self, prefix: str, older_than: timedelta = STALE_UPLOAD, *, dead: Callable[[str], bool] | None = None
    ) -> int:
        validate_prefix(prefix)
        cutoff = datetime.now(UTC) - older_than
        removed = 0
        # Listed in full first: aborting while paginating could shift the page markers.
        uploads = [
            *self._pages("list_multipart_uploads", "list uploads", "Uploads", Prefix=self.prefix + prefix)
        ]
        for upload in uploads:
            key = upload["Key"][len(self.prefix):]
            if not (dead is not None and dead(key)) and not self._idle_since(upload, cutoff):
                continue
            try:
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"])
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") == "NoSuchUpload":
                    continue  # finished or aborted meanwhile
                self._raise(exc, "abort partial upload", key)
            except BotoCoreError as exc:
                self._raise(exc, "abort partial upload", key)
            removed += 1
        return removed

    def _idle_since(self, upload: dict[str, Any], cutoff: datetime) -> bool:
        """Whether a multipart upload saw no activity after ``cutoff``: S3 keeps no heartbeat
        but the upload's start and each part's time, and a live writer adds a part every few MiB."""
        if upload["Initiated"] > cutoff:
            return False
        pages = self.client.get_paginator("list_parts").paginate(
            Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
        )
        try:
            return all(part["LastModified"] <= cutoff for page in pages for part in page.get("Parts", []))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "NoSuchUpload":
                return False  # completed or aborted meanwhile: nothing to remove
            self._raise(exc, "list parts of", upload["Key"][len(self.prefix):])
        except BotoCoreError as exc:
            self._raise(exc, "list parts of", upload["Key"][len(self.prefix):])
