"""The repository layout has one home (core/layout.py) and one id generator; no other module spells a name.

A second spelling of ``backups/`` or ``manifest.json`` is how two features drift apart on
where an artifact lives; this test reads every module's string constants (docstrings
aside) and fails on a layout name outside core/layout.py.
"""

from __future__ import annotations

import ast
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

import dr_pipelines
from dr_pipelines.core import layout

PACKAGE = Path(dr_pipelines.__file__).parent
# Whole string constants (or their leading segment) that name a place or an object in storage.
NAMES = {layout.BACKUPS, layout.ATTEMPTS, layout.EXPORTS, layout.ANALYTICS, layout.ARCHIVES, layout.DRILLS}
OBJECTS = {layout.MANIFEST_NAME, layout.SOURCE_NAME, layout.PIN_NAME, layout.VERIFICATION_NAME, layout.DATA_NAME,
           layout.KEPT_NAME, layout.SEALED, layout.DATABASE_OBJECT, layout.GLOBALS_OBJECT, layout.DRILL_REPORT_NAME,
           layout.DRILL_MARKDOWN_NAME, layout.WAL_SYSTEM_NAME}
# Where the same words are not storage names: Dagster group names and metadata labels.
ALLOWED_CALLS = {"group_name", "unit"}


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


def _spellings(path: Path, shown: str) -> list[str]:
    tree = ast.parse(path.read_text())
    skip = _docstrings(tree)
    for node in ast.walk(tree):  # keyword values like group_name="backups" are Dagster's vocabulary
        if isinstance(node, ast.keyword) and node.arg in ALLOWED_CALLS:
            skip.add(id(node.value))
        if isinstance(node, ast.Dict):  # metadata labels ({"archives": n}) are not keys in storage
            skip.update(id(k) for k in node.keys if k is not None)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            text = node.value
            if text in NAMES or text.split("/", 1)[0] in NAMES and "/" in text or text in OBJECTS:
                found.append(f"{shown}:{node.lineno}: {text!r}")
    return found


def test_layout_names_are_spelled_only_in_core_layout() -> None:
    found = [hit for path in sorted(PACKAGE.rglob("*.py")) if path != Path(layout.__file__)
             for hit in _spellings(path, str(path.relative_to(PACKAGE.parent)))]
    assert found == [], "layout names belong in dr_pipelines/core/layout.py:\n" + "\n".join(found)


def test_the_scan_catches_a_second_spelling(tmp_path: Path) -> None:
    """The guard is not vacuous: a module spelling f"backups/{id}" or "manifest.json" itself is named."""
    probe = tmp_path / "violation.py"
    probe.write_text('KEY = f"backups/{1}"\nNAME = "manifest.json"\nGROUP = dict(group_name="backups")\n')
    assert sorted(_spellings(probe, "probe")) == ["probe:1: 'backups/'", "probe:2: 'manifest.json'"]


@pytest.mark.parametrize(("make", "pattern"), [
    (layout.new_backup_id, r"\d{8}T\d{6}\.\d{3}Z-[0-9a-f]{4}"),
    (layout.new_export_id, r"\d{8}T\d{6}\.\d{3}Z-[0-9a-f]{6}"),
])
def test_ids_keep_their_shape_and_sort_by_time(make, pattern: str) -> None:  # type: ignore[no-untyped-def]
    early, late = datetime(2026, 11, 27, 18, 1, 2, 123456, tzinfo=UTC), datetime(2026, 11, 27, 18, 1, 2, 124000, tzinfo=UTC)
    a, b = make(early), make(late)
    assert re.fullmatch(pattern, a) and a.startswith("20261127T180102.123Z-")
    assert a < b and make(early) != a  # unique at the same instant: the random tail


def test_segment_ids_carry_microseconds() -> None:
    assert re.fullmatch(r"\d{8}T\d{6}\.\d{6}Z-[0-9a-f]{6}", layout.new_segment_id())
