"""What a dump holds besides table rows: sequence states, large objects, materialized views, database properties.

The backup records each in its manifest (core/backup/logical.py), a verification compares a
restore with it (core/verify/checks.py), and a restore re-applies the database properties,
which pg_restore only emits when it creates the database itself (core/restore/logical.py).
"""

from __future__ import annotations

import hashlib
import re

import psycopg
from psycopg import sql

from dr_pipelines.core.manifest import DatabaseProperties, LargeObjectEntry, MatviewEntry
from dr_pipelines.core.pg.checksums import default_method, qualified, relation_checksum

LO_CHUNK = 4 << 20

_USER_RELATIONS_QUERY = """
SELECT n.nspname, c.relname, c.relispopulated
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = %s
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg_toast%%' AND n.nspname NOT LIKE 'pg_temp%%'
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = c.oid AND d.deptype = 'e')
ORDER BY 1, 2
"""

_GUC_LIST_ITEM = re.compile(r'\s*(?:"((?:[^"]|"")*)"|([^\s,]+))\s*,?')

# GUCs whose value is a list of identifiers (pg_dump's variable_is_guc_list_quote): their stored
# value must be split back into elements, or `SET search_path = 'a, b'` names one schema "a, b".
GUC_LIST_QUOTE = {"local_preload_libraries", "search_path", "session_preload_libraries",
                  "shared_preload_libraries", "temp_tablespaces", "unix_socket_directories"}


def sequence_states(conn: psycopg.Connection) -> dict[str, tuple[int, bool]]:
    """(last_value, is_called) of every user sequence, read from the sequence itself.

    pg_sequences.last_value is NULL after setval(seq, n, false): only the pair says exactly
    what nextval will return next.
    """
    out = {}
    for schema, name, _ in conn.execute(_USER_RELATIONS_QUERY, ("S",)).fetchall():
        last_value, is_called = conn.execute(
            sql.SQL("SELECT last_value, is_called FROM {}").format(sql.Identifier(schema, name))
        ).fetchone()
        out[qualified(schema, name)] = (last_value, is_called)
    return out


def large_objects(conn: psycopg.Connection) -> list[LargeObjectEntry]:
    """Every large object's size and SHA-256, read in chunks (an object may exceed a bytea's 1 GB)."""
    out = []
    for (oid,) in conn.execute("SELECT oid FROM pg_largeobject_metadata ORDER BY oid").fetchall():
        digest, size = hashlib.sha256(), 0
        while True:
            chunk = conn.execute("SELECT lo_get(%s, %s, %s)", (oid, size, LO_CHUNK)).fetchone()[0]
            digest.update(chunk)
            size += len(chunk)
            if len(chunk) < LO_CHUNK:
                break
        out.append(LargeObjectEntry(int(oid), size, digest.hexdigest()))
    return out


def materialized_views(conn: psycopg.Connection, *, evaluate: bool) -> list[MatviewEntry]:
    """Each materialized view: populated or not, and the rows and checksum of its content.

    With `evaluate` (at backup time) the content is what the view's query yields now, i.e.
    what pg_restore's REFRESH will produce from the dumped tables; without it (on a restore),
    the rows the view holds. A query that calls a function that is not immutable (now(),
    random(), current_date) yields other rows when the restore refreshes it: its content is
    not recorded (rows None), only whether it is populated.
    """
    out = []
    for schema, name, populated in conn.execute(_USER_RELATIONS_QUERY, ("m",)).fetchall():
        method = default_method(conn, schema, name)
        if not populated or (evaluate and not _reproducible(conn, schema, name)):
            out.append(MatviewEntry(qualified(schema, name), populated, None, None, method))
            continue
        source: sql.Composable = sql.Identifier(schema, name)
        if evaluate:
            source = sql.SQL("({})").format(sql.SQL(_view_query(conn, schema, name)))
        result = relation_checksum(conn, qualified(schema, name), source, method)
        out.append(MatviewEntry(result.name, True, result.rows, result.checksum, result.method))
    return out


# Function references in a stored query tree (pg_rewrite.ev_action); SQL value functions are CURRENT_DATE & co.
_FUNCTION_REFS = re.compile(r":(?:funcid|opfuncid|aggfnoid|winfnoid) (\d+)")


def _reproducible(conn: psycopg.Connection, schema: str, name: str) -> bool:
    """Whether the view's query calls only immutable functions (so a REFRESH elsewhere yields the same rows)."""
    tree = conn.execute("SELECT ev_action::text FROM pg_rewrite WHERE ev_class = %s::regclass",
                        (sql.Identifier(schema, name).as_string(conn),)).fetchone()[0]
    if "SQLVALUEFUNCTION" in tree:
        return False
    oids = sorted({int(oid) for oid in _FUNCTION_REFS.findall(tree)})
    return conn.execute("SELECT coalesce(bool_and(provolatile = 'i'), true) FROM pg_proc WHERE oid = ANY(%s)",
                        (oids,)).fetchone()[0]


def _view_query(conn: psycopg.Connection, schema: str, name: str) -> str:
    """The view's defining query with every name schema-qualified (rendered under search_path=pg_catalog)."""
    with conn.transaction():
        conn.execute("SELECT set_config('search_path', 'pg_catalog', true)")
        text = conn.execute("SELECT pg_get_viewdef(%s::regclass)",
                            (sql.Identifier(schema, name).as_string(conn),)).fetchone()[0]
    return text.strip().rstrip(";")


def database_properties(conn: psycopg.Connection) -> DatabaseProperties:
    """The current database's comment and its own settings (not per-role ones)."""
    comment, settings = conn.execute(
        "SELECT shobj_description(d.oid, 'pg_database'),"
        " coalesce((SELECT s.setconfig FROM pg_db_role_setting s WHERE s.setdatabase = d.oid AND s.setrole = 0),"
        " '{}')"
        " FROM pg_database d WHERE d.datname = current_database()"
    ).fetchone()
    return DatabaseProperties(comment, sorted(settings))


def apply_database_properties(conn: psycopg.Connection, props: DatabaseProperties) -> None:
    """Make the current database's comment and settings exactly `props` (as pg_dump --create would)."""
    database = sql.Identifier(conn.execute("SELECT current_database()").fetchone()[0])
    conn.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(database, sql.Literal(props.comment)))
    conn.execute(sql.SQL("ALTER DATABASE {} RESET ALL").format(database))
    for setting in props.settings:
        name, _, value = setting.partition("=")
        conn.execute(sql.SQL("ALTER DATABASE {} SET {} TO {}").format(database, sql.Identifier(name),
                                                                      _setting_value(name, value)))


def _setting_value(name: str, value: str) -> sql.Composable:
    if name.lower() in GUC_LIST_QUOTE:
        return sql.SQL(", ").join(sql.Literal(v) for v in split_guc_list(value))
    return sql.Literal(value)


def split_guc_list(value: str) -> list[str]:
    """A stored list setting as its elements: '"$user", public' -> ['$user', 'public'] (pg_dump's SplitGUCList)."""
    return [m[1].replace('""', '"') if m[1] is not None else m[2]
            for m in _GUC_LIST_ITEM.finditer(value) if m[1] is not None or m[2] is not None]
