"""--into-schema: a clinic's past rows as plain tables in a new schema of a target database.

For people to inspect and cherry-pick (``INSERT ... SELECT`` from the side table) instead of
applying a whole restore. The schema is new: an existing one of that name is refused before
anything is written (its tables may be someone's earlier cherry-picking). Everything happens
in one transaction of the target: a failure half way leaves no half schema. Each table and
the schema carry a COMMENT saying where and when the rows came from.

Side tables have the source tables' columns and types, no constraints, defaults or indexes;
user-defined types (enums, domains) must exist in the target, which they do in the live
database. A table is named as its source table, or ``schema.table`` when two scope tables of
different schemas share a name.
"""

from __future__ import annotations

from datetime import UTC, datetime

import psycopg
from psycopg import sql

from dr_pipelines.core.errors import DrpError
from dr_pipelines.core.pg.connect import connect, describe
from dr_pipelines.core.pg.snapshots import adopted_session
from dr_pipelines.core.tenancy import Scope
from dr_pipelines.core.tenant_restore.transfer import bind_clinic, copy_tenant_rows

MAX_NAME_BYTES = 63  # PostgreSQL's NAMEDATALEN - 1: longer names would be truncated silently

# COMMENT takes no parameters: the object and the text travel as transaction-local settings and
# a constant DO block quotes them (%I, %L), so neither a name nor a clinic id is spliced into SQL.
_COMMENT_ON_TABLE = ("DO $$BEGIN EXECUTE format('COMMENT ON TABLE %s IS %L', "
                     "current_setting('drp.comment_on')::regclass, current_setting('drp.comment')); END$$")
_COMMENT_ON_SCHEMA = ("DO $$BEGIN EXECUTE format('COMMENT ON SCHEMA %I IS %L', "
                      "current_setting('drp.comment_on'), current_setting('drp.comment')); END$$")


class SideSchemaError(DrpError):
    """The side schema cannot be created (it exists, its name is unusable, a type is missing in the target)."""


def into_schema(past_dsn: str, target_dsn: str, scope: Scope, clinic: str, schema: str, *,
                past_label: str | None = None) -> dict[str, int]:
    """Copy the clinic's past rows of every scope table into the new ``schema`` of the target; rows per table.

    ``past_label`` says what the past is (e.g. "PITR to 2026-11-30T14:05:00Z") in the comments.
    """
    clinic = str(clinic)
    _check_name(schema)
    where = describe(target_dsn)
    source = f"{describe(past_dsn)} ({past_label})" if past_label else describe(past_dsn)
    copied_at = datetime.now(UTC).isoformat(timespec="seconds")
    rows: dict[str, int] = {}
    with connect(target_dsn) as target:
        _create_schema(target, schema, where)
        with adopted_session(past_dsn, None) as past:
            bind_clinic(past, clinic)
            for t, name in zip(scope.tables, side_names(scope), strict=True):
                dst = sql.Identifier(schema, name)
                try:
                    with target.transaction():
                        rows[t.name] = copy_tenant_rows(past, scope, t, target, dst)
                except psycopg.errors.UndefinedObject as exc:
                    raise SideSchemaError(
                        f"cannot create {schema}.{name} in {where}: {str(exc).splitlines()[0]}; nothing was written",
                        fix="use the live database as the target (it has the clinic tables' types), or create the "
                            "types in the target first (pg_dump --schema-only of the live database)") from None
                _comment(target, _COMMENT_ON_TABLE, dst.as_string(target),
                         f"clinic {clinic}'s rows of {t.name} from {source}, copied {copied_at} "
                         f"by drp tenant restore --into-schema ({rows[t.name]} rows; no constraints)")
        _comment(target, _COMMENT_ON_SCHEMA, schema,
                 f"clinic {clinic}'s rows as they were in {source}, one table per table of its scope, "
                 f"copied {copied_at} by drp tenant restore --into-schema")
    return rows


def side_names(scope: Scope) -> list[str]:
    """The side table name for each scope table: its own, or schema.table where two schemas share one."""
    counts: dict[str, int] = {}
    for t in scope.tables:
        counts[t.table] = counts.get(t.table, 0) + 1
    names = [t.table if counts[t.table] == 1 else f"{t.schema}.{t.table}" for t in scope.tables]
    return [n if len(n.encode()) <= MAX_NAME_BYTES else f"table_{i}" for i, n in enumerate(names)]


def _check_name(schema: str) -> None:
    if not schema or len(schema.encode()) > MAX_NAME_BYTES or schema.startswith("pg_"):
        raise SideSchemaError(f"{schema!r} cannot be a schema name (empty, longer than {MAX_NAME_BYTES} bytes, "
                              "or starting with pg_, which PostgreSQL reserves); nothing was written",
                              fix="pass --into-schema a new name such as restore_clinic_42_20261130")


def _create_schema(conn: psycopg.Connection, schema: str, where: str) -> None:
    """CREATE SCHEMA, refusing an existing one by name (checked first, and again by CREATE itself)."""
    exists = conn.execute("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = %s)", (schema,)).fetchone()[0]
    try:
        if not exists:
            with conn.transaction():
                conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    except psycopg.errors.DuplicateSchema:
        exists = True
    if exists:
        raise SideSchemaError(
            f"schema {schema!r} already exists in {where}; nothing was written",
            fix=f"choose another name with --into-schema, or, once nobody needs its tables, drop it first "
                f"(DROP SCHEMA {sql.Identifier(schema).as_string(None)} CASCADE)")


def _comment(conn: psycopg.Connection, statement: str, target: str, text: str) -> None:
    conn.execute("SELECT set_config('drp.comment_on', %s, true), set_config('drp.comment', %s, true)",
                 (target, text))
    conn.execute(statement)
