"""Migration lint on PostgreSQL's own parser (pglast): per statement, the lock it takes and the rules it breaks.

Every statement is classified by ``classify.py`` (``StatementInfo``: lock mode per the
explicit-locking table, tables, rewrite, scan, destructive, and the rules in ``RULES`` it
breaks); here those become findings with severities, suppressions and squawk's. Statements
on tables created earlier in the same file are harmless (nobody else can see those tables
yet) and are not flagged. A comment directly above a statement,
``-- drp:allow <rule-id>[, <rule-id>] reason: <why>``, suppresses those rules for it; a
suppression without a reason is itself an error. squawk, when installed, adds a second
opinion (never blocking); our rules are the contract.
"""

from __future__ import annotations

import bisect
import json
import re
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pglast
from pglast.parser import ParseError

from dr_pipelines.core.errors import MigrationError
from dr_pipelines.core.migrate.classify import Walker
from dr_pipelines.core.migrate.rules import ERROR, INFO, RULES, WARNING
from dr_pipelines.core.migrate.syntax import StatementInfo

if TYPE_CHECKING:
    from dr_pipelines.core.migrate.files import Migration

__all__ = ["RULES", "Finding", "LintConfig", "LintReport", "StatementInfo", "lint_migration", "lint_sql"]

# Squawk's rules that mean the same as one of ours: their findings are left to ours.
SQUAWK_SAME_AS = {
    "require-concurrent-index-creation": "create-index-not-concurrently",
    "ban-concurrent-index-creation-in-transaction": "concurrently-in-transaction",
    "adding-field-with-default": "add-column-volatile-default",
    "changing-column-type": "alter-column-type-rewrite",
    "adding-not-nullable-field": "set-not-null-without-check",
    "adding-foreign-key-constraint": "add-constraint-without-not-valid",
    "constraint-missing-not-valid": "add-constraint-without-not-valid",
    "disallowed-unique-constraint": "add-unique-without-index",
    "adding-serial-primary-key-field": "add-unique-without-index",
    "ban-drop-column": "drop-column",
    "renaming-column": "rename-column",
    "ban-drop-table": "drop-table",
    "renaming-table": "rename-table",
    "ban-truncate-cascade": "truncate",
    "require-lock-timeout": "no-lock-timeout",
}
# Squawk rules about the runner's job (it wraps each file in a transaction and sets timeouts).
SQUAWK_EXCLUDED = ("prefer-robust-stmts", "require-statement-timeout", "transaction-nesting")

_ALLOW = re.compile(r"^--\s*drp:allow\s+(?P<rules>[a-z0-9-]+(?:\s*,\s*[a-z0-9-]+)*)\s*(?P<rest>.*)$", re.I)
_PARSER_MAJOR = pglast.parser.get_postgresql_version()[0]
_REASON = re.compile(r"^reason\s*:\s*(?P<reason>\S.*)$", re.I)


@dataclass(frozen=True)
class Finding:
    rule: str
    severity: str  # "error" | "warning" | "info"
    message: str
    fix: str
    line: int
    statement_index: int
    suppressed: str | None = None  # the suppression's reason, if suppressed
    source: str = "drp"  # or "squawk"


@dataclass
class LintReport:
    path: str | None
    statements: list[StatementInfo]
    findings: list[Finding]
    notes: list[str] = field(default_factory=list)  # e.g. "squawk not found; skipped"
    transactional: bool = True  # one transaction: every lock is held until the file commits

    @property
    def blocking(self) -> list[Finding]:
        """Unsuppressed errors: a migration with any of these must not be applied."""
        return [f for f in self.findings if f.severity == ERROR and f.suppressed is None]

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "statements": [asdict(s) for s in self.statements],
                "findings": [asdict(f) for f in self.findings], "notes": list(self.notes),
                "blocking": len(self.blocking), "transactional": self.transactional}


@dataclass(frozen=True)
class LintConfig:
    runner_sets_lock_timeout: bool = False  # the runner applies with lock_timeout: no-lock-timeout is info only
    disabled_rules: tuple[str, ...] = ()
    use_squawk: bool = True  # if the squawk executable is found


def lint_migration(migration: Migration, config: LintConfig | None = None) -> LintReport:
    """Lint one migration file, in or outside a transaction as the file says."""
    return lint_sql(migration.sql, path=str(migration.path), transactional=migration.transactional, config=config)


def lint_sql(sql: str, *, path: str | None = None, transactional: bool = True,
             config: LintConfig | None = None) -> LintReport:
    """Classify and check every statement of sql; MigrationError if PostgreSQL's parser rejects it."""
    config = config or LintConfig()
    starts = _line_starts(sql)
    try:
        raw = pglast.parse_sql(sql)
    except ParseError as exc:
        message, offset = exc.args[0], exc.args[1] if len(exc.args) > 1 else 0
        line = _line_of(starts, max(0, min(offset, len(sql))))
        raise MigrationError(
            f"{path or 'migration SQL'}, line {line}: PostgreSQL's parser says: {message}",
            fix=f"correct the SQL near line {line} (parsed with PostgreSQL {_PARSER_MAJOR}'s "
                "grammar); nothing was run",
        ) from None
    walker = Walker(transactional)
    statements: list[StatementInfo] = []
    findings: list[Finding] = []
    allowances: dict[int, dict[str, str]] = {}
    lines = sql.splitlines()
    for index, raw_stmt in enumerate(raw):
        begin = _skip_space_and_comments(sql, raw_stmt.stmt_location)
        end = raw_stmt.stmt_location + raw_stmt.stmt_len if raw_stmt.stmt_len else len(sql)
        text = sql[begin:end].strip()
        line = _line_of(starts, begin)
        info, issues = walker.visit(raw_stmt.stmt, index, line, text)
        statements.append(info)
        allowed, bad = _suppressions(lines, line, index)
        allowances[index] = allowed
        findings.extend(bad)
        for rule, message, fix in issues:
            severity = RULES[rule][0]
            if message.startswith("~"):  # the rule's weaker case
                severity, message = WARNING, message[1:]
            if rule == "no-lock-timeout" and config.runner_sets_lock_timeout:
                severity = INFO
                fix = ("drp migrate apply sets lock_timeout (migration_lock_timeout) and retries; set it in the file "
                       "only if it is also applied by other tools")
            if rule not in config.disabled_rules:
                findings.append(Finding(rule, severity, message, fix, line, index, allowed.get(rule)))
    report = LintReport(path, statements, findings, transactional=transactional)
    squawk_ran = config.use_squawk and _merge_squawk(report, sql, transactional, lines, config)
    report.findings.extend(_unused_suppressions(report, allowances, squawk_ran, config))
    report.findings.sort(key=lambda f: (f.line, f.statement_index, f.source, f.rule))
    return report


