"""Connections with psycopg 3, and DSN handling that never leaks a password."""

from __future__ import annotations

import os
from typing import Any

import psycopg
from psycopg import conninfo as _conninfo

from dr_pipelines.core.errors import ConfigError, DatabaseError

_SECRET_KEYS = {"password", "sslpassword"}


def libpq_env(dsn: str) -> tuple[str, dict[str, str]]:
    """A conninfo without the password (argv is visible in `ps`) and the env that carries it."""
    params = _conninfo.conninfo_to_dict(dsn)
    env = dict(os.environ)
    password = params.pop("password", None)
    if password:
        env["PGPASSWORD"] = str(password)
    return _conninfo.make_conninfo(**{k: str(v) for k, v in params.items()}), env


def parse_dsn(dsn: str, *, setting: str = "dsn") -> dict[str, str]:
    """Parse a libpq DSN (URI or key=value), raising ConfigError naming the setting."""
    try:
        params = _conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        # psycopg's message can echo the DSN, password included: do not chain it.
        raise ConfigError(
            f"{setting} is not a valid PostgreSQL connection string",
            fix="use a URI like postgresql://user@host:5432/dbname or key=value pairs like 'host=... dbname=...'",
        ) from None
    port = str(params.get("port", "5432"))
    if not all(p.strip().isdigit() for p in port.split(",")):
        raise ConfigError(f"{setting} has a non-numeric port", fix="use a port number, e.g. port=5432")
    return params


def redact_dsn(dsn: str) -> str:
    """The DSN as key=value pairs with any password replaced, safe for logs and metadata."""
    try:
        params = _conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "<unparseable dsn>"
    shown = {k: ("********" if k in _SECRET_KEYS else v) for k, v in params.items()}
    return _conninfo.make_conninfo(**shown)


def with_dbname(dsn: str, dbname: str) -> str:
    """The same server and credentials, another database."""
    return _conninfo.make_conninfo(dsn, dbname=dbname)


def describe(dsn: str) -> str:
    """host:port/dbname for messages."""
    try:
        p = _conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "<unparseable dsn>"
    return f"{p.get('host', 'localhost')}:{p.get('port', '5432')}/{p.get('dbname', p.get('user', ''))}"


def connect(dsn: str, *, autocommit: bool = False, connect_timeout: int = 10, **kwargs: Any) -> psycopg.Connection:
    """psycopg.connect, with failures turned into a DatabaseError that names the server and the fix."""
    parse_dsn(dsn)
    try:
        return psycopg.connect(dsn, autocommit=autocommit, connect_timeout=connect_timeout, **kwargs)
    except psycopg.OperationalError as exc:
        reason = _first_line(str(exc))
        raise DatabaseError(
            f"cannot connect to PostgreSQL at {describe(dsn)}: {reason}",
            fix="check that the server is running and that host, port, user, password and database in the DSN are right",
        ) from None


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "unknown error"
