"""Exports (and every other object drp writes to S3) are stored with server-side encryption."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from dr_pipelines.core import context
from dr_pipelines.core.settings import load_settings
from dr_pipelines_tests.support.env import drp_env
from dr_pipelines_tests.support.procs import drp
from dr_pipelines_tests.support.retention import AS_OF, POLICY, key_env


def _env(demo_db: str, s3_server, bucket: str, **settings: str) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return drp_env(source=demo_db, storage=f"s3://{bucket}/drp", s3=s3_server, **settings)


def _encryption(s3_server, bucket: str, prefix: str) -> dict[str, tuple[str | None, str | None]]:  # type: ignore[no-untyped-def]
    client = s3_server.client()
    listed = client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    heads = {o["Key"]: client.head_object(Bucket=bucket, Key=o["Key"]) for o in listed}
    return {k: (h.get("ServerSideEncryption"), h.get("SSEKMSKeyId")) for k, h in heads.items()}


def test_every_object_of_an_export_and_an_archive_is_sse_s3_by_default(demo_db: str, tmp_path: Path, s3_server,  # type: ignore[no-untyped-def]
                                                                       s3_bucket: str) -> None:
    env = _env(demo_db, s3_server, s3_bucket)
    done = drp("export", "--clinic", "1", "--format", "csv,parquet", "--zip", "--json", env=env)
    assert done.returncode == 0, done.stderr
    export_id = json.loads(done.stdout)["export_id"]
    objects = _encryption(s3_server, s3_bucket, f"drp/exports/{export_id}/")
    assert len(objects) > 3 and set(objects.values()) == {("AES256", None)}, objects  # tables, zip, manifest

    policy = tmp_path / "retention.yaml"
    policy.write_text(yaml.safe_dump(POLICY))
    applied = drp("retention", "apply", "--json", "--table", "public.clinical_notes", "--as-of", AS_OF.isoformat(),
                  env={**env, **drp_env(retention_policies_file=policy), **key_env(tmp_path)})
    assert applied.returncode == 0, applied.stderr
    archives = _encryption(s3_server, s3_bucket, "drp/archives/")
    assert archives and set(archives.values()) == {("AES256", None)}


def test_sse_kms_with_a_key_id_applies_to_single_and_multipart_uploads(s3_server, s3_bucket: str) -> None:  # type: ignore[no-untyped-def]
    from dr_pipelines.core.storage.s3 import MIN_PART_SIZE

    key_id = "arn:aws:kms:us-east-1:123456789012:key/0f3c1b8e-5d1a-4c6e-9f0a-2b7e8d9c1a23"
    s = load_settings(env=_env("host=127.0.0.1 dbname=x", s3_server, s3_bucket, s3_sse="aws:kms",
                                s3_sse_kms_key_id=key_id))
    storage = context.storage(s)
    storage.part_size = MIN_PART_SIZE  # type: ignore[attr-defined]
    storage.put_bytes("small", b"x" * 10)
    storage.put_stream("large", (b"y" * (1 << 20) for _ in range(7)))  # two parts: multipart
    assert _encryption(s3_server, s3_bucket, "drp/") == {"drp/small": ("aws:kms", key_id),
                                                         "drp/large": ("aws:kms", key_id)}
    plain = context.storage(load_settings(env=_env("host=127.0.0.1 dbname=x", s3_server, s3_bucket, s3_sse="none")))
    plain.put_bytes("plain", b"z")
    assert _encryption(s3_server, s3_bucket, "drp/plain") == {"drp/plain": (None, None)}
