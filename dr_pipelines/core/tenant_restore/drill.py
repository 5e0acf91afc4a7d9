"""The monthly tenant-restore drill: one clinic damaged on a scratch copy, restored with ``--apply``, proven exact.

Nothing of production is written (nor read, beyond its database name in the settings; production
storage is only read): everything happens in the drill's own throwaway cluster and scratch storage.

1. The scratch copy: the newest restorable backup (base, else logical) restored into a leased
   throwaway cluster (source.py ``past_database --backup``), so the drill also proves that backup.
2. Content checksums of every clinic's rows in every scope table of the scratch copy (the originals),
   and a logical backup of it into scratch storage (a private leased folder): the point before the damage.
3. One clinic's rows damaged: a tenth of its rows deleted from the two deepest tables nothing
   references, a tenth of another table's rows corrupted (one column changed).
4. ``tenant_restore`` (run.py: `drp tenant restore --backup ID --apply --policy both`) with the scratch
   copy as its live database and the scratch storage as its storage (the undo export stays there too).
5. The checksums again: every clinic's, every table's must equal the originals (the damaged clinic's
   back, the others never touched). Both clusters and the scratch storage are removed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from pydantic import SecretStr

from dr_pipelines.core import context
from dr_pipelines.core.backup.catalog import list_backups, newest_restorable
from dr_pipelines.core.backup.logical import run_logical_backup
from dr_pipelines.core.errors import ConfigError
from dr_pipelines.core.export.tables import tenant_checksum
from dr_pipelines.core.export.tenants import check_tenants
from dr_pipelines.core.pg.connect import connect
from dr_pipelines.core.pg.leases import staging_dir
from dr_pipelines.core.settings import Settings
from dr_pipelines.core.storage.local import LocalStorage
from dr_pipelines.core.tenancy import Scope, TableScope, discover_scope, tenant_keys, tenant_select
from dr_pipelines.core.tenant_restore.run import Request, tenant_restore
from dr_pipelines.core.tenant_restore.source import past_database
from dr_pipelines.core.tenant_restore.transfer import primary_key

Log = Callable[[str], None]
Checksums = dict[str, dict[str, tuple[int, str]]]  # clinic -> table -> (rows, checksum)
FRACTION = 0.1  # of the clinic's rows in a table deleted or corrupted
REQUESTER = "tenant-restore drill"
PURPOSE = "tenant-drill"  # the scratch storage's lease: staging/tenant-drill-<hex>

# Of these tables (quoted names), those no foreign key references: deleting from them cascades nowhere.
UNREFERENCED = """
SELECT n.name FROM unnest(%s::text[]) AS n(name)
WHERE NOT EXISTS (SELECT 1 FROM pg_constraint f WHERE f.contype = 'f' AND f.confrelid = n.name::regclass)
"""

# Columns a corruption may change: not in the primary key, any foreign key or unique index; not
# generated, not identity, not null; of a type whose value an expression can shift.
CORRUPTIBLE = """
SELECT a.attname, t.typcategory FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped
  AND a.attgenerated = '' AND a.attidentity = '' AND t.typcategory IN ('S', 'N', 'D')
  AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conrelid = a.attrelid AND k.contype IN ('p', 'f', 'u')
                  AND a.attnum = ANY (k.conkey))
  AND NOT EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = a.attrelid AND i.indisunique
                  AND a.attnum = ANY (i.indkey))
ORDER BY t.typcategory DESC, a.attnum
"""
SHIFT = {"S": "{} || ' (drill)'", "N": "{} + 1", "D": "{} + interval '1 day'"}


class TenantDrillError(ConfigError):
    """The drill could not be set up (no backup to copy, no clinic, nothing it could damage)."""


@dataclass
class TenantDrillReport:
    """What the drill did and whether every clinic's rows came back exactly."""

    month: str
    backup_id: str
    clinic: str
    clinics: int
    started_at: datetime
    damage: dict[str, dict[str, int]] = field(default_factory=dict)  # table -> {"deleted": n} / {"corrupted": n}
    applied: dict[str, Any] = field(default_factory=dict)  # run.py's apply result
    mismatches: list[str] = field(default_factory=list)  # "clinic 2 public.visits: rows 10 != 12 ..."
    tables_checked: int = 0
    seconds: float = 0.0
    reports: list[Path] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.mismatches and bool(self.damage)

    def to_markdown(self) -> str:
        lines = [f"# Tenant-restore drill {self.month}: {'PASSED' if self.passed else 'FAILED'}", "",
                 f"- scratch copy: backup {self.backup_id}, {self.clinics} clinics; clinic {self.clinic} damaged",
                 f"- checked: {self.tables_checked} (clinic, table) checksums in {self.seconds:.1f} s", "",
                 "| table | damage |", "|---|---|"]
        lines += [f"| {t} | {', '.join(f'{k} {v}' for k, v in d.items())} |" for t, d in self.damage.items()]
        if self.mismatches:
            lines += ["", "## Not equal to the originals", "", *[f"- {m}" for m in self.mismatches]]
        return "\n".join(lines) + "\n"


