"""The restore path must work without the orchestrator: core never imports Dagster."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

CORE = Path(__file__).resolve().parents[1] / "dr_pipelines" / "core"


def test_importing_core_loads_no_dagster_module() -> None:
    code = (
        "import sys, pkgutil, importlib, dr_pipelines.core as core\n"
        "for m in pkgutil.walk_packages(core.__path__, 'dr_pipelines.core.'):\n"
        "    importlib.import_module(m.name)\n"
        "bad = sorted(n for n in sys.modules if n == 'dagster' or n.startswith(('dagster.', 'dagster_')))\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "", f"core pulled in: {result.stdout}"


def test_no_core_source_file_imports_dagster() -> None:
    offenders = []
    for path in CORE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0].startswith("dagster")]
    assert offenders == []


def test_core_does_not_import_upper_layers() -> None:
    offenders = []
    for path in CORE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("dr_pipelines."):
                if not node.module.startswith("dr_pipelines.core"):
                    offenders.append(f"{path.name}: {node.module}")
    assert offenders == []
