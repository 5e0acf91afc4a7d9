"""A real S3 API for tests: moto's server in a subprocess, spoken to over HTTP.

A subprocess (not moto's in-process mock) keeps boto3 unpatched, so tests exercise the
same HTTP, signing, retry and error paths as production.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import boto3
import pytest

from dr_pipelines.core.pg.cluster import free_port  # noqa: F401 (tests import it from here)
from dr_pipelines.core.processes import stop_process

REGION = "us-east-1"


@dataclass
class MotoServer:
    """Where a running moto server listens, and the (dummy) credentials to use with it."""

    endpoint_url: str
    region: str = REGION
    access_key: str = "testing-access-key"
    secret_key: str = "testing-secret-key"
    _buckets: list[str] = field(default_factory=list)

    def client(self, **overrides: Any) -> Any:
        """A boto3 S3 client for set-up and inspection in tests."""
        kwargs: dict[str, Any] = {
            "endpoint_url": self.endpoint_url,
            "region_name": self.region,
            "aws_access_key_id": self.access_key,
            "aws_secret_access_key": self.secret_key,
        }
        return boto3.client("s3", **(kwargs | overrides))

    def create_bucket(self, name: str | None = None) -> str:
        """Create a bucket (a unique name by default) and return its name."""
        name = name or f"drp-test-{uuid.uuid4().hex[:16]}"
        self.client().create_bucket(Bucket=name)
        return name

    def storage_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for S3Storage that point at this server."""
        return {
            "endpoint_url": self.endpoint_url,
            "region": self.region,
            "access_key": self.access_key,
            "secret_key": self.secret_key,
        }


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/moto-api/", timeout=1):
            return True
    except urllib.error.HTTPError:
        return True  # any HTTP answer means it is serving
    except OSError:
        return False


@contextmanager
def run_moto_server(env: dict[str, str] | None = None, timeout: float = 30) -> Iterator[MotoServer]:
    """Start ``python -m moto.server`` on a free local port, wait until it answers, stop it after.

    ``env`` adds variables for the server process only (e.g. INITIAL_NO_AUTH_ACTION_COUNT).
    """
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=os.environ | (env or {}),
        )
        try:
            deadline = time.monotonic() + timeout
            while not _answers(url):
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    output = log.read().decode(errors="replace")[-2000:]
                    raise RuntimeError(f"moto server on port {port} did not start:\n{output}")
                time.sleep(0.1)
            yield MotoServer(url)
        finally:
            stop_process(proc, 10)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[MotoServer]:
    """One moto server for the whole test session (starting one takes about a second)."""
    with run_moto_server() as server:
        yield server


@pytest.fixture
def s3_bucket(s3_server: MotoServer) -> str:
    """A fresh, uniquely named, empty bucket on the session's moto server."""
    return s3_server.create_bucket()
