"""What every portal request shares: the configuration, the per-clinic rate limit, the stream cap, the audit.

One process serves the portal; its limits are in memory (a restart resets the per-minute
windows, the per-hour export limit is counted from the audit table and survives).
"""

from __future__ import annotations

import ipaddress
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from dr_pipelines.core import context as core_context
from dr_pipelines.core.errors import ConfigError, read_config_text
from dr_pipelines.core.export import audit
from dr_pipelines.core.settings import Settings
from dr_pipelines.core.storage import Storage
from dr_pipelines.portal.errors import PortalError
from dr_pipelines.portal.tokens import Credential

APPLICATION_NAME = "drp-portal"  # every portal session carries it (pg_stat_activity shows what the portal holds)


def signing_secret(settings: Settings) -> str | None:
    """The backend-token HMAC secret from the settings or its file; never logged, at least 32 bytes."""
    if settings.portal_signing_secret is not None:
        secret = settings.portal_signing_secret.get_secret_value()
    elif settings.portal_signing_secret_file is not None:
        path = Path(settings.portal_signing_secret_file)
        secret = read_config_text(path, "portal signing secret file", missing_fix="create it or unset "
                                  "portal_signing_secret_file").strip().splitlines()[0:1]
        secret = secret[0].strip() if secret else ""
    else:
        return None
    if len(secret.encode()) < 32:
        raise ConfigError("portal_signing_secret is shorter than 32 bytes",
                          fix="generate one with `python -c 'import secrets; print(secrets.token_urlsafe(48))'`")
    return secret


class RateLimiter:
    """A sliding one-minute window of requests per key: a clinic, or a client address (``client_key``)."""

    def __init__(self, per_minute: int, *, code: str = "rate_limited", who: str = "clinic",
                 counted: str = "requests") -> None:
        self.per_minute = per_minute
        self.code, self.who, self.counted = code, who, counted
        self._hits: dict[str, deque[float]] = {}
        self._lock = threading.Lock()
        self._swept = time.monotonic()

    def check(self, key: str) -> None:
        """Count one request of ``key``; a 429 PortalError (not counted) once it made ``per_minute`` in a minute."""
        if not self.per_minute:
            return
        now = time.monotonic()
        with self._lock:
            self._sweep(now)
            hits = self._hits.setdefault(key, deque())
            while hits and hits[0] <= now - 60:
                hits.popleft()
            if len(hits) >= self.per_minute:
                wait = max(1, int(hits[0] + 60 - now + 0.999))
                raise PortalError(429, self.code, f"{self.who} {key} made {len(hits)} {self.counted} in the last "
                                  f"minute (limit {self.per_minute})", f"retry after {wait} s", retry_after=wait)
            hits.append(now)

    def _sweep(self, now: float) -> None:
        """Once a minute, forget keys idle for a minute (client addresses are unbounded)."""
        if now - self._swept < 60:
            return
        self._swept = now
        for key in [k for k, hits in self._hits.items() if not hits or hits[-1] <= now - 60]:
            del self._hits[key]


def client_key(address: str | None) -> str:
    """The key a client address is limited by: the address, or its /64 for IPv6 (one host holds a whole /64)."""
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return address or "unknown"
    return str(ipaddress.ip_network(f"{ip}/64", strict=False)) if ip.version == 6 else str(ip)


class StreamSlots:
    """The global cap on concurrent streams and downloads (all clinics together)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0
        self._lock = threading.Lock()

    def acquire(self) -> None:
        with self._lock:
            if self.active >= self.limit:
                raise PortalError(429, "too_busy", f"the portal is serving {self.active} streams "
                                  f"(limit {self.limit})", "retry in a few seconds", retry_after=5)
            self.active += 1

    def release(self) -> None:
        with self._lock:
            self.active -= 1


@dataclass
class Portal:
    """The portal's configuration and shared state, built once from Settings."""

    settings: Settings
    storage: Storage
    secret: str | None
    limiter: RateLimiter
    slots: StreamSlots
    strangers: RateLimiter  # requests without a valid credential, per client address
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    worker: Any = None  # the ExportWorker, started with the application (portal/worker.py)

    @classmethod
    def from_settings(cls, settings: Settings) -> Portal:
        return cls(settings, core_context.storage(settings), signing_secret(settings),
                   RateLimiter(settings.portal_requests_per_minute), StreamSlots(settings.portal_max_streams),
                   RateLimiter(settings.portal_unauthenticated_per_minute, code="unauthenticated_rate_limited",
                               who="client address", counted="requests without a valid credential"))

    @property
    def dsn(self) -> str:
        return self.settings.dsn

    @property
    def root(self) -> str:
        return self.settings.export_tenant_root


@dataclass
class Asked:
    """One request, as the audit records it."""

    request: str  # "GET /api/data/public.patients?format=csv"
    client: str | None
    credential: Credential | None = None
    tables: list[str] = field(default_factory=list)
    formats: list[str] = field(default_factory=list)
    export_id: str | None = None
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    attempt_id: uuid.UUID = field(default_factory=uuid.uuid4)  # a stream's started and closing rows share it

    def record(self, portal: Portal, status: str, **fields: object) -> audit.AuditRecord:
        c = self.credential
        rec = audit.AuditRecord(
            requester=c.subject if c else "anonymous", tenant_ids=[c.clinic_id] if c else [],
            root_table=portal.root, started_at=self.started_at, tables=list(self.tables), formats=list(self.formats),
            destination="http", export_id=self.export_id, credential_id=c.id if c else None,
            client_address=self.client, request=self.request[:500], attempt_id=self.attempt_id)
        for name, value in fields.items():
            setattr(rec, name, value)
        rec.status = status
        if status != "started" and rec.finished_at is None:
            rec.finished_at = datetime.now(UTC)
        return rec

    def audit(self, conn: psycopg.Connection, portal: Portal, status: str, **fields: object) -> audit.AuditRecord:
        rec = self.record(portal, status, **fields)
        audit.append(conn, rec)
        return rec
