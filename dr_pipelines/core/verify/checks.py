"""Checks run against a restored database, each with a result that names what failed.

Every check compares the restore with what the manifest recorded at backup time, or with
invariants a healthy database keeps (indexes agree with heaps, foreign keys hold,
sequences are not behind their columns, application probes return no rows).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from dr_pipelines.core.errors import ConfigError, read_config_yaml
from dr_pipelines.core.manifest import Manifest, MatviewEntry
from dr_pipelines.core.pg.checksums import (
    TableChecksum,
    database_checksums,
    pin_render_settings,
    qualified,
    relation_checksum,
)
from dr_pipelines.core.pg.connect import connect
from dr_pipelines.core.pg.content import database_properties, large_objects, materialized_views, sequence_states

MAX_ITEMS = 50  # failing items listed per check (the count is always complete)


@dataclass(frozen=True)
class Probe:
    """Application SQL that must return zero rows, e.g. appointments without a patient."""

    name: str
    sql: str


def load_probes(path: Path | str) -> list[Probe]:
    """Probes from a YAML list of {name, sql}; a malformed file is a ConfigError naming the entry."""
    path = Path(path)
    data = read_config_yaml(path, "probes file", missing_fix="correct DRP_VERIFICATION_PROBES_FILE")
    if not isinstance(data, list):
        raise ConfigError(f"probes file {path} must be a list of {{name, sql}}", fix="see docs/verification.md")
    probes = []
    for i, item in enumerate(data, 1):
        if not isinstance(item, dict) or set(item) != {"name", "sql"} or not all(isinstance(v, str) and v.strip()
                                                                                   for v in item.values()):
            raise ConfigError(f"probe #{i} in {path} must have exactly a non-empty 'name' and 'sql'",
                              fix="e.g. - name: appointments_without_patient\n  sql: SELECT ...")
        probes.append(Probe(item["name"], item["sql"]))
    return probes


@dataclass
class CheckResult:
    name: str
    passed: bool
    detail: str
    failures: list[dict[str, Any]] = field(default_factory=list)
    checked: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def timed(name: str, fn: Callable[[], CheckResult]) -> CheckResult:
    started = time.monotonic()
    try:
        result = fn()
    except psycopg.Error as exc:
        result = CheckResult(name, False, f"{name} could not run: {str(exc).strip().splitlines()[0]}")
    result.seconds = round(time.monotonic() - started, 3)
    return result


def run_checks(dsn: str, manifest: Manifest, probes: list[Probe] = (), *, heapallindexed: bool = True) -> list[CheckResult]:  # type: ignore[assignment]
    """All checks, in order; a failing check never stops the others (the report must be complete)."""
    results = [timed("tables_present", lambda: tables_present(dsn, manifest)), *table_checks(dsn, manifest)]
    with connect(dsn, autocommit=True) as conn:
        results.append(timed("amcheck", lambda: amcheck(conn, heapallindexed=heapallindexed)))
        results.append(timed("foreign_keys", lambda: foreign_keys(conn)))
        results.append(timed("sequences", lambda: sequences(conn)))
        results += content_checks(conn, manifest)
        for probe in probes:
            results.append(timed(f"probe:{probe.name}", lambda p=probe: run_probe(conn, p)))  # type: ignore[misc]
    return results


def table_checks(dsn: str, manifest: Manifest, tables: Collection[str] | None = None) -> list[CheckResult]:
    """Row counts and checksums of the manifest's tables (only those named in `tables`, if given)."""
    if tables is not None:
        manifest = dataclasses.replace(manifest, tables=[t for t in manifest.tables if t.name in tables])
    methods = {t.name: t.method for t in manifest.tables}
    restored = {t.name: t for t in database_checksums(dsn, methods=methods, only=set(methods))}
    return [timed("row_counts", lambda: row_counts(manifest, restored)),
            timed("checksums", lambda: checksums(manifest, restored))]


def content_checks(conn: psycopg.Connection, manifest: Manifest) -> list[CheckResult]:
    """What the dump holds besides table rows, compared with the manifest (conn in autocommit)."""
    return [timed("sequence_values", lambda: sequence_values(conn, manifest)),
            timed("large_objects", lambda: large_objects_check(conn, manifest)),
            timed("materialized_views", lambda: materialized_views_check(conn, manifest)),
            timed("database_properties", lambda: database_properties_check(conn, manifest))]


