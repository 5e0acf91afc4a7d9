"""The export portal on a real uvicorn server in a thread (real sockets), and a tiny HTTP client on http.client."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import uvicorn

from dr_pipelines.core.settings import Settings
from dr_pipelines.portal.app import create_app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    complete: bool = True  # False: the server cut the body off (IncompleteRead)

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class PortalServer:
    settings: Settings
    port: int = field(default_factory=free_port)

    def __post_init__(self) -> None:
        self.app = create_app(self.settings)
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="error",
                                                    access_log=False, lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, name="portal-under-test", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the portal did not start")
            time.sleep(0.05)

    @property
    def portal(self) -> Any:
        return self.app.state.portal

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)

    def request(self, method: str, path: str, *, token: str | None = None, body: bytes | None = None,
                headers: dict[str, str] | None = None, json_body: Any = None, source: str | None = None) -> Reply:
        """``source``: the client's address (any 127.x.y.z on Linux loopback), for per-address limits."""
        h = dict(headers or {})
        if token is not None:
            h["Authorization"] = f"Bearer {token}"
        if json_body is not None:
            body = json.dumps(json_body).encode()
            h.setdefault("Content-Type", "application/json")
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120,
                                          source_address=(source, 0) if source else None)
        try:
            conn.request(method, path, body=body, headers=h)
            resp = conn.getresponse()
            try:
                data, complete = resp.read(), True
            except http.client.IncompleteRead as exc:
                data, complete = exc.partial, False
            return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data, complete)
        finally:
            conn.close()

    def get(self, path: str, token: str | None = None, **kw: Any) -> Reply:
        return self.request("GET", path, token=token, **kw)

    def raw(self, path: str, token: str) -> socket.socket:
        """A socket that has sent ``GET path`` and not read anything yet (for disconnects and held slots)."""
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=30)
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n\r\n".encode())
        return sock


def read_head(sock: socket.socket) -> tuple[int, dict[str, str]]:
    """Read a response's status and headers from a raw socket (a little body may follow in the buffer)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    status = int(head[0].split()[1])
    return status, {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in head[1:])}