# -- positions and comments -----------------------------------------------------------------


def _line_starts(sql: str) -> list[int]:
    return [0] + [i + 1 for i, ch in enumerate(sql) if ch == "\n"]


def _line_of(starts: list[int], offset: int) -> int:
    return bisect.bisect_right(starts, offset)


def _skip_space_and_comments(sql: str, pos: int) -> int:
    """First character of the statement proper (older parsers point at the comments before it)."""
    while pos < len(sql):
        if sql[pos].isspace():
            pos += 1
        elif sql.startswith("--", pos):
            nl = sql.find("\n", pos)
            pos = len(sql) if nl < 0 else nl + 1
        elif sql.startswith("/*", pos):
            close = sql.find("*/", pos + 2)
            pos = len(sql) if close < 0 else close + 2
        else:
            break
    return pos


def _suppressions(lines: list[str], line: int, index: int) -> tuple[dict[str, str], list[Finding]]:
    """drp:allow comments in the comment block directly above line: {rule: reason}, and findings for bad ones."""
    allowed: dict[str, str] = {}
    bad: list[Finding] = []
    i = line - 2  # 0-based index of the line above the statement
    while i >= 0 and lines[i].strip().startswith("--"):
        match = _ALLOW.match(lines[i].strip())
        if match:
            rules = [r.strip().lower() for r in match["rules"].split(",")]
            reason = _REASON.match(match["rest"].strip())
            if reason:
                allowed.update({r: reason["reason"].strip() for r in rules})
            else:
                bad.append(Finding(
                    "suppression-without-reason", ERROR,
                    f"line {i + 1}: drp:allow {', '.join(rules)} gives no reason, so it suppresses nothing",
                    f"write why it is safe: -- drp:allow {', '.join(rules)} reason: <why>", i + 1, index))
        i -= 1
    return allowed, bad


def _unused_suppressions(report: LintReport, allowances: dict[int, dict[str, str]], squawk_ran: bool,
                         config: LintConfig) -> list[Finding]:
    """A drp:allow that matches nothing is a typo or outlived its statement; both hide the next real finding."""
    out = []
    for info in report.statements:
        fired = {f.rule for f in report.findings if f.statement_index == info.index} | set(config.disabled_rules)
        for rule in allowances.get(info.index, {}):
            if rule in fired or (rule not in RULES and not squawk_ran):  # maybe a squawk rule: cannot tell
                continue
            out.append(Finding("suppression-unused", WARNING,
                               f"drp:allow {rule} above line {info.line} matches no finding of that statement",
                               "remove it, or correct the rule id (see docs/migrations.md)", info.line, info.index))
    return out


# -- squawk, a second opinion ---------------------------------------------------------------


def _merge_squawk(report: LintReport, sql: str, transactional: bool, lines: list[str], config: LintConfig) -> bool:
    """Add squawk's findings that none of ours covers, as warnings (info for style): never blocking.

    False if squawk is missing or failed (a note says so)."""
    exe = shutil.which("squawk") or shutil.which("squawk", path=str(Path(sys.executable).parent))  # venv's bin
    if exe is None:
        report.notes.append("squawk not found on PATH: its second opinion was skipped")
        return False
    cmd = [exe, "--reporter", "json", "--stdin-filepath", report.path or "migration.sql",
           *(f"--exclude={r}" for r in SQUAWK_EXCLUDED)]
    if transactional:
        cmd.append("--assume-in-transaction")
    try:
        out = subprocess.run(cmd, input=sql, capture_output=True, text=True, timeout=60)
        items = json.loads(out.stdout or "[]")
    except (OSError, subprocess.TimeoutExpired, json.JSONDecodeError) as exc:
        report.notes.append(f"squawk failed ({type(exc).__name__}): its second opinion was skipped")
        return False
    starts = [s.line for s in report.statements]
    for item in items:
        rule = str(item.get("rule_name", "squawk"))
        if rule in SQUAWK_SAME_AS or rule in config.disabled_rules:
            continue  # ours decides; where ours found it safe, that is deliberate
        line = int(item.get("line", 0)) + 1
        index = max(0, bisect.bisect_right(starts, line) - 1)
        stmt_line = starts[index] if starts else line
        allowed, _ = _suppressions(lines, stmt_line, index)
        severity = INFO if rule.startswith("prefer-") or rule.startswith("ban-char") else WARNING
        report.findings.append(Finding(rule, severity, str(item.get("message", "")).strip(),
                                       str(item.get("help") or "see squawk's documentation for this rule"),
                                       stmt_line, index, allowed.get(rule), source="squawk"))
    return True
