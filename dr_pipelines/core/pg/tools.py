"""Client tools (pg_dump, pg_restore, pg_dumpall, psql) whose major version can read the server.

A pg_dump older than the server refuses to run (or worse, misses objects): pick one at
least as new as the server, preferring the same major.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from functools import lru_cache
from pathlib import Path

from dr_pipelines.core.errors import PostgresNotFoundError
from dr_pipelines.core.pg.binaries import _candidates


@lru_cache(maxsize=64)
def tool_version(path: str) -> tuple[int, str]:
    out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10).stdout.strip()
    match = re.search(r"(\d+)(?:\.(\d+))?", out)
    if not match:
        raise PostgresNotFoundError(f"cannot tell the version of {path} ({out!r})", fix="reinstall PostgreSQL client tools")
    return int(match.group(1)), out


def client_tool(name: str, server_major: int) -> str:
    """Path of `name` with major >= server_major (same major preferred)."""
    dirs = list(_candidates())
    on_path = shutil.which(name)
    if on_path:
        dirs.append(Path(on_path).parent)
    found: list[tuple[int, int, str]] = []  # (major, search order, path): versioned dirs beat wrappers on PATH
    for order, d in enumerate(dirs):
        path = d / name
        if path.exists():
            found.append((tool_version(str(path))[0], order, str(path)))
    usable = sorted(f for f in found if f[0] >= server_major)
    if usable:
        return usable[0][2]
    have = ", ".join(f"{p} ({m})" for m, _, p in found) or "none"
    raise PostgresNotFoundError(
        f"no {name} of major version {server_major} or newer for this PostgreSQL {server_major} server (found: {have})",
        fix=f"install the PostgreSQL {server_major}+ client tools (Debian: apt-get install postgresql-client-{server_major}) "
        "or set DRP_PG_BIN_DIR",
    )
