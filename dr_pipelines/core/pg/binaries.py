"""Find PostgreSQL binaries: server tools are rarely on PATH (Debian keeps them per version)."""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from dr_pipelines.core.errors import PostgresNotFoundError

MIN_SERVER_MAJOR = 15
SERVER_TOOLS = ("initdb", "pg_ctl", "postgres")

INSTALL_HINT = (
    "install PostgreSQL 15+ server binaries (Debian/Ubuntu: `apt-get install postgresql`; "
    "macOS: `brew install postgresql@16`) or point DRP_PG_BIN_DIR at the directory holding initdb"
)


@dataclass(frozen=True)
class PgBinaries:
    """One directory of PostgreSQL binaries of a known major version."""

    bin_dir: Path
    major: int

    def tool(self, name: str) -> str:
        path = self.bin_dir / name
        if not path.exists():
            raise PostgresNotFoundError(f"{name} is missing from {self.bin_dir}", fix=INSTALL_HINT)
        return str(path)


def _major_of(bin_dir: Path) -> int | None:
    postgres = bin_dir / "postgres"
    if not postgres.exists():
        return None
    try:
        out = subprocess.run([str(postgres), "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r"(\d+)(?:\.\d+)?", out)
    return int(match.group(1)) if match else None


def _candidates() -> list[Path]:
    dirs: list[Path] = []
    explicit = os.environ.get("DRP_PG_BIN_DIR")
    if explicit:
        dirs.append(Path(explicit))
    on_path = shutil.which("initdb")
    if on_path:
        dirs.append(Path(on_path).resolve().parent)
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=10)
            if out.returncode == 0 and out.stdout.strip():
                dirs.append(Path(out.stdout.strip()))
        except (OSError, subprocess.TimeoutExpired):
            pass
    versioned = glob.glob("/usr/lib/postgresql/*/bin") + glob.glob("/usr/pgsql-*/bin")
    versioned += glob.glob("/opt/homebrew/opt/postgresql@*/bin") + glob.glob("/usr/local/opt/postgresql@*/bin")
    dirs.extend(sorted((Path(d) for d in versioned), key=lambda p: _version_key(str(p)), reverse=True))
    unique: list[Path] = []
    for d in dirs:
        if d not in unique:
            unique.append(d)
    return unique


def _version_key(path: str) -> int:
    match = re.search(r"(\d+)", path)
    return int(match.group(1)) if match else 0


def _usable(candidate: Path) -> PgBinaries | None:
    """candidate as a PgBinaries when it holds initdb, pg_ctl and postgres of a supported major."""
    if not all((candidate / tool).exists() for tool in SERVER_TOOLS):
        return None
    # A folder of symlinks (e.g. /usr/local/bin -> /usr/lib/postgresql/15/bin) lacks the other tools
    # (pg_basebackup, pg_restore, ...): use the folder the real initdb lives in.
    bin_dir = (candidate / "initdb").resolve().parent
    major = _major_of(bin_dir)
    return PgBinaries(bin_dir=bin_dir, major=major) if major is not None and major >= MIN_SERVER_MAJOR else None


@lru_cache(maxsize=1)
def find_pg_binaries() -> PgBinaries:
    """The first directory holding initdb, pg_ctl and postgres of a supported major version.

    Order: DRP_PG_BIN_DIR, PATH, `pg_config --bindir`, then well-known per-version folders
    (newest first). Raises PostgresNotFoundError naming where it looked and how to fix it.
    """
    looked: list[str] = []
    for candidate in _candidates():
        looked.append(str(candidate))
        found = _usable(candidate)
        if found is not None:
            return found
    where = ", ".join(looked) if looked else "PATH, pg_config and /usr/lib/postgresql/*/bin"
    raise PostgresNotFoundError(
        f"PostgreSQL {MIN_SERVER_MAJOR}+ server binaries (initdb, pg_ctl, postgres) not found (looked in: {where})",
        fix=INSTALL_HINT,
    )


def installed_pg_binaries() -> list[PgBinaries]:
    """One PgBinaries per supported major installed, newest first (the tests run on each of them)."""
    by_major: dict[int, PgBinaries] = {}
    for candidate in _candidates():
        found = _usable(candidate)
        if found is not None:
            by_major.setdefault(found.major, found)
    return [by_major[major] for major in sorted(by_major, reverse=True)]
