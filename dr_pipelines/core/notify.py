"""Alerts: always a log line, plus an optional JSON webhook (Slack-compatible ``text`` field).

Open-source Dagster sends no alerts by itself; its sensors call this.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from typing import Any

log = logging.getLogger("dr_pipelines.alerts")


def notify(title: str, details: dict[str, Any] | None = None, *, webhook_url: str | None = None, timeout: float = 10) -> bool:
    """Log the alert and POST it to the webhook if one is configured; True if delivered (or no webhook).

    A webhook failure is logged, never raised: an alert must not fail the run that reports it.
    The URL may hold a token, so it never appears in a log line.
    """
    details = details or {}
    log.warning("ALERT %s %s", title, json.dumps(details, default=str, sort_keys=True))
    if not webhook_url:
        return True
    text = title + "".join(f"\n- {k}: {v}" for k, v in details.items())
    body = json.dumps({"text": text, "title": title, "details": details}, default=str).encode()
    request = urllib.request.Request(webhook_url, data=body, headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return 200 <= response.status < 300
    except (urllib.error.URLError, OSError) as exc:
        log.error("alert webhook delivery failed: %s", type(exc).__name__)
        return False