def tables_present(dsn: str, manifest: Manifest) -> CheckResult:
    with connect(dsn) as conn:
        missing = [
            {"table": t.name} for t in manifest.tables
            if conn.execute("SELECT to_regclass(%s) IS NULL", (_quoted(t.name),)).fetchone()[0]
        ]
    return CheckResult(
        "tables_present", not missing,
        f"{len(missing)} of {len(manifest.tables)} tables missing: {', '.join(m['table'] for m in missing[:5])}"
        if missing else f"all {len(manifest.tables)} tables of the manifest were restored",
        missing[:MAX_ITEMS], len(manifest.tables),
    )


def _differences(manifest: Manifest, restored: dict[str, TableChecksum], field: str) -> list[dict[str, Any]]:
    """Tables whose `field` (rows or checksum) differs between the manifest and the restore."""
    bad = []
    for t in manifest.tables:
        got = restored.get(t.name)
        if got is None or getattr(got, field) != getattr(t, field):
            bad.append({"table": t.name, "expected": getattr(t, field), "restored": getattr(got, field, None)})
    return bad


def row_counts(manifest: Manifest, restored: dict[str, TableChecksum]) -> CheckResult:
    bad = _differences(manifest, restored, "rows")
    return CheckResult(
        "row_counts", not bad,
        "; ".join(f"{b['table']}: {b['restored']} rows restored, manifest says {b['expected']}" for b in bad[:5])
        if bad else f"row counts of {len(manifest.tables)} tables equal the manifest",
        bad[:MAX_ITEMS], len(manifest.tables),
    )


def checksums(manifest: Manifest, restored: dict[str, TableChecksum]) -> CheckResult:
    bad = _differences(manifest, restored, "checksum")
    return CheckResult(
        "checksums", not bad,
        "content differs from the backup in: " + ", ".join(b["table"] for b in bad[:10])
        if bad else f"content checksums of {len(manifest.tables)} tables equal the manifest",
        bad[:MAX_ITEMS], len(manifest.tables),
    )


def amcheck(conn: psycopg.Connection, *, heapallindexed: bool) -> CheckResult:
    """bt_index_check on every valid B-tree index (with heapallindexed: every heap tuple is in the index)."""
    conn.execute("CREATE EXTENSION IF NOT EXISTS amcheck")
    indexes = conn.execute(
        """
        SELECT c.oid, format('%I.%I', n.nspname, c.relname)
        FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace
        JOIN pg_am am ON am.oid = c.relam
        WHERE am.amname = 'btree' AND c.relkind = 'i' AND i.indisvalid AND i.indisready AND c.relpersistence <> 't'
          AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%'
        ORDER BY 2
        """
    ).fetchall()
    bad = []
    for oid, name in indexes:
        try:
            conn.execute("SELECT bt_index_check(%s, %s)", (oid, heapallindexed))
        except psycopg.Error as exc:
            bad.append({"index": name, "error": str(exc).strip().splitlines()[0]})
    return CheckResult(
        "amcheck", not bad,
        "; ".join(f"{b['index']}: {b['error']}" for b in bad[:5]) if bad else f"{len(indexes)} B-tree indexes verified",
        bad[:MAX_ITEMS], len(indexes),
    )


FOREIGN_KEYS_QUERY = """
SELECT c.conname, cn.nspname, cl.relname, pn.nspname, pl.relname,
       array(SELECT a.attname FROM unnest(c.conkey) WITH ORDINALITY k(n, i)
             JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.n ORDER BY k.i),
       array(SELECT a.attname FROM unnest(c.confkey) WITH ORDINALITY k(n, i)
             JOIN pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.n ORDER BY k.i)
FROM pg_constraint c
JOIN pg_class cl ON cl.oid = c.conrelid JOIN pg_namespace cn ON cn.oid = cl.relnamespace
JOIN pg_class pl ON pl.oid = c.confrelid JOIN pg_namespace pn ON pn.oid = pl.relnamespace
WHERE c.contype = 'f' AND NOT cl.relispartition
ORDER BY 2, 3, 1
"""


