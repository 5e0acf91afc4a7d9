"""One table's past rows against its live rows, in one database where both relations exist.

The single definition of "deleted", "added" and "changed" for tenant restore: the preview
counts with these builders and the apply selects with the same ones, so what a preview
announces is what an apply does.

- With a primary key: rows are matched by key. Only in the past = deleted since; only live =
  added since; same key with any column ``IS DISTINCT FROM`` = changed (NULL vs NULL is no
  change), counted per column.
- Without one: the two sides are multisets of whole rows (``EXCEPT ALL``): a row present
  twice in the past and once live is one deleted row. Nothing is "changed" there.

Equality is the column type's own ``=`` where it is a true equality, a default btree or hash
operator class's (numeric 1.0 equals 1.00, as in the content checksums). Other types (json,
xml, point, box whose "=" compares areas, and arrays/composites/domains of them) are compared
by their text form; ``compared_columns`` decides from the catalog.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

SAMPLES = 10  # sample keys kept per kind of difference

# Per given type: whether every type its values are made of (through domains, arrays, composites
# and ranges, down to base and enum types) has a true equality, the "=" of a default btree or hash
# operator class (its own, or that of a type it is binary-coercible to: varchar -> text). Array,
# record and range equality use their elements' btree "=", so the walk down to the leaves decides.
# A "=" without such a class may not mean equal values: box "=" compares areas.
_EQUALITY_QUERY = """
WITH RECURSIVE tree(top, oid) AS (
    SELECT x, x FROM unnest(%s::oid[]) AS x
  UNION
    SELECT tree.top, y.oid FROM tree JOIN pg_type t ON t.oid = tree.oid
    CROSS JOIN LATERAL (
        SELECT t.typbasetype WHERE t.typtype = 'd'
        UNION ALL SELECT t.typelem WHERE t.typcategory = 'A' AND t.typelem <> 0
        UNION ALL SELECT a.atttypid FROM pg_attribute a
                  WHERE t.typtype = 'c' AND a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped
        UNION ALL SELECT r.rngsubtype FROM pg_range r WHERE r.rngtypid = t.oid
    ) AS y(oid)
)
SELECT tree.top, bool_and(t.typtype = 'e' OR EXISTS (
    SELECT 1 FROM pg_opclass oc JOIN pg_am am ON am.oid = oc.opcmethod
    WHERE am.amname IN ('btree', 'hash') AND oc.opcdefault
      AND (oc.opcintype = t.oid OR oc.opcintype IN (
          SELECT c.casttarget FROM pg_cast c WHERE c.castsource = t.oid AND c.castmethod = 'b'))))
FROM tree JOIN pg_type t ON t.oid = tree.oid
WHERE t.typtype IN ('b', 'e', 'p') AND NOT (t.typcategory = 'A' AND t.typelem <> 0)
GROUP BY tree.top
"""


@dataclass(frozen=True)
class Compared:
    """A column and how two of its values are compared: by the type's ``=``, or by text when it has none."""

    name: str
    as_text: bool = False

    def value(self, alias: str) -> sql.Composable:
        ident = sql.Identifier(alias, self.name)
        return sql.SQL("({})::text").format(ident) if self.as_text else ident


def compared_columns(conn: psycopg.Connection, rel: sql.Composable, columns: Sequence[str]) -> list[Compared]:
    """How each of ``columns`` of ``rel`` (a table or a parenthesized query) is compared.

    By the type's own ``=`` when it is a true equality (_EQUALITY_QUERY), else by text:
    json, xml, point, box, and arrays/composites/domains of them.
    """
    cur = conn.execute(sql.SQL("SELECT {} FROM {} AS r LIMIT 0").format(
        sql.SQL(", ").join(sql.Identifier("r", c) for c in columns), rel))
    oids = [d.type_code for d in cur.description]
    by_value = dict(conn.execute(_EQUALITY_QUERY, (oids,)).fetchall())
    return [Compared(name, not by_value.get(oid, True)) for name, oid in zip(columns, oids, strict=True)]


# -- the shared definitions ---------------------------------------------------------------------------


def key_match(key: Sequence[str], a: str = "p", b: str = "l") -> sql.Composable:
    """``a.k1 = b.k1 AND ...``: primary key columns are NOT NULL, so plain ``=`` (and a hash join)."""
    return sql.SQL(" AND ").join(
        sql.SQL("{} = {}").format(sql.Identifier(a, k), sql.Identifier(b, k)) for k in key)


def differs(c: Compared, a: str = "p", b: str = "l") -> sql.Composable:
    """The column differs between the two rows; NULL vs NULL does not."""
    return sql.SQL("{} IS DISTINCT FROM {}").format(c.value(a), c.value(b))


def _key_list(key: Sequence[str], alias: str) -> sql.Composable:
    return sql.SQL(", ").join(sql.Identifier(alias, k) for k in key)


def only_past_keys(past_rel: sql.Composable, live_rel: sql.Composable, key: Sequence[str]) -> sql.Composable:
    """SELECT the keys of past rows whose key no live row has: deleted since (for apply: to restore)."""
    return sql.SQL("SELECT {} FROM {} AS p WHERE NOT EXISTS (SELECT 1 FROM {} AS l WHERE {})").format(
        _key_list(key, "p"), past_rel, live_rel, key_match(key))


def only_live_keys(past_rel: sql.Composable, live_rel: sql.Composable, key: Sequence[str]) -> sql.Composable:
    """SELECT the keys of live rows whose key no past row has: added since."""
    return sql.SQL("SELECT {} FROM {} AS l WHERE NOT EXISTS (SELECT 1 FROM {} AS p WHERE {})").format(
        _key_list(key, "l"), live_rel, past_rel, key_match(key))


