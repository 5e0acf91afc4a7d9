"""archive_command's tiny client: hand %p to the long-running archiver, exit 0 only on its ack.

Standard library only and run as ``python -I -S client.py SOCKET FALLBACK %p``, so it starts in
milliseconds (no site-packages, no drp imports). When no archiver listens it execs FALLBACK
(``drp``) as ``drp wal push %p``, a direct in-process push; pass ``-`` to fail instead.
Any other outcome (an error reply, the archiver dying before its ack) exits 1, so PostgreSQL
keeps the segment and retries.
"""

import os
import socket
import sys

TIMEOUT_S = 600


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        sys.stderr.write("usage: client.py SOCKET FALLBACK_DRP|- WAL_PATH\n")
        return 2
    sock_path, fallback, path = argv[1], argv[2], os.path.abspath(argv[3])
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(sock_path)
    except OSError as exc:
        sock.close()
        if fallback == "-":
            sys.stderr.write(f"drp wal archiver not reachable at {sock_path} ({exc.strerror})\n")
            return 1
        os.execv(fallback, [fallback, "wal", "push", path])
    sock.settimeout(TIMEOUT_S)
    reply = b""
    try:
        sock.sendall(path.encode() + b"\n")
        while not reply.endswith(b"\n"):
            chunk = sock.recv(4096)
            if not chunk:
                break
            reply += chunk
    except OSError as exc:
        reply = f"error connection to the archiver failed ({exc})\n".encode()
    finally:
        sock.close()
    if reply.startswith(b"ok"):
        return 0
    message = reply.decode(errors="replace").strip() or "error the archiver closed the connection before acknowledging"
    sys.stderr.write(f"drp wal archiver: {message} ({os.path.basename(path)})\n")
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