def foreign_keys(conn: psycopg.Connection) -> CheckResult:
    """Every foreign key holds (MATCH SIMPLE: a row with a NULL key column is not checked)."""
    constraints = conn.execute(FOREIGN_KEYS_QUERY).fetchall()
    bad = []
    for name, cschema, ctable, pschema, ptable, ccols, pcols in constraints:
        query = sql.SQL(
            "SELECT count(*) FROM {child} c WHERE {not_null} AND NOT EXISTS (SELECT 1 FROM {parent} p WHERE {match})"
        ).format(
            child=sql.Identifier(cschema, ctable),
            parent=sql.Identifier(pschema, ptable),
            not_null=sql.SQL(" AND ").join(sql.SQL("c.{} IS NOT NULL").format(sql.Identifier(col)) for col in ccols),
            match=sql.SQL(" AND ").join(
                sql.SQL("p.{} = c.{}").format(sql.Identifier(p), sql.Identifier(c)) for c, p in zip(ccols, pcols, strict=True)
            ),
        )
        orphans = conn.execute(query).fetchone()[0]
        if orphans:
            bad.append({"constraint": name, "table": f"{cschema}.{ctable}", "orphans": orphans})
    return CheckResult(
        "foreign_keys", not bad,
        "; ".join(f"{b['table']}.{b['constraint']}: {b['orphans']} rows without a parent" for b in bad[:5])
        if bad else f"{len(constraints)} foreign keys hold",
        bad[:MAX_ITEMS], len(constraints),
    )


SEQUENCES_QUERY = """
SELECT sn.nspname, s.relname, tn.nspname, t.relname, a.attname
FROM pg_class s
JOIN pg_namespace sn ON sn.oid = s.relnamespace
JOIN pg_depend d ON d.objid = s.oid AND d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
                AND d.deptype IN ('a', 'i')
JOIN pg_class t ON t.oid = d.refobjid JOIN pg_namespace tn ON tn.oid = t.relnamespace
JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = d.refobjsubid
WHERE s.relkind = 'S' AND a.atttypid IN ('smallint'::regtype, 'integer'::regtype, 'bigint'::regtype)
ORDER BY 1, 2
"""


def sequences(conn: psycopg.Connection) -> CheckResult:
    """A sequence behind its column's max would hand out ids that already exist after a restore.

    Integer columns only: a sequence owned by, say, a text invoice number has no comparable max.
    The next value is last_value after setval(seq, n, false) (is_called false), else one past it.
    """
    rows = conn.execute(SEQUENCES_QUERY).fetchall()
    bad = []
    for seq_schema, seq_name, schema, table, column in rows:
        seq = qualified(seq_schema, seq_name)
        last_value, is_called = conn.execute(
            sql.SQL("SELECT last_value, is_called FROM {}").format(sql.Identifier(seq_schema, seq_name))
        ).fetchone()
        top = conn.execute(
            sql.SQL("SELECT max({}) FROM {}").format(sql.Identifier(column), sql.Identifier(schema, table))
        ).fetchone()[0]
        if top is not None and (last_value < top or (last_value == top and not is_called)):
            bad.append({"sequence": seq, "column": f"{schema}.{table}.{column}", "last_value": last_value,
                        "is_called": is_called, "max": top})
    return CheckResult(
        "sequences", not bad,
        "; ".join(f"{b['sequence']} is at {b['last_value']}{'' if b['is_called'] else ' (not yet called)'}, "
                  f"{b['column']} reaches {b['max']}" for b in bad[:5])
        if bad else f"{len(rows)} sequences are at or past their columns' max",
        bad[:MAX_ITEMS], len(rows),
    )


def _not_recorded(name: str, what: str) -> CheckResult:
    """An older manifest lacks the field: nothing to compare with, which is no failure of the backup."""
    return CheckResult(name, True, f"{what} not recorded in this backup's manifest (older drp): not checked")


def sequence_values(conn: psycopg.Connection, manifest: Manifest) -> CheckResult:
    """Each sequence restored at exactly the (last_value, is_called) pg_dump saw.

    Where nextval ran while pg_dump read it, any state between the two readings is right.
    """
    if manifest.sequences is None:
        return _not_recorded("sequence_values", "sequence values")
    restored = sequence_states(conn)
    bad = []
    for seq in manifest.sequences:
        got = restored.get(seq.name)
        low, high = sorted([(seq.last_value, seq.is_called), tuple(seq.moved_to or (seq.last_value, seq.is_called))])
        if got is None or not (low <= got <= high):
            bad.append({"sequence": seq.name, "expected": [seq.last_value, seq.is_called],
                        **({"moved_to": seq.moved_to} if seq.moved_to else {}),
                        "restored": list(got) if got else None})
    return CheckResult(
        "sequence_values", not bad,
        "; ".join(f"{b['sequence']}: restored (last_value, is_called) {b['restored']}, manifest says {b['expected']}"
                  for b in bad[:5])
        if bad else f"{len(manifest.sequences)} sequences restored at their recorded values",
        bad[:MAX_ITEMS], len(manifest.sequences),
    )


