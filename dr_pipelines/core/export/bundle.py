"""The optional zip bundle of an export: one download for a clinic, verified while it is built.

Every file is read back from storage and its SHA-256 compared with what was written, so
the zip can only hold exactly the bytes the manifest describes. The zip carries its own
copy of the manifest (listing the table files); the stored manifest then also lists the
zip. Built in a temporary file, so memory stays flat whatever the export's size.
"""

from __future__ import annotations

import shutil
import tempfile
import zipfile
from pathlib import Path

from dr_pipelines.core.errors import ExportError
from dr_pipelines.core.layout import MANIFEST_NAME
from dr_pipelines.core.manifest import Manifest, ObjectEntry
from dr_pipelines.core.storage import Storage
from dr_pipelines.core.stream import file_chunks, remove_quietly
from dr_pipelines.core.verified_read import read_verified

# Parquet is already compressed; text formats shrink a lot.
_COMPRESS = {"csv": zipfile.ZIP_DEFLATED, "jsonl": zipfile.ZIP_DEFLATED}


def zip_bundle(storage: Storage, prefix: str, manifest: Manifest, *, work_dir: Path | None = None) -> ObjectEntry:
    """Write ``<prefix>/<manifest.id>.zip`` with every object and the manifest; return its entry."""
    name = f"{manifest.id}.zip"
    with tempfile.TemporaryDirectory(prefix="drp-bundle-", dir=work_dir) as tmp:
        path = Path(tmp) / name
        try:
            with zipfile.ZipFile(path, "w", allowZip64=True) as zf:
                for o in manifest.objects:
                    entry = zipfile.ZipInfo(o.key, date_time=_zip_time(manifest))
                    entry.compress_type = _COMPRESS.get(o.format or "", zipfile.ZIP_STORED)
                    with zf.open(entry, "w", force_zip64=True) as dst:
                        read_verified(storage, f"{prefix}/{o.key}", dst, size=o.bytes, sha256=o.sha256,  # type: ignore[arg-type]
                                      mismatch=lambda _where, _size, _sha, key=o.key: ExportError(
                                          f"{key} read back from storage does not match its sha256",
                                          fix="storage returned different bytes than were written; retry the export"))
                info = zipfile.ZipInfo(MANIFEST_NAME, date_time=_zip_time(manifest))
                info.compress_type = zipfile.ZIP_DEFLATED
                zf.writestr(info, manifest.to_json())
            put = storage.put_stream(f"{prefix}/{name}", file_chunks(path))
        finally:
            remove_quietly(path)
            shutil.rmtree(tmp, ignore_errors=True)
    return ObjectEntry(name, "bundle", put.size, put.sha256, format="zip")


def _zip_time(manifest: Manifest) -> tuple[int, int, int, int, int, int]:
    t = manifest.finished_at
    return (t.year, t.month, t.day, t.hour, t.minute, t.second)