def tenant_restore_drill(settings: Settings, identities: Sequence[object], *, month: str | None = None,
                         clinic: str | None = None, log: Log | None = None) -> TenantDrillReport:
    """Run the drill (see the module docstring) on the newest restorable backup; the report, passed or not."""
    say = log or (lambda _line: None)
    started = datetime.now(UTC)
    storage = context.storage(settings)
    entries = list_backups(storage)
    entry = newest_restorable(entries, "base") or newest_restorable(entries, "logical")
    if entry is None:
        raise TenantDrillError("no restorable backup in storage to make the scratch copy from",
                               fix="take a backup first (`drp backup run`), then run the drill again")
    database = conninfo_to_dict(settings.dsn).get("dbname") or "postgres"
    root, key = settings.export_tenant_root, settings.export_tenant_key
    say(f"scratch copy: backup {entry.id} restored into a throwaway cluster")
    with past_database(storage, identities, Path(settings.work_dir), database=database, backup_id=entry.id,
                       log=say) as scratch, staging_dir(settings.work_dir, PURPOSE) as scratch_storage:
        with connect(scratch.dsn) as conn:
            scope = discover_scope(conn, root=root, key_column=key, exclude=tuple(settings.export_exclude_tables))
            clinics = tenant_keys(conn, root, key)
        if not clinics:
            raise TenantDrillError(f"the scratch copy of backup {entry.id} has no clinics in {root}",
                                   fix="run the drill on a backup of a database with clinics")
        victim = clinic or clinics[0]
        report = TenantDrillReport(month or started.strftime("%Y-%m"), entry.id, victim, len(clinics), started)
        originals = clinic_checksums(scratch.dsn, scope, clinics)
        before = run_logical_backup(scratch.dsn, LocalStorage(scratch_storage), settings.encryption_recipients)
        report.damage = damage_clinic(scratch.dsn, scope, victim)
        say(f"clinic {victim} damaged: {report.damage}")
        if clinic_checksums(scratch.dsn, scope, [victim]) == {victim: originals[victim]}:
            raise TenantDrillError(f"the drill could not change any row of clinic {victim}",
                                   fix="choose a clinic with rows (the drill's `clinic` run config)")
        scratch_settings = settings.model_copy(update={"source_dsn": SecretStr(scratch.dsn),
                                                       "storage_url": str(scratch_storage)})
        outcome = tenant_restore(scratch_settings, Request(
            clinic=victim, backup_id=before.id, apply=True, policy="both", requester=REQUESTER,
            reason=f"monthly tenant-restore drill {report.month} on a scratch copy",
            undo_allow_plaintext=True), identities=identities, log=say)  # the undo stays in the drill's scratch
        report.applied, report.reports = outcome.result, outcome.reports
        restored = clinic_checksums(scratch.dsn, scope, clinics)
    report.mismatches = compare_checksums(originals, restored)
    report.tables_checked = sum(len(tables) for tables in originals.values())
    report.seconds = (datetime.now(UTC) - started).total_seconds()
    return report


def clinic_checksums(dsn: str, scope: Scope, clinics: Sequence[str]) -> Checksums:
    """Rows and content checksum of each clinic's rows in every scope table, one snapshot per clinic."""
    out: Checksums = {}
    with connect(dsn) as conn:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        for clinic in clinics:
            with conn.transaction():
                check_tenants(conn, scope, [clinic])
                out[clinic] = {t.name: tenant_checksum(conn, scope, t)[:2] for t in scope.tables}
    return out


