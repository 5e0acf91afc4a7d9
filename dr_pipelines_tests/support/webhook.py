"""A real HTTP server on 127.0.0.1 that records the JSON POSTed to it: the alert webhook's peer."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@contextmanager
def webhook_receiver() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    received: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            length = int(self.headers.get("Content-Length", 0))
            received.append(json.loads(self.rfile.read(length)))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook/secret-token", received
    finally:
        server.shutdown()
        server.server_close()


def alerts_for_failed_run(defs: Any, instance: Any, result: Any) -> list[dict[str, Any]]:
    """Evaluate run_failure_alert on a failed in-process run; the JSON bodies the webhook received."""
    import dagster as dg

    from dr_pipelines.defs.lib.resources import DrpSettingsResource

    failure = next(e for e in result.all_events if e.event_type == dg.DagsterEventType.RUN_FAILURE)
    with webhook_receiver() as (url, received):
        context = dg.build_run_status_sensor_context(
            sensor_name="run_failure_alert", dagster_instance=instance, dagster_run=result.dagster_run,
            dagster_event=failure, resources={"drp": DrpSettingsResource(notify_webhook_url=url)},
        ).for_run_failure()
        defs.resolve_sensor_def("run_failure_alert")(context)
    return received