def any_change(compared: Sequence[Compared], key: Sequence[str]) -> sql.Composable:
    """True when any non-key column differs between ``p`` and ``l`` (false for a key-only table)."""
    parts = [differs(c) for c in compared if c.name not in key]
    return sql.SQL(" OR ").join(parts) if parts else sql.SQL("false")


def changed_keys(past_rel: sql.Composable, live_rel: sql.Composable, compared: Sequence[Compared],
                 key: Sequence[str]) -> sql.Composable:
    """SELECT the keys present on both sides whose rows differ: changed since (for apply: to revert)."""
    return sql.SQL("SELECT {} FROM {} AS p JOIN {} AS l ON {} WHERE {}").format(
        _key_list(key, "p"), past_rel, live_rel, key_match(key), any_change(compared, key))


def rows_only_in(first: sql.Composable, second: sql.Composable, compared: Sequence[Compared]) -> sql.Composable:
    """Whole rows of ``first`` not matched one for one in ``second`` (multiset difference, NULLs equal)."""
    return sql.SQL("SELECT {} FROM {} AS p EXCEPT ALL SELECT {} FROM {} AS p").format(
        sql.SQL(", ").join(c.value("p") for c in compared), first,
        sql.SQL(", ").join(c.value("p") for c in compared), second)


# -- one table's diff --------------------------------------------------------------------------------


@dataclass
class TableDiff:
    table: str
    key: tuple[str, ...]  # () = no primary key: compared as multisets of whole rows
    past_rows: int = 0
    live_rows: int = 0
    deleted: int = 0  # only in the past
    added: int = 0  # only live
    changed: int = 0  # same key, different content
    unchanged: int = 0
    changed_columns: dict[str, int] = field(default_factory=dict)  # column -> rows where it changed
    samples: dict[str, list[tuple[str | None, ...]]] = field(default_factory=dict)  # kind -> sample keys

    @property
    def differs(self) -> bool:
        return bool(self.deleted or self.added or self.changed)

    def as_dict(self) -> dict[str, Any]:
        return {
            "table": self.table, "key": list(self.key), "past_rows": self.past_rows, "live_rows": self.live_rows,
            "deleted": self.deleted, "added": self.added, "changed": self.changed, "unchanged": self.unchanged,
            "changed_columns": dict(self.changed_columns),
            "samples": {k: [list(s) for s in v] for k, v in self.samples.items()},
        }


def diff_table(conn: psycopg.Connection, past_rel: sql.Composable, live_rel: sql.Composable,
               columns: Sequence[str], key: Sequence[str], *, table: str | None = None,
               samples: int = SAMPLES) -> TableDiff:
    """Counts, per-column change counts and sample keys of ``past_rel`` against ``live_rel``.

    Both are relations (tables, or parenthesized queries) of this one database with ``columns``.
    """
    key = tuple(key)
    compared = compared_columns(conn, past_rel, columns)
    out = TableDiff(table or past_rel.as_string(conn), key)
    out.past_rows = _count(conn, past_rel)
    out.live_rows = _count(conn, live_rel)
    if not key:
        out.deleted = _count(conn, sql.SQL("({})").format(rows_only_in(past_rel, live_rel, compared)))
        out.added = _count(conn, sql.SQL("({})").format(rows_only_in(live_rel, past_rel, compared)))
        out.unchanged = out.past_rows - out.deleted
        return out
    out.deleted, out.samples["deleted"] = _counted_sample(conn, only_past_keys(past_rel, live_rel, key), key, samples)
    out.added, out.samples["added"] = _counted_sample(conn, only_live_keys(past_rel, live_rel, key), key, samples)
    out.changed, out.samples["changed"] = _counted_sample(
        conn, changed_keys(past_rel, live_rel, compared, key), key, samples)
    out.changed_columns = _per_column(conn, past_rel, live_rel, compared, key)
    out.unchanged = out.past_rows - out.deleted - out.changed
    return out


def _count(conn: psycopg.Connection, rel: sql.Composable) -> int:
    return conn.execute(sql.SQL("SELECT count(*) FROM {} AS r").format(rel)).fetchone()[0]


def _counted_sample(conn: psycopg.Connection, keys: sql.Composable, key: tuple[str, ...],
                    samples: int) -> tuple[int, list[tuple[str | None, ...]]]:
    """How many keys ``keys`` selects, and the first ``samples`` of them (in key order, as text)."""
    cols = [sql.Identifier("k", k) for k in key]
    rows = conn.execute(sql.SQL("SELECT count(*) OVER (), {} FROM ({}) AS k ORDER BY {} LIMIT {}").format(
        sql.SQL(", ").join(sql.SQL("({})::text").format(c) for c in cols), keys,
        sql.SQL(", ").join(cols), sql.Literal(samples))).fetchall()
    if not rows:
        return 0, []
    return rows[0][0], [tuple(r[1:]) for r in rows]


def _per_column(conn: psycopg.Connection, past_rel: sql.Composable, live_rel: sql.Composable,
                compared: Sequence[Compared], key: tuple[str, ...]) -> dict[str, int]:
    """Rows (of those matched by key) in which each non-key column changed; columns that never did left out."""
    others = [c for c in compared if c.name not in key]
    if not others:
        return {}
    counts = conn.execute(sql.SQL("SELECT {} FROM {} AS p JOIN {} AS l ON {}").format(
        sql.SQL(", ").join(sql.SQL("count(*) FILTER (WHERE {})").format(differs(c)) for c in others),
        past_rel, live_rel, key_match(key))).fetchone()
    return {c.name: n for c, n in zip(others, counts, strict=True) if n}
