"""Helpers for the backup and restore tests: keys, fixture databases, content comparison, damage.

Nothing here mocks: databases are real (the session cluster), storage is a real directory or
moto's S3 server over HTTP, and damage is done to the stored bytes themselves.
"""

from __future__ import annotations

import difflib
import io
import json
import os
import subprocess
import tarfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from pyrage import x25519

from dr_pipelines.core.backup.catalog import backup_prefix
from dr_pipelines.core.crypto import generate_identity_file, load_identities
from dr_pipelines.core.manifest import Manifest
from dr_pipelines.core.pg.checksums import USER_TABLES_QUERY, database_checksums
from dr_pipelines.core.pg.cluster import LocalCluster
from dr_pipelines.core.pg.schema import schema_ddl
from dr_pipelines.core.pg.tools import client_tool
from dr_pipelines.core.storage import Storage
from dr_pipelines.core.storage.base import TEMP_SUFFIX
from dr_pipelines.core.storage.local import LocalStorage
from dr_pipelines.core.storage.s3 import S3Storage

# shared/ lies beside the repository in CI (and in the team's checkouts), not in a user's plain
# clone: require_pagila() skips there. DRP_PAGILA_DIR points elsewhere.
PAGILA_DIR = Path(os.environ.get("DRP_PAGILA_DIR", Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "pagila"))


# -- keys ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Keys:
    """An age key pair: the recipient goes into settings, the identity file stays with the restorer."""

    identity_file: Path
    recipient: str

    @property
    def identities(self) -> list[x25519.Identity]:
        return load_identities(self.identity_file)

    @classmethod
    def make(cls, directory: Path, name: str = "backup-key.txt") -> Keys:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / name
        return cls(path, generate_identity_file(path))


def foreign_identity() -> x25519.Identity:
    """A valid identity that matches no backup's recipients."""
    return x25519.Identity.generate()


# -- fixture databases --------------------------------------------------------------------------


def require_pagila() -> Path:
    """PAGILA_DIR, or skip the calling test naming the missing path (CI must have it: fail there)."""
    missing = [f for f in ("pagila-schema.sql", "pagila-data.sql") if not (PAGILA_DIR / f).is_file()]
    if missing:
        reason = f"the pagila fixture is not at {PAGILA_DIR} (no {', '.join(missing)}): shared/ lies beside the " \
                 "repository in CI, not in a plain clone; set DRP_PAGILA_DIR to run these tests"
        if os.environ.get("CI"):
            pytest.fail(reason + ". CI must provide it")
        pytest.skip(reason)
    return PAGILA_DIR


def template_database(cluster: LocalCluster, name: str, build: Callable[[str], None]) -> str:
    """The database `name`, built once per cluster for copying: built under a scratch name and
    renamed only when build(dsn) completed, so a failed build leaves nothing a later test would copy."""
    from dr_pipelines.demo.stack import database_exists

    if database_exists(cluster, name):
        return name
    scratch = f"{name[:40]}_building_{uuid.uuid4().hex[:8]}"
    dsn = cluster.create_database(scratch)
    try:
        build(dsn)
    except BaseException:
        cluster.drop_database(scratch)
        raise
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(scratch), sql.Identifier(name)))
    return name


def load_pagila(dsn: str) -> None:
    """Load pagila as NOTES.md says: schema (one harmless 'plpgsql already exists'), then data strictly."""
    require_pagila()
    psql = client_tool("psql", 15)
    schema = subprocess.run([psql, "-X", "-q", "-d", dsn, "-f", str(PAGILA_DIR / "pagila-schema.sql")],
                            capture_output=True, text=True)
    errors = [line for line in schema.stderr.splitlines() if "ERROR" in line and "plpgsql" not in line]
    assert schema.returncode == 0 and not errors, schema.stderr
    data = subprocess.run([psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", dsn, "-f",
                           str(PAGILA_DIR / "pagila-data.sql")], capture_output=True, text=True)
    assert data.returncode == 0, data.stderr


HOSTILE_TABLE = 'public.Tricky "Name"'
HOSTILE_UNICODE_TABLE = "Schéma ünï.Tâble 表"
HOSTILE_SEQUENCE = 'Schéma ünï.séq "odd"'  # setval(..., 500, false): pg_sequences.last_value is NULL
HOSTILE_SETTINGS = ['app.clinic_region=nörd "quoted"', 'search_path="$user", public, "Schéma ünï"', "work_mem=7MB"]
HOSTILE_COMMENT = "Clinic data ✓ — it's \"prod\""


