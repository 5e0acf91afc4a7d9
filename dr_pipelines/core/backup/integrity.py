"""Is a stored backup whole? The manifest's own sanity and every listed object's presence and size.

Cheap checks (no download, no restore) that the Dagster asset checks run after each backup;
the proof that a backup restores is core/verify.
"""

from __future__ import annotations

from dr_pipelines.core.backup.catalog import BASE_KIND
from dr_pipelines.core.errors import DrpError
from dr_pipelines.core.manifest import Manifest
from dr_pipelines.core.storage import Storage


def manifest_problems(manifest: Manifest) -> list[str]:
    """What makes a parsed manifest unusable for a restore (empty list: none)."""
    problems = []
    if not manifest.objects:
        problems.append("lists no objects")
    role = "base" if manifest.kind == BASE_KIND else "database"  # base backups hold one tar, logical ones a dump
    if not any(o.role == role for o in manifest.objects):
        problems.append(f"has no {role} object")
    if manifest.extra.get("checksums") and not manifest.tables:
        problems.append("records no tables: the source database looks empty (wrong DSN?)")
    return problems


def object_problems(storage: Storage, prefix: str, manifest: Manifest) -> list[str]:
    """Objects of the manifest missing from storage under ``prefix`` or with another size than listed."""
    problems = []
    for obj in manifest.objects:
        try:
            size = storage.stat(f"{prefix}/{obj.key}").size
        except DrpError:
            problems.append(f"{obj.key} is missing")
            continue
        if size != obj.bytes:
            problems.append(f"{obj.key} has {size} bytes, manifest says {obj.bytes}")
    return problems
