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


# Core's layers, lowest first: a module may import its own layer and those below, never above.
# Keys are core-relative module or package names; the longest matching key wins, so a pure
# module can sit below its package (backup.gfs is a policy function, verify.checks compares a
# database with a manifest: both are used by lower use cases and import nothing above them).
LAYER_NAMES = ("errors", "primitives", "formats", "settings", "context", "use cases", "proofs", "reports")
LAYERS = {
    "": 0, "errors": 0, "checkpoints": 0, "progress": 0, "processes": 0,
    "storage": 1, "pg": 1, "crypto": 1, "notify": 1, "graphql": 1,
    "tarformat": 1, "age_chunks": 1,  # the tar format's fields; age read chunk by chunk
    "frames": 2,  # framed base backups: the frame cutter and the framed read
    "pg.snapshots": 1, "pg.drp_schema": 1,  # h-pgcore's exported snapshots and drp.* schema
    "manifest": 2, "stream": 2, "layout": 2, "verified_read": 2, "tenancy": 2, "parquet": 2,
    "pg.content": 2, "backup.gfs": 2, "verify.checks": 2,
    "settings": 3,
    "context": 4,
    "backup": 5, "restore": 5, "export": 5, "retention": 5, "wal": 5,
    "restore.targets": 5, "restore.recovery": 5, "restore.pitr": 5, "wal.restore_points": 5,  # PITR (issue 13)
    "backup.lowlevel": 5,  # base backups through pg_backup_start/stop (issue 13)
    "verify": 6, "migrate": 6,
    "tenant_restore": 6,  # restore one clinic (issue 14): reads restore, export, tenancy, pg
    "status": 7, "health": 7,
}


def _layer_of(name: str) -> tuple[str, int] | None:
    parts = name.split(".") if name else [""]
    for n in range(len(parts), 0, -1):
        key = ".".join(parts[:n])
        if key in LAYERS:
            return key, LAYERS[key]
    return ("", 0) if name == "" else None


def _imported(tree: ast.AST, package: str) -> list[str]:
    """Core-relative names every import statement reaches (function-level imports count too)."""
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names += [f"{node.module}.{a.name}" for a in node.names]
    return [n[len(package) + 1:] for n in names if n.startswith(package + ".")]


def layer_violations(core: Path, package: str = "dr_pipelines.core") -> list[str]:
    """Each import of a higher layer (or of/from an unmapped module), naming file, import and both layers."""
    found = []
    for path in sorted(core.rglob("*.py")):
        rel = path.relative_to(core)
        me = ".".join(p for p in rel.with_suffix("").parts if p != "__init__")
        mine = _layer_of(me)
        if mine is None:
            found.append(f"{rel}: module {me!r} has no layer in LAYERS")
            continue
        for target in _imported(ast.parse(path.read_text()), package):
            theirs = _layer_of(target)
            if theirs is None:
                found.append(f"{rel}: imports {target}, which has no layer in LAYERS")
            elif theirs[1] > mine[1]:
                found.append(f"{rel}: imports {package}.{target} — {mine[0] or 'core'} is layer {mine[1]} "
                             f"({LAYER_NAMES[mine[1]]}), {theirs[0]} is layer {theirs[1]} ({LAYER_NAMES[theirs[1]]})")
    return found


def test_core_imports_only_its_own_layer_and_below() -> None:
    assert layer_violations(CORE) == []


def test_layer_check_fails_on_a_module_importing_a_higher_layer(tmp_path: Path) -> None:
    core = tmp_path / "core"
    (core / "storage").mkdir(parents=True)
    (core / "errors.py").write_text("X = 1\n")
    (core / "settings.py").write_text("from dr_pipelines.core.errors import X\n")  # downwards: fine
    (core / "storage" / "base.py").write_text(
        "def open_it():\n    from dr_pipelines.core.backup.catalog import list_backups\n    return list_backups\n")
    (core / "pg.py").write_text("from dr_pipelines.core import settings\n")
    (core / "mystery.py").write_text("")
    assert layer_violations(core) == [
        "mystery.py: module 'mystery' has no layer in LAYERS",
        "pg.py: imports dr_pipelines.core.settings — pg is layer 1 (primitives), settings is layer 3 (settings)",
        "storage/base.py: imports dr_pipelines.core.backup.catalog.list_backups — storage is layer 1 (primitives), "
        "backup is layer 5 (use cases)",
    ]


def _import_graph(core: Path, package: str = "dr_pipelines.core") -> dict[str, set[str]]:
    modules = {".".join(p for p in path.relative_to(core).with_suffix("").parts if p != "__init__"): path
               for path in core.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for me, path in modules.items():
        for target in _imported(ast.parse(path.read_text()), package):
            parts = target.split(".")
            hit = next((".".join(parts[:n]) for n in range(len(parts), 0, -1) if ".".join(parts[:n]) in modules), None)
            if hit and hit != me:
                graph[me].add(hit)
    return graph


def test_core_modules_import_each_other_without_cycles() -> None:
    graph = _import_graph(CORE)
    state: dict[str, int] = {}  # 1 visiting, 2 done
    cycles = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*trail[trail.index(nxt):], nxt]))
            elif nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert cycles == []


def test_retention_reaches_tenant_scope_and_parquet_without_export() -> None:
    graph = _import_graph(CORE)
    assert {(m, t) for m, ts in graph.items() for t in ts
            if m.startswith("retention") and t.startswith("export")} == set()


def test_every_defs_area_has_the_same_file_split() -> None:
    """defs/<area>/definitions.py with build(settings), plus only the kinds of file the split allows."""
    defs = CORE.parent / "defs"
    allowed = {"__init__.py", "definitions.py", "assets.py", "checks.py", "sensors.py", "schedules.py", "jobs.py",
               "history.py"}
    problems = []
    for area in sorted(p for p in defs.iterdir() if p.is_dir() and p.name not in ("lib", "__pycache__")):
        files = {f.name for f in area.glob("*.py")}
        problems += [f"{area.name}/{f}" for f in sorted(files - allowed)]
        if "definitions.py" not in files or "def build(settings: Settings) -> dg.Definitions:" not in (
                area / "definitions.py").read_text():
            problems.append(f"{area.name}: no definitions.py with build(settings)")
    assert problems == []


def test_production_code_has_no_test_hook() -> None:
    """The crash tests' pause lives in dr_pipelines_tests (support/paused_drp.py), never behind an env var here."""
    offenders = [str(p.relative_to(CORE.parent)) for p in CORE.parent.rglob("*.py")
                 if "DRP_TEST_" in p.read_text() or "time.sleep(3600)" in p.read_text()]
    assert offenders == []
