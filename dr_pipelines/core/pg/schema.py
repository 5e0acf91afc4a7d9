"""The schema of a database as DDL text, normalized so two databases can be diffed exactly."""

from __future__ import annotations

import subprocess

from dr_pipelines.core.errors import DatabaseError
from dr_pipelines.core.pg.connect import connect, describe, libpq_env
from dr_pipelines.core.pg.profile import server_identity
from dr_pipelines.core.pg.tools import client_tool


def schema_ddl(dsn: str) -> str:
    """`pg_dump --schema-only` without the lines that differ between identical schemas.

    pg_dump 15.14+ wraps its output in \\restrict/\\unrestrict with a random key per run.
    """
    with connect(dsn) as conn:
        major = server_identity(conn).major
    conninfo, env = libpq_env(dsn)
    out = subprocess.run([client_tool("pg_dump", major), "--schema-only", "--no-password", f"--dbname={conninfo}"],
                         capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise DatabaseError(f"pg_dump --schema-only of {describe(dsn)} failed: {out.stderr.strip()}", fix="see the message")
    return "".join(
        line for line in out.stdout.splitlines(keepends=True)
        if not line.startswith(("\\restrict ", "\\unrestrict "))
    )
