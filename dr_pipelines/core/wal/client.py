"""The tiny client of archive_command and restore_command: hand the request to a long-running drp process.

Standard library only and run with ``python -I -S``, so it starts in milliseconds (no site-packages,
no drp imports) instead of the 1-2 s of a `drp` process:

- ``client.py SOCKET FALLBACK WAL_PATH`` (archive_command, %p): the archiver (daemon.py) pushes it;
  exit 0 only on its ack, else 1 so PostgreSQL keeps the segment and retries. When no archiver
  listens it execs ``FALLBACK wal push WAL_PATH`` (a direct push); ``-`` fails instead.
- ``client.py fetch SOCKET FALLBACK NAME DEST`` (restore_command, %f %p): the recovering
  `drp restore --pitr` (wal/restore.py WalFetcher) writes the file to DEST. Exit 0 ok, 1 not in the
  archive (PostgreSQL's normal end of recovery), 200 for anything else (corrupt, refused, the server
  gone or dying mid-request): above 125, so PostgreSQL aborts recovery instead of promoting short.
  With no server listening it execs ``FALLBACK wal fetch NAME DEST``, or with ``-`` exits 200.
"""

import sys

# _socket, not socket: the socket module imports enum, selectors and collections, which doubled the
# client's start-up CPU (23 ms against 11 ms here); PostgreSQL starts one client per segment.
from _socket import AF_UNIX, SOCK_STREAM, socket

# posix, not os, for the same reason: with -S nothing else imports os, whose import (with
# _collections_abc, stat, posixpath) was 1.4 of the client's 8.7 ms of CPU (docs/benchmarks.md).
from posix import execv, getcwd

TIMEOUT_S = 600
NOT_ARCHIVED_EXIT = 1
# restore_command's exit status for a file that exists but cannot be used (corrupt, undecryptable, storage
# down, refused): above 125, PostgreSQL aborts recovery instead of reading it as "end of archive" and promoting short.
ABORT_RECOVERY_EXIT = 200


def ask(sock_path: str, request: str) -> str | None:
    """One request line, one reply line; None when nothing listens on ``sock_path``."""
    sock = socket(AF_UNIX, SOCK_STREAM)
    try:
        sock.connect(sock_path)
    except OSError:
        sock.close()
        return None
    sock.settimeout(TIMEOUT_S)
    reply = b""
    try:
        sock.sendall(request.encode() + b"\n")
        while not reply.endswith(b"\n"):
            chunk = sock.recv(4096)
            if not chunk:
                break
            reply += chunk
    except OSError as exc:
        reply = f"error connection to the server failed ({exc})\n".encode()
    finally:
        sock.close()
    return reply.decode(errors="replace").strip() or "error the server closed the connection before answering"


def push(sock_path: str, fallback: str, path: str) -> int:
    reply = ask(sock_path, path)
    if reply is None:
        if fallback == "-":
            sys.stderr.write(f"drp wal archiver not reachable at {sock_path}\n")
            return 1
        execv(fallback, [fallback, "wal", "push", path])
    if reply.startswith("ok"):
        return 0
    sys.stderr.write(f"drp wal archiver: {reply} ({path.rsplit('/', 1)[-1]})\n")
    return 1


def fetch(sock_path: str, fallback: str, name: str, dest: str) -> int:
    if "\t" in name or "\t" in dest or "\n" in name or "\n" in dest:
        sys.stderr.write("drp wal fetch: tab or newline in the WAL name or destination\n")
        return ABORT_RECOVERY_EXIT
    reply = ask(sock_path, f"fetch\t{name}\t{dest}")
    if reply is None:
        if fallback == "-":
            sys.stderr.write(f"drp wal fetch: the restore serving WAL is gone ({sock_path}): recovery stops\n")
            return ABORT_RECOVERY_EXIT
        execv(fallback, [fallback, "wal", "fetch", name, dest])
    if reply.startswith("ok"):
        return 0
    sys.stderr.write(f"drp wal fetch {name}: {reply}\n")
    return NOT_ARCHIVED_EXIT if reply.startswith("missing") else ABORT_RECOVERY_EXIT


def absolute(path: str) -> str:
    """``path`` made absolute against the working directory (PostgreSQL's %p is relative to the data directory)."""
    return path if path.startswith("/") else f"{getcwd().rstrip('/')}/{path}"


def main(argv: list[str]) -> int:
    if len(argv) == 4:
        return push(argv[1], argv[2], absolute(argv[3]))
    if len(argv) == 6 and argv[1] == "fetch":
        return fetch(argv[2], argv[3], argv[4], absolute(argv[5]))
    sys.stderr.write("usage: client.py SOCKET FALLBACK_DRP|- WAL_PATH\n"
                     "       client.py fetch SOCKET FALLBACK_DRP|- WAL_NAME DEST_PATH\n")
    return ABORT_RECOVERY_EXIT if argv[1:2] == ["fetch"] else 2  # below 126 recovery would end short


if __name__ == "__main__":
    sys.exit(main(sys.argv))