def large_objects_check(conn: psycopg.Connection, manifest: Manifest) -> CheckResult:
    if manifest.large_objects is None:
        return _not_recorded("large_objects", "large objects")
    want = {lo.oid: (lo.bytes, lo.sha256) for lo in manifest.large_objects}
    got = {lo.oid: (lo.bytes, lo.sha256) for lo in large_objects(conn)}
    bad = [{"oid": oid, "expected": want.get(oid), "restored": got.get(oid)}
           for oid in sorted(set(want) | set(got)) if want.get(oid) != got.get(oid)]
    return CheckResult(
        "large_objects", not bad,
        f"{len(bad)} large objects differ (oids {', '.join(str(b['oid']) for b in bad[:10])}); "
        f"{len(got)} restored, manifest lists {len(want)}"
        if bad else f"{len(want)} large objects restored with their recorded SHA-256",
        bad[:MAX_ITEMS], len(want),
    )


def materialized_views_check(conn: psycopg.Connection, manifest: Manifest) -> CheckResult:
    if manifest.materialized_views is None:
        return _not_recorded("materialized_views", "materialized views")
    pin_render_settings(conn)
    got = {m.name: m for m in materialized_views(conn, evaluate=False)}
    bad = []
    for want in manifest.materialized_views:
        have = got.get(want.name)
        if have is not None and want.rows is None:  # content not reproducible by a refresh: not recorded
            have = dataclasses.replace(have, rows=None, checksum=None)
        elif have is not None and have.populated and have.method != want.method:
            have = dataclasses.replace(have, **_recount(conn, want))
        if have is None or (have.populated, have.rows, have.checksum) != (want.populated, want.rows, want.checksum):
            bad.append({"view": want.name, "expected": {"populated": want.populated, "rows": want.rows},
                        "restored": {"populated": have.populated, "rows": have.rows} if have else None})
    return CheckResult(
        "materialized_views", not bad,
        "; ".join(f"{b['view']}: restored {b['restored']}, manifest says {b['expected']}" for b in bad[:5])
        if bad else f"{len(manifest.materialized_views)} materialized views restored as recorded "
                    "(populated or not, same rows)",
        bad[:MAX_ITEMS], len(manifest.materialized_views),
    )


def _recount(conn: psycopg.Connection, want: MatviewEntry) -> dict[str, Any]:
    schema, _, name = want.name.partition(".")
    result = relation_checksum(conn, want.name, sql.Identifier(schema, name), want.method)
    return {"rows": result.rows, "checksum": result.checksum, "method": result.method}


def database_properties_check(conn: psycopg.Connection, manifest: Manifest) -> CheckResult:
    """COMMENT ON DATABASE and ALTER DATABASE ... SET, as the source had them."""
    want = manifest.database_properties
    if want is None:
        return _not_recorded("database_properties", "database comment and settings")
    got = database_properties(conn)
    bad = [{"property": prop, "expected": getattr(want, prop), "restored": getattr(got, prop)}
           for prop in ("comment", "settings") if getattr(want, prop) != getattr(got, prop)]
    return CheckResult(
        "database_properties", not bad,
        "; ".join(f"database {b['property']} is {b['restored']!r}, manifest says {b['expected']!r}" for b in bad)
        if bad else f"database comment and {len(want.settings)} settings restored",
        bad, 2,
    )


def run_probe(conn: psycopg.Connection, probe: Probe) -> CheckResult:
    """Read-only, with a statement timeout: a probe must never change or hang the verification."""
    with conn.transaction():
        conn.execute("SET TRANSACTION READ ONLY")
        conn.execute("SET LOCAL statement_timeout = '5min'")
        cur = conn.execute(probe.sql)
        rows = cur.fetchmany(MAX_ITEMS)
        more = len(rows) == MAX_ITEMS and cur.fetchone() is not None
    # Row values may be health data: the report keeps only how many rows came back.
    count = f"{len(rows)}{'+' if more else ''}"
    return CheckResult(
        f"probe:{probe.name}", not rows,
        f"{count} rows returned (expected none)" if rows else "no rows (as expected)",
        [{"rows": count}] if rows else [], 1,
    )


def _quoted(name: str) -> str:
    schema, _, table = name.partition(".")
    return sql.Identifier(schema, table).as_string(None)