def create_hostile_schema(dsn: str) -> None:
    """Names and objects that break naive restores and checks.

    A table named Tricky "Name" (quotes and a space in it), unicode schema/table/column names, a serial sequence and a
    free one both left at is_called = false (after setval(seq, n, false)), large objects (one
    empty, one binary, one over a chunk boundary), a populated and an unpopulated materialized
    view, and database-level properties: COMMENT ON DATABASE and ALTER DATABASE ... SET with a
    list setting (search_path) and a custom one; a column named like the checksums' row alias (t).
    """
    with psycopg.connect(dsn, autocommit=True) as conn:
        database = sql.Identifier(conn.execute("SELECT current_database()").fetchone()[0])
        conn.execute('CREATE SCHEMA "Schéma ünï"')
        conn.execute('CREATE TABLE "Tricky ""Name""" (id serial PRIMARY KEY, "Välue ✓" text, amount numeric)')
        conn.execute('INSERT INTO "Tricky ""Name""" ("Välue ✓", amount)'
                     " SELECT 'naïve ' || g || ' \"q\" ''s', g * 1.5 FROM generate_series(1, 300) g")
        conn.execute("SELECT setval(pg_get_serial_sequence(%s, 'id'), 301, false)", ('public."Tricky ""Name"""',))
        conn.execute('CREATE TABLE "Schéma ünï"."Tâble 表" (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,'
                     ' "dönnées" jsonb, at timestamptz NOT NULL DEFAULT \'2026-01-01 12:00+01\')')
        conn.execute("CREATE TABLE t (t integer, drp_export_row text)")  # columns named like row aliases
        conn.execute("INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 50) g")
        conn.execute('INSERT INTO "Schéma ünï"."Tâble 表" ("dönnées")'
                     " SELECT jsonb_build_object('k', g, 'ü', repeat('é', g % 7)) FROM generate_series(1, 120) g")
        conn.execute('CREATE SEQUENCE "Schéma ünï"."séq ""odd"""')
        conn.execute("SELECT setval(%s, 500, false)", ('"Schéma ünï"."séq ""odd"""',))
        for data in (b"", bytes(range(256)) * 40, os.urandom((4 << 20) + 123)):
            conn.execute("SELECT lo_from_bytea(0, %s)", (data,))
        conn.execute('CREATE MATERIALIZED VIEW "Schéma ünï"."mv peuplée" AS'
                     ' SELECT "Välue ✓" AS v, amount FROM "Tricky ""Name""" WHERE id % 3 = 0')
        conn.execute('CREATE MATERIALIZED VIEW "mv ""vide""" AS SELECT id, "dönnées" FROM "Schéma ünï"."Tâble 表"'
                     " WITH NO DATA")
        conn.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(database, sql.Literal(HOSTILE_COMMENT)))
        conn.execute(sql.SQL("ALTER DATABASE {} SET search_path = '$user', public, 'Schéma ünï'").format(database))
        conn.execute(sql.SQL("ALTER DATABASE {} SET work_mem = '7MB'").format(database))
        conn.execute(sql.SQL("ALTER DATABASE {} SET app.clinic_region = 'nörd \"quoted\"'").format(database))


def database_state(dsn: str) -> dict[str, object]:
    """Everything besides table rows a dump carries, read from the database itself (not via drp's code paths).

    Sequence states, large objects' bytes, materialized views (populated, rows), database comment
    and settings: what must be equal after a restore.
    """
    with psycopg.connect(dsn) as conn:
        sequences = {}
        for schema, name in conn.execute("SELECT schemaname, sequencename FROM pg_sequences ORDER BY 1, 2").fetchall():
            sequences[f"{schema}.{name}"] = conn.execute(
                sql.SQL("SELECT last_value, is_called FROM {}").format(sql.Identifier(schema, name))).fetchone()
        large = dict(conn.execute("SELECT oid, md5(lo_get(oid)) FROM pg_largeobject_metadata").fetchall())
        views = {}
        for schema, name, populated in conn.execute(
                "SELECT schemaname, matviewname, ispopulated FROM pg_matviews ORDER BY 1, 2").fetchall():
            rows = sorted(map(str, conn.execute(sql.SQL("SELECT * FROM {}").format(sql.Identifier(schema, name)))
                              .fetchall())) if populated else None
            views[f"{schema}.{name}"] = (populated, rows)
        comment, settings = conn.execute(
            "SELECT shobj_description(d.oid, 'pg_database'), (SELECT setconfig FROM pg_db_role_setting s"
            " WHERE s.setdatabase = d.oid AND s.setrole = 0) FROM pg_database d WHERE datname = current_database()"
        ).fetchone()
    return {"sequences": sequences, "large_objects": large, "materialized_views": views,
            "comment": comment, "settings": sorted(settings or [])}


