"""One manifest format for backups, exports and archives: written last, it is the commit.

An artifact set exists only once its manifest is stored. The manifest lists every object
with its size and SHA-256 and what is needed to verify the content (per-table row counts
and checksums). It never holds key material: only public recipients.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from dr_pipelines.core.errors import DrpError
from dr_pipelines.core.storage import Storage

FORMAT = "drp-manifest"
VERSION = 1
from dr_pipelines.core.layout import MANIFEST_NAME  # noqa: F401 - the name lives in the layout


class ManifestError(DrpError):
    """A manifest is missing, malformed, or of a version this drp cannot read."""


@dataclass(frozen=True)
class ObjectEntry:
    key: str  # relative to the artifact's prefix
    role: str  # "database", "globals", "table", ...
    bytes: int
    sha256: str
    plain_bytes: int | None = None  # before compression/encryption
    format: str | None = None  # e.g. "pg_dump-custom", "sql", "parquet"


@dataclass(frozen=True)
class TableEntry:
    name: str
    rows: int
    checksum: str
    method: str = "record"  # see core/pg/checksums.py


@dataclass(frozen=True)
class SequenceEntry:
    """A sequence's state as pg_dump dumped it: `last_value` and `is_called` (setval's third argument).

    Sequences are not transactional, so they are read before and after pg_dump; `moved_to`
    holds the later (last_value, is_called) when nextval ran meanwhile, else None (exact).
    """

    name: str
    last_value: int
    is_called: bool
    moved_to: list[Any] | None = None


@dataclass(frozen=True)
class LargeObjectEntry:
    oid: int
    bytes: int
    sha256: str


@dataclass(frozen=True)
class MatviewEntry:
    """A materialized view; `rows`/`checksum` are what its query yields in the snapshot (None if unpopulated).

    pg_restore does not copy a materialized view's rows, it refreshes it from the restored
    tables: that, not the possibly stale stored rows, is what a restore must reproduce.
    """

    name: str
    populated: bool
    rows: int | None = None
    checksum: str | None = None
    method: str = "record"


@dataclass(frozen=True)
class DatabaseProperties:
    """COMMENT ON DATABASE and ALTER DATABASE ... SET (as pg_db_role_setting stores them, "name=value")."""

    comment: str | None
    settings: list[str]


@dataclass
class Manifest:
    kind: str  # "logical-backup", "export", "archive"
    id: str
    started_at: datetime
    finished_at: datetime
    objects: list[ObjectEntry]
    tables: list[TableEntry] = field(default_factory=list)
    source: dict[str, Any] = field(default_factory=dict)
    tools: dict[str, str] = field(default_factory=dict)
    compression: dict[str, Any] | None = None
    encryption: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # None: not recorded (manifests written before these fields existed, or checksums off).
    sequences: list[SequenceEntry] | None = None
    large_objects: list[LargeObjectEntry] | None = None
    materialized_views: list[MatviewEntry] | None = None
    database_properties: DatabaseProperties | None = None

    @property
    def stored_bytes(self) -> int:
        return sum(o.bytes for o in self.objects)

    @property
    def total_rows(self) -> int:
        return sum(t.rows for t in self.tables)

    @property
    def duration_s(self) -> float:
        return (self.finished_at - self.started_at).total_seconds()

    def object(self, role: str) -> ObjectEntry:
        for o in self.objects:
            if o.role == role:
                return o
        raise ManifestError(f"manifest of {self.id} lists no {role!r} object", fix="the backup is incomplete; use another")

    def to_json(self) -> str:
        body = asdict(self)
        body["started_at"] = self.started_at.isoformat()
        body["finished_at"] = self.finished_at.isoformat()
        return json.dumps({"format": FORMAT, "version": VERSION, **body}, indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes, *, where: str) -> Manifest:
        try:
            data = json.loads(text)
            if data.get("format") != FORMAT:
                raise ValueError(f"format is {data.get('format')!r}, expected {FORMAT!r}")
            if data.get("version") != VERSION:
                raise ManifestError(
                    f"manifest {where} has version {data.get('version')}, this drp reads version {VERSION}",
                    fix="use the drp release that wrote it (or newer)",
                )
            return cls(
                kind=data["kind"],
                id=data["id"],
                started_at=datetime.fromisoformat(data["started_at"]),
                finished_at=datetime.fromisoformat(data["finished_at"]),
                objects=[ObjectEntry(**o) for o in data["objects"]],
                tables=[TableEntry(**t) for t in data.get("tables", [])],
                source=data.get("source", {}),
                tools=data.get("tools", {}),
                compression=data.get("compression"),
                encryption=data.get("encryption"),
                extra=data.get("extra", {}),
                sequences=_entries(SequenceEntry, data.get("sequences")),
                large_objects=_entries(LargeObjectEntry, data.get("large_objects")),
                materialized_views=_entries(MatviewEntry, data.get("materialized_views")),
                database_properties=(DatabaseProperties(**data["database_properties"])
                                     if data.get("database_properties") is not None else None),
            )
        except ManifestError:
            raise
        except (ValueError, KeyError, TypeError) as exc:
            raise ManifestError(f"manifest {where} is malformed ({exc})", fix="the artifact cannot be trusted; use another") from None


def _entries(cls: type, items: list[dict[str, Any]] | None) -> list[Any] | None:
    return None if items is None else [cls(**item) for item in items]


def write_manifest(storage: Storage, prefix: str, manifest: Manifest) -> str:
    key = f"{prefix}/{MANIFEST_NAME}"
    storage.put_bytes(key, manifest.to_json().encode())
    return key


def read_manifest(storage: Storage, prefix: str) -> Manifest:
    key = f"{prefix}/{MANIFEST_NAME}"
    return Manifest.from_json(storage.get_bytes(key), where=f"{storage.url}/{key}")