def compare_checksums(before: Checksums, after: Checksums) -> list[str]:
    """One line per (clinic, table) whose rows or checksum differ."""
    out = []
    for clinic, tables in before.items():
        for table, (rows, checksum) in tables.items():
            now = after.get(clinic, {}).get(table)
            if now != (rows, checksum):
                out.append(f"clinic {clinic} {table}: originally {rows} rows ({checksum}), now "
                           + (f"{now[0]} rows ({now[1]})" if now else "missing"))
    return out


def damage_clinic(dsn: str, scope: Scope, clinic: str, *, fraction: float = FRACTION) -> dict[str, dict[str, int]]:
    """Delete a ``fraction`` of ``clinic``'s rows in the two deepest unreferenced tables, corrupt one column of
    a ``fraction`` of another table's; one transaction. Returns table -> what was done."""
    done: dict[str, dict[str, int]] = {}
    with connect(dsn) as conn, conn.transaction():
        check_tenants(conn, scope, [clinic])
        keyed = {_quoted(conn, t): t for t in scope.tables if not t.is_root and primary_key(conn, t.schema, t.table)}
        leaves = {keyed[r[0]].name for r in conn.execute(UNREFERENCED, (list(keyed),))}
        for t in [t for t in reversed(keyed.values()) if t.name in leaves][:2]:
            deleted = _delete_some(conn, scope, t, fraction)
            if deleted:
                done[t.name] = {"deleted": deleted}
        for t in reversed(keyed.values()):
            if t.name in done:
                continue
            corrupted = _corrupt_some(conn, scope, t, fraction)
            if corrupted:
                done[t.name] = {"corrupted": corrupted}
                break
    return done


def _quoted(conn: psycopg.Connection, t: TableScope) -> str:
    return sql.Identifier(t.schema, t.table).as_string(conn)


def _table(t: TableScope) -> sql.Composable:
    """The table itself: ONLY for an ordinary table (an inheritance parent's children are other tables)."""
    return sql.SQL("{}{}").format(sql.SQL("ONLY " if t.kind == "table" else ""), sql.Identifier(t.schema, t.table))


def _some_keys(conn: psycopg.Connection, scope: Scope, t: TableScope, fraction: float,
               where: sql.Composable = sql.SQL("true")) -> tuple[sql.Composable, sql.Composable]:
    """(the key columns of ``d``, a query of the first ``fraction`` of the clinic's keys in key order)."""
    key = primary_key(conn, t.schema, t.table)
    rows = conn.execute(sql.SQL("SELECT count(*) FROM ({}) AS s").format(tenant_select(t, scope))).fetchone()[0]
    picked = tenant_select(t, scope, sql.SQL(", ").join(sql.Identifier("t", k) for k in key))
    query = sql.SQL("SELECT * FROM ({} AND {}) AS s ORDER BY {} LIMIT {}").format(
        picked, where, sql.SQL(", ").join(sql.Literal(i + 1) for i in range(len(key))),
        sql.Literal(max(1, int(rows * fraction)) if rows else 0))
    return sql.SQL("({})").format(sql.SQL(", ").join(sql.Identifier("d", k) for k in key)), query


def _delete_some(conn: psycopg.Connection, scope: Scope, t: TableScope, fraction: float) -> int:
    columns, keys = _some_keys(conn, scope, t, fraction)
    return conn.execute(sql.SQL("DELETE FROM {} AS d WHERE {} IN ({})").format(_table(t), columns, keys)).rowcount


def _corrupt_some(conn: psycopg.Connection, scope: Scope, t: TableScope, fraction: float) -> int:
    """Shift the first column that takes it (a CHECK may refuse one: then the next); rows changed."""
    for name, category in conn.execute(CORRUPTIBLE, (_quoted(conn, t),)).fetchall():
        column = sql.Identifier(name)
        columns, keys = _some_keys(conn, scope, t, fraction, sql.SQL("{} IS NOT NULL").format(sql.Identifier("t", name)))
        try:
            with conn.transaction():
                changed = conn.execute(sql.SQL("UPDATE {} AS d SET {} = {} WHERE {} IN ({})").format(
                    _table(t), column, sql.SQL(SHIFT[category]).format(sql.Identifier("d", name)),
                    columns, keys)).rowcount
        except psycopg.errors.IntegrityError:
            continue
        if changed:
            return changed
    return 0
