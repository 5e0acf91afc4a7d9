"""A TCP proxy on 127.0.0.1 that forwards to a real server and drops big transfers midway.

Stands in for a network path that breaks long transfers (a load balancer or NAT resetting a
connection, a flaky link): each connection is reset once it has carried ``drop_after`` bytes
towards the server, so small requests (list, abort) still get through while every large
upload fails, retries included. Runs in daemon threads of the test process with a bounded
lifetime, so a forgotten proxy cannot outlive its test.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass
class FaultProxy:
    """Where the proxy listens, and how many connections it has dropped so far."""

    url: str
    drop_after: int
    drops: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _dropped(self) -> None:
        with self._lock:
            self.drops += 1


def _reset(sock: socket.socket) -> None:
    """Close with RST (SO_LINGER 0), as a dropped link looks to the client."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


def _pipe(proxy: FaultProxy, src: socket.socket, dst: socket.socket, upstream: bool, done: threading.Event) -> None:
    sent = 0
    try:
        while not done.is_set():
            data = src.recv(65536)
            if not data:
                break
            if upstream:
                if sent + len(data) > proxy.drop_after:  # forward up to the budget, then drop
                    dst.sendall(data[: proxy.drop_after - sent])
                    proxy._dropped()
                    break
                sent += len(data)
            dst.sendall(data)
    except OSError:
        pass
    finally:
        done.set()


def _serve(proxy: FaultProxy, listener: socket.socket, target: tuple[str, int], until: float, stop: threading.Event) -> None:
    listener.settimeout(0.2)
    while not stop.is_set() and time.monotonic() < until:
        try:
            client, _ = listener.accept()
        except TimeoutError:
            continue
        except OSError:
            return
        try:
            server = socket.create_connection(target, timeout=5)
        except OSError:
            _reset(client)
            continue
        server.settimeout(None)
        done = threading.Event()
        for src, dst, upstream in ((client, server, True), (server, client, False)):
            threading.Thread(target=_pipe, args=(proxy, src, dst, upstream, done), daemon=True).start()
        threading.Thread(target=_close_when, args=(done, client, server, until), daemon=True).start()
    listener.close()


def _close_when(done: threading.Event, client: socket.socket, server: socket.socket, until: float) -> None:
    done.wait(max(0.0, until - time.monotonic()))
    _reset(client)
    _reset(server)


@contextmanager
def fault_proxy(target_url: str, *, drop_after: int, lifetime: float = 300) -> Iterator[FaultProxy]:
    """Proxy 127.0.0.1:<free port> -> target_url's host:port, resetting connections past ``drop_after`` bytes."""
    parts = urlsplit(target_url)
    assert parts.hostname in ("127.0.0.1", "localhost"), "the fault proxy only forwards to local servers"
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    proxy = FaultProxy(f"{parts.scheme}://127.0.0.1:{port}", drop_after)
    stop = threading.Event()
    thread = threading.Thread(
        target=_serve, args=(proxy, listener, ("127.0.0.1", parts.port), time.monotonic() + lifetime, stop),
        name="fault-proxy", daemon=True,
    )
    thread.start()
    try:
        yield proxy
    finally:
        stop.set()
        thread.join(timeout=5)
