"""Refused pushes and recorded decisions: small JSON objects under wal/events/, next to the archive.

A refusal is loud twice: the error PostgreSQL logs (and retries), and an event a person finds in
storage afterwards, naming the file and both checksums or system identifiers.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

from dr_pipelines.core.errors import DrpError
from dr_pipelines.core.storage import Storage
from dr_pipelines.core.wal.names import EVENTS_PREFIX


class WalConflictError(DrpError):
    """A WAL file with this name is archived already with different content."""


def record_event(storage: Storage, kind: str, name: str, details: dict[str, object]) -> str:
    """Store a small JSON event (a refused push, a recorded decision) next to the archive."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    key = f"{EVENTS_PREFIX}{stamp}-{name}.{kind}.json"
    body = {"kind": kind, "name": name, "at": datetime.now(UTC).isoformat(), **details}
    storage.put_bytes(key, json.dumps(body, sort_keys=True).encode() + b"\n")
    return key