def add_padding(dsn: str, mib: int) -> None:
    """An incompressible table (random bytea, 1 MiB a row) and one large object.

    The padding makes the compressed dump big enough for S3 multipart uploads; the large
    object gives tests a way to stall pg_dump after all table data has streamed (its data
    is read last, under a lock on pg_largeobject a test can hold).
    """
    with psycopg.connect(dsn) as conn:
        conn.execute("CREATE TABLE zz_padding (id integer PRIMARY KEY, blob bytea NOT NULL)")
        with conn.cursor().copy("COPY zz_padding (id, blob) FROM STDIN") as copy:
            for i in range(mib):
                copy.write_row((i, os.urandom(1 << 20)))
        conn.execute("SELECT lo_from_bytea(0, 'a large object, dumped after all table data'::bytea)")


@contextmanager
def pg_dump_stalled_after_table_data(dsn: str) -> Iterator[psycopg.Connection]:
    """Hold ACCESS EXCLUSIVE on pg_largeobject: a pg_dump of dsn streams every table, then waits."""
    conn = psycopg.connect(dsn)
    try:
        conn.execute("LOCK TABLE pg_catalog.pg_largeobject IN ACCESS EXCLUSIVE MODE")
        yield conn
    finally:
        conn.rollback()
        conn.close()


def user_tables(dsn: str) -> list[str]:
    with psycopg.connect(dsn) as conn:
        return [f"{s}.{t}" for s, t in conn.execute(USER_TABLES_QUERY).fetchall()]


def relation_count(dsn: str) -> int:
    """Tables, views, sequences... outside the system schemas (what 'an empty database' means)."""
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%'"
        ).fetchone()[0]


