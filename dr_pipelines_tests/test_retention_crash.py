"""kill -9 during `drp retention apply`, then run it again: no row lost, none archived twice.

The process is real (`drp`'s main, started by support/paused_drp.py), paused by a test-only
checkpoint observer at the moment of interest and killed with SIGKILL: no cleanup code runs. Afterwards the
rows left in the table plus the rows read back from every archive in storage (minus the rows
each archive's kept.json lists as never deleted) must equal the original rows by count and
content checksum, with no primary key in two archives.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import psycopg
import pyarrow.parquet as pq
import pytest
import yaml

from dr_pipelines.core.retention.apply import ApplyOptions, apply_policies
from dr_pipelines.core.retention.holds import place_hold, release_hold
from dr_pipelines.core.retention.journal import Segment, balance, segments
from dr_pipelines.core.retention.kept import read_kept
from dr_pipelines.core.retention.rehydrate import list_archives
from dr_pipelines.core.retention.segment import fetched
from dr_pipelines.core.storage import Storage
from dr_pipelines.core.storage.local import LocalStorage
from dr_pipelines.core.storage.s3 import S3Storage
from dr_pipelines_tests.support.env import drp_env
from dr_pipelines_tests.support.procs import drp, start_paused
from dr_pipelines_tests.support.retention import (
    AS_OF,
    ID,
    KEYS,
    POLICY,
    archive_prefixes,
    assert_union,
    content,
    key_env,
    policies,
)

TABLES = ("public.audit_log", "public.clinical_notes")


def _env(dsn: str, store: Path, policy: Path) -> dict[str, str]:
    return {**drp_env(source=dsn, storage=store, retention_policies_file=policy), **key_env(policy.parent)}


def _run_until_paused(env: dict[str, str], point: str, args: list[str], timeout: float = 60) -> None:
    proc = start_paused(["retention", "apply", "--json", *args], env, point, timeout)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def _check_crash_then_rerun(point: str, demo_db: str, env: dict[str, str], storage: Storage) -> None:
    before = {t: content(demo_db, t) for t in TABLES}
    args = ["--as-of", AS_OF.isoformat(), "--batch-size", "7", "--segment-rows", "60"]
    _run_until_paused(env, point, args)
    with psycopg.connect(demo_db) as conn:
        states = {s.state for s in segments(conn, table="public.audit_log")}
    assert states & {"pending", "verified"}  # the kill left unfinished work behind
    rerun = drp("retention", "apply", "--json", *args, env=env)
    assert rerun.returncode == 0, rerun.stderr
    resumed = json.loads(rerun.stdout)["tables"][0]
    assert resumed["resumed"] >= 1
    # the run's balance counts the resumed segments (archived by the killed run) too
    assert resumed["balance"]["ok"] and resumed["balance"]["archived"] >= resumed["archived_rows"]
    with psycopg.connect(demo_db) as conn:
        assert {s.state for s in segments(conn)} <= {"deleted", "abandoned"}
        audit = [s for s in segments(conn, table="public.audit_log") if s.state == "deleted"]
    assert all(s.deleted_rows == s.rows for s in audit)  # archived count == deleted count, per segment
    for table, original in before.items():
        assert assert_union(demo_db, storage, table, original) > 0


@pytest.mark.parametrize("point", ["after-write", "after-archive", "mid-delete"])
def test_kill_9_then_rerun_loses_nothing_and_duplicates_nothing(point: str, demo_db: str, tmp_path: Path) -> None:
    policy = tmp_path / "retention.yaml"
    policy.write_text(yaml.safe_dump(POLICY))
    store = tmp_path / "store"
    _check_crash_then_rerun(point, demo_db, _env(demo_db, store, policy), LocalStorage(store))


@pytest.mark.parametrize("point", ["after-write", "mid-delete"])
def test_kill_9_on_s3(point: str, demo_db: str, tmp_path: Path, s3_server, s3_bucket: str) -> None:  # type: ignore[no-untyped-def]
    policy = tmp_path / "retention.yaml"
    policy.write_text(yaml.safe_dump(POLICY))
    env = {**_env(demo_db, tmp_path, policy), **drp_env(storage=f"s3://{s3_bucket}/retention", s3=s3_server)}
    _check_crash_then_rerun(point, demo_db, env, S3Storage(s3_bucket, "retention", **s3_server.storage_kwargs()))


def _paused_after_first_archive(demo_db: str, tmp_path: Path) -> tuple[dict[str, str], LocalStorage, Segment]:
    """`apply` on clinical_notes killed right after its first segment was verified (nothing deleted yet)."""
    policy = tmp_path / "retention.yaml"
    policy.write_text(yaml.safe_dump({"version": 1, "tables": {"public.clinical_notes": POLICY["tables"][
        "public.clinical_notes"]}}))
    store = tmp_path / "store"
    env = _env(demo_db, store, policy)
    _run_until_paused(env, "after-archive", ["--as-of", AS_OF.isoformat()])
    with psycopg.connect(demo_db) as conn:
        (seg,) = segments(conn, states=("verified",))
    return env, LocalStorage(store), seg


def test_a_row_changed_between_archive_and_delete_stays_and_is_listed_as_kept(demo_db: str, tmp_path: Path) -> None:
    env, storage, seg = _paused_after_first_archive(demo_db, tmp_path)
    with psycopg.connect(demo_db) as conn:
        changed = conn.execute("UPDATE clinical_notes SET body = body || ' (amended)' WHERE id = (SELECT min(id)"
                               " FROM clinical_notes WHERE clinic_id = %s::bigint AND created_at < %s AND"
                               " created_at >= %s AND created_at < %s::date + interval '1 month') RETURNING id",
                               (seg.tenant_id, seg.cutoff, seg.month, seg.month)).fetchone()[0]
    current = content(demo_db, "public.clinical_notes")  # the amended version is the one to keep
    rerun = drp("retention", "apply", "--json", "--as-of", AS_OF.isoformat(), env=env)
    assert rerun.returncode == 0, rerun.stderr
    with psycopg.connect(demo_db) as conn:
        (done,) = [s for s in segments(conn) if s.id == seg.id]
        body = conn.execute("SELECT body FROM clinical_notes WHERE id = %s", (changed,)).fetchone()
        assert balance(segments(conn)).ok  # the Dagster check: archived - kept == deleted
    assert done.state == "deleted" and done.kept_rows == 1 and done.deleted_rows == (done.rows or 0) - 1
    kept = read_kept(storage, done.prefix, ["id"], identities=ID)
    assert kept is not None and kept.keys == [[str(changed)]]  # storage says which archived row stayed
    # The amended version was not deleted on the strength of the old archive; still expired, it went
    # into a later segment of its own. Both versions are in Parquet files ...
    assert body is None
    versions = []
    for prefix in archive_prefixes(storage, "public.clinical_notes"):
        with fetched(storage, prefix, identities=ID) as (_m, path):
            rows = pq.read_table(path, columns=["id", "body"]).to_pylist()
        versions += [(prefix, r["body"]) for r in rows if r["id"] == changed]
    assert len(versions) == 2 and versions[0][0] != versions[1][0]
    assert sorted(b.endswith("(amended)") for _p, b in versions) == [False, True]
    # ... but only the amended one is effective: rows left + archives minus their kept rows == the current
    # rows by content, no primary key in two archives (asserted inside).
    assert assert_union(demo_db, storage, "public.clinical_notes", current) > 0
    # Restoring every archive of the tenant does not conflict, skips the old version and says so.
    months = sorted(a.month for a in list_archives(storage, identities=ID, table="public.clinical_notes", tenant_id=seg.tenant_id))
    restored = drp("archive", "restore", "--table", "public.clinical_notes", "--tenant", seg.tenant_id, "--period",
                   f"{months[0]}..{months[-1]}", "--into", "notes_back", "--json", env=env)
    assert restored.returncode == 0, restored.stderr
    assert json.loads(restored.stdout)["skipped_kept"] == 1
    with psycopg.connect(demo_db) as conn:
        assert conn.execute("SELECT body FROM notes_back WHERE id = %s", (changed,)).fetchone()[0].endswith("(amended)")


def test_a_hold_placed_between_archive_and_delete_keeps_every_row_and_lists_them(demo_db: str, tmp_path: Path) -> None:
    _, storage, seg = _paused_after_first_archive(demo_db, tmp_path)
    original = content(demo_db, "public.clinical_notes")
    with psycopg.connect(demo_db, autocommit=True) as conn:
        hold = place_hold(conn, seg.tenant_id, "late litigation", table="public.clinical_notes")
    notes = policies()
    options = ApplyOptions(keys=KEYS, as_of=AS_OF, tables=("public.clinical_notes",))
    apply_policies(demo_db, storage, notes, options)
    with psycopg.connect(demo_db, autocommit=True) as conn:
        (done,) = [s for s in segments(conn) if s.id == seg.id]
        assert done.state == "deleted" and done.deleted_rows == 0 and done.kept_rows == done.rows
        kept = read_kept(storage, done.prefix, ["id"], identities=ID)
        assert kept is not None and kept.rows == done.rows
        sealed = storage.get_bytes(f"{done.prefix}/kept.json.zst.age")  # it lists row keys: sealed as the archive
        assert sealed.startswith(b"age-encryption.org/v1") and not storage.exists(f"{done.prefix}/kept.json")
        assert balance(segments(conn)).ok
        assert_union(demo_db, storage, "public.clinical_notes", original)  # the held rows are in no effective set
        release_hold(conn, hold.id)
        apply_policies(demo_db, storage, notes, options)  # now they go, into a new archive
        assert balance(segments(conn)).ok
        assert_union(demo_db, storage, "public.clinical_notes", original)
        # A real mismatch still fails the check: the journal forgets what it kept.
        conn.execute("UPDATE drp.archive_segments SET kept_rows = 0 WHERE id = %s", (seg.id,))
        assert not balance(segments(conn)).ok


def test_kept_rows_survive_a_kill_9_in_the_middle_of_the_delete(demo_db: str, tmp_path: Path) -> None:
    """The kept keys commit with their batch: a crash between batches loses none of them."""
    env, storage, seg = _paused_after_first_archive(demo_db, tmp_path)
    with psycopg.connect(demo_db) as conn:
        first, last = conn.execute(
            "UPDATE clinical_notes SET body = body || ' (amended)' WHERE id IN (SELECT unnest(ARRAY[min(id), max(id)])"
            " FROM clinical_notes WHERE clinic_id = %s::bigint AND created_at < %s AND created_at >= %s"
            " AND created_at < %s::date + interval '1 month') RETURNING id",
            (seg.tenant_id, seg.cutoff, seg.month, seg.month)).fetchall()
    current = content(demo_db, "public.clinical_notes")
    _run_until_paused(env, "mid-delete", ["--as-of", AS_OF.isoformat(), "--batch-size", "1"])
    with psycopg.connect(demo_db) as conn:
        (mid,) = [s for s in segments(conn) if s.id == seg.id]
        listed = conn.execute("SELECT pk FROM drp.archive_kept WHERE segment_id = %s", (seg.id,)).fetchall()
    assert mid.state == "verified" and mid.next_offset == 1 and mid.kept_rows == 1
    assert listed == [([str(min(first[0], last[0]))],)] and read_kept(storage, seg.prefix, ["id"], identities=ID) is None
    rerun = drp("retention", "apply", "--json", "--as-of", AS_OF.isoformat(), env=env)
    assert rerun.returncode == 0, rerun.stderr
    kept = read_kept(storage, seg.prefix, ["id"], identities=ID)
    assert kept is not None and sorted(kept.keys) == sorted([[str(first[0])], [str(last[0])]])
    assert assert_union(demo_db, storage, "public.clinical_notes", current) > 0
