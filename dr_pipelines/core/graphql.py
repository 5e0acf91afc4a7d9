"""A Dagster webserver's GraphQL API over plain HTTP: one POST, JSON in and out.

No ``dagster`` import (the restore path and the portal stay free of the orchestrator: the
dagster-graphql client would load all of Dagster, ~1.5 s and ~40 MB, into a process that only
asks a few questions). Used by the demo's proof of life (dr_pipelines/demo/ui.py) and by the
export portal to launch and follow ``tenant_export`` runs (dr_pipelines/portal/dagster_runs.py).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlsplit

from dr_pipelines.core.errors import DrpError


def shown_url(url: str) -> str:
    """``url`` without user, password, path or query: what an error may name."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")


def graphql(url: str, query: str, variables: dict[str, Any] | None = None, *, timeout: float = 10,
            fix: str = "check that the Dagster webserver runs and its URL") -> dict[str, Any]:
    """The ``data`` of ``query`` against ``<url>/graphql``; a DrpError (naming the host only) if it fails."""
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    req = urllib.request.Request(url.rstrip("/") + "/graphql", data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            payload = json.loads(resp.read())
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise DrpError(f"the Dagster webserver at {shown_url(url)} is not answering ({type(exc).__name__})",
                       fix=fix) from None
    if payload.get("errors"):
        raise DrpError(f"Dagster GraphQL error: {str(payload['errors'][0].get('message'))[:500]}",
                       fix="check the webserver log")
    return payload["data"]