def advisory_locks(dsn: str) -> int:
    """Advisory locks held in dsn's database (a backup holds one while it runs)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
            " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        ).fetchone()[0]


# -- content comparison -------------------------------------------------------------------------


def manifest_tables(manifest: Manifest) -> dict[str, tuple[int, str]]:
    return {t.name: (t.rows, t.checksum) for t in manifest.tables}


def recomputed(dsn: str, manifest: Manifest) -> dict[str, tuple[int, str]]:
    """(rows, checksum) per table of dsn, each by the method the manifest recorded for it."""
    methods = {t.name: t.method for t in manifest.tables}
    return {c.name: (c.rows, c.checksum) for c in database_checksums(dsn, methods=methods)}


def own_checksums(dsn: str) -> dict[str, tuple[int, str, str]]:
    """(rows, checksum, method) per table, methods chosen by the database itself."""
    return {c.name: (c.rows, c.checksum, c.method) for c in database_checksums(dsn)}


def assert_same_schema(expected_dsn: str, actual_dsn: str) -> None:
    expected, actual = schema_ddl(expected_dsn), schema_ddl(actual_dsn)
    if expected != actual:
        diff = "".join(difflib.unified_diff(expected.splitlines(keepends=True), actual.splitlines(keepends=True),
                                            "source", "restored", n=2))
        raise AssertionError(f"schemas differ:\n{diff[:20000]}")


def assert_restored_equals_manifest(dsn: str, manifest: Manifest) -> None:
    want, got = manifest_tables(manifest), recomputed(dsn, manifest)
    if want != got:
        diff = {k: (want.get(k), got.get(k)) for k in sorted(set(want) | set(got)) if want.get(k) != got.get(k)}
        raise AssertionError(f"restored content differs from the manifest (table: (manifest, restored)): {diff}")


# -- storage inspection and damage ---------------------------------------------------------------


def database_key(manifest: Manifest) -> str:
    return f"{backup_prefix(manifest.id)}/{manifest.object('database').key}"


def stored_keys(storage: Storage) -> list[str]:
    return [o.key for o in storage.list("")]


def backup_keys(storage: Storage) -> list[str]:
    """Keys of backup sets, backups/<id>/... (attempt records and the prefix's SOURCE.json left out)."""
    return [k for k in stored_keys(storage) if k.startswith("backups/") and k.count("/") >= 2]


def attempt_records(storage: Storage) -> dict[str, str]:
    """Backup id -> status ("running", "succeeded", "failed") of every recorded attempt."""
    records = [json.loads(storage.get_bytes(k)) for k in stored_keys(storage) if k.startswith("attempts/")]
    return {r["id"]: r["status"] for r in records}


def local_files(root: Path) -> list[str]:
    """Every file under root, partial uploads included (relative paths)."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def partial_files(root: Path) -> list[Path]:
    return [p for p in root.rglob(f"*{TEMP_SUFFIX}") if p.is_file()]


def partial_uploads(storage: Storage) -> list[str]:
    """The keys of partial uploads as the backend itself sees them (temp files / multipart uploads)."""
    if isinstance(storage, LocalStorage):
        return sorted(str(storage._partial_key(p.parent, p.name)) for p in partial_files(storage.root))
    assert isinstance(storage, S3Storage)
    uploads = storage.client.list_multipart_uploads(Bucket=storage.bucket).get("Uploads", [])
    return sorted(u["Key"].removeprefix(storage.prefix) for u in uploads)


def leave_partial_upload(storage: Storage, key: str) -> None:
    """Leave behind what a writer killed mid-upload of ``key`` would leave (written just now)."""
    if isinstance(storage, LocalStorage):
        directory, _, name = key.rpartition("/")
        (storage.root / directory).mkdir(parents=True, exist_ok=True)
        (storage.root / directory / f".{name}.{uuid.uuid4().hex}{TEMP_SUFFIX}").write_bytes(b"half")
    else:
        assert isinstance(storage, S3Storage)
        full = storage.prefix + key
        upload = storage.client.create_multipart_upload(Bucket=storage.bucket, Key=full)
        storage.client.upload_part(Bucket=storage.bucket, Key=full, UploadId=upload["UploadId"], PartNumber=1,
                                   Body=b"half")


def rewrite_object(storage: Storage, key: str, change: Callable[[bytes], bytes | None]) -> None:
    """Replace a stored object's bytes behind the library's back (None deletes it).

    Local: the file is rewritten in place. S3: get_object, then put_object with the client.
    """
    if isinstance(storage, LocalStorage):
        path = storage.root.joinpath(*key.split("/"))
        new = change(path.read_bytes())
        if new is None:
            path.unlink()
        else:
            with open(path, "r+b") as f:
                f.write(new)
                f.truncate()
        return
    assert isinstance(storage, S3Storage)
    full = storage.prefix + key
    body = storage.client.get_object(Bucket=storage.bucket, Key=full)["Body"].read()
    new = change(body)
    if new is None:
        storage.client.delete_object(Bucket=storage.bucket, Key=full)
    else:
        storage.client.put_object(Bucket=storage.bucket, Key=full, Body=new)


def flip_middle_byte(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0x01]) + data[middle + 1:]


def truncate_half(data: bytes) -> bytes:
    return data[: len(data) // 2]


# -- clusters and mounts ------------------------------------------------------------------------


def write_as_cluster_owner(path: Path, text: str) -> None:
    """Write a file in a data directory (owned by the postgres OS user when we are root)."""
    if os.geteuid() == 0:
        subprocess.run(["runuser", "-u", "postgres", "--", "tee", str(path)], input=text, text=True,
                       check=True, capture_output=True, cwd="/")
    else:
        path.write_text(text)


def require_password_for(cluster: LocalCluster, role: str) -> None:
    """Put `host all <role> 127.0.0.1/32 scram-sha-256` before the trust lines, then reload."""
    hba = cluster.data_dir / "pg_hba.conf"
    if os.geteuid() == 0:
        text = subprocess.run(["runuser", "-u", "postgres", "--", "cat", str(hba)], capture_output=True,
                              text=True, check=True, cwd="/").stdout
    else:
        text = hba.read_text()
    write_as_cluster_owner(hba, f"host all {role} 127.0.0.1/32 scram-sha-256\n" + text)
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        assert conn.execute("SELECT pg_reload_conf()").fetchone()[0]


@contextmanager
def tmpfs(directory: Path, size: str = "1M") -> Iterator[Path]:
    """A small tmpfs mounted on directory (needs root / CAP_SYS_ADMIN); unmounted afterwards."""
    directory.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(directory)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        import pytest

        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip() or 'mount failed'}): needs root")
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], capture_output=True)


def remount_read_only(directory: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(directory)], check=True, capture_output=True)


def tar_of(members: dict[str, bytes]) -> bytes:
    """A GNU tar of regular files (name -> content, mode 0600), in order: what a base backup's tar holds."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o600
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()
