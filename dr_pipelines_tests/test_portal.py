"""The export portal over real HTTP (uvicorn, real sockets) on a real PostgreSQL copy of the demo data.

One server and one database for the module. What is shown: a streamed CSV / JSON Lines body is
byte for byte ``drp export``'s file; a client that goes away leaves an ``abandoned`` audit row
and no database session; clinic A's credential never gets a byte of clinic B's data from any
endpoint (by id, guessed ids, path traversal, expired, revoked or tampered tokens), each such
request refused and audited; full exports run, download with sha256 checks and Range; bad input
gets a JSON error with the right status and writes nothing but its audit row.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import urllib.request
import uuid
import zipfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from dr_pipelines.core.export.run import ExportOptions, export_tenants
from dr_pipelines.core.layout import export_prefix
from dr_pipelines.core.pg.cluster import LocalCluster, free_port
from dr_pipelines.core.settings import load_settings
from dr_pipelines.core.storage.local import LocalStorage
from dr_pipelines.portal.app import ROUTES
from dr_pipelines.portal.context import APPLICATION_NAME, RateLimiter, StreamSlots
from dr_pipelines.portal.tokens import create_token, sign_token
from dr_pipelines_tests.support.env import drp_env
from dr_pipelines_tests.support.portal import PortalServer, read_head
from dr_pipelines_tests.support.procs import drp, wait_for

SECRET = "s" * 40
A, B = "1", "2"
BULK_ROWS = 60_000  # ~25 MB of CSV for clinic A: more than the socket buffers hold, so a stream can be cut


@pytest.fixture(scope="module")
def rig(pg_cluster: LocalCluster, demo_template: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    name = f"portal_{uuid.uuid4().hex[:10]}"
    dsn = pg_cluster.create_database(name, template=demo_template)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE portal_bulk (id bigserial PRIMARY KEY, clinic_id bigint NOT NULL REFERENCES clinics,"
                     " body text NOT NULL)")
        conn.execute("INSERT INTO portal_bulk (clinic_id, body) SELECT 1, repeat(md5(g::text), 12)"
                     " FROM generate_series(1, %s) g", (BULK_ROWS,))
        conn.execute("INSERT INTO portal_bulk (clinic_id, body) SELECT 2, 'CLINIC-B-SECRET-' || g"
                     " FROM generate_series(1, 50) g")
    root = tmp_path_factory.mktemp("portal")
    env = drp_env(source=dsn, storage=root / "store", work=root / "work", export_max_per_hour=0,
                  portal_requests_per_minute=0, portal_unauthenticated_per_minute=0, portal_signing_secret=SECRET)
    settings = load_settings(env=env)
    server = PortalServer(settings)
    with psycopg.connect(dsn, autocommit=True) as conn:
        soon = datetime.now(UTC) + timedelta(days=1)
        tokens = {k: create_token(conn, c, expires_at=soon, created_by="test")[1]
                  for k, c in (("a", A), ("b", B), ("a_expired", A), ("a_revoked", A))}
        conn.execute("UPDATE drp.portal_tokens SET expires_at = now() - interval '1 minute' WHERE clinic_id = %s"
                     " AND token_sha256 = %s", (A, hashlib.sha256(tokens["a_expired"].encode()).hexdigest()))
        conn.execute("UPDATE drp.portal_tokens SET revoked_at = now(), revoked_by = 'test' WHERE token_sha256 = %s",
                     (hashlib.sha256(tokens["a_revoked"].encode()).hexdigest(),))
        names = dict(conn.execute("SELECT id::text, name FROM clinics").fetchall())
    try:
        yield {"dsn": dsn, "server": server, "tokens": tokens, "env": env, "storage": LocalStorage(root / "store"),
               "names": names, "root": root}
    finally:
        server.stop()
        pg_cluster.drop_database(name)


def audit_since(dsn: str, after_id: int) -> list[dict[str, Any]]:
    with psycopg.connect(dsn) as conn:
        cur = conn.execute("SELECT * FROM drp.export_audit WHERE id > %s ORDER BY id", (after_id,))
        cols = [d.name for d in cur.description]
        return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]


def last_audit_id(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        conn.execute("SELECT 1 FROM pg_class")  # connection check
        row = conn.execute("SELECT coalesce(max(id), 0) FROM drp.export_audit").fetchone()
        return row[0]


def portal_sessions(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
                            " AND datname = current_database()", (APPLICATION_NAME,)).fetchone()[0]


def wait_job(server: PortalServer, token: str, job_id: str) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        job = server.get(f"/api/exports/{job_id}", token).json()
        return job if job["state"] in ("succeeded", "failed") else None
    return wait_for(done, timeout=120, what=f"export job {job_id}", interval=0.2)


def test_streamed_bodies_are_the_drp_export_files(rig: dict[str, Any], tmp_path: Path) -> None:
    server, dsn, token = rig["server"], rig["dsn"], rig["tokens"]["a"]
    storage = LocalStorage(tmp_path / "ref")
    ref = export_tenants(dsn, storage, [A], ExportOptions(formats=("csv", "jsonl"), max_per_hour=None))
    mark = last_audit_id(dsn)
    for fmt in ("csv", "jsonl"):
        for table in ("public.patients", "public.clinics", "public.clinical_notes"):
            reply = server.get(f"/api/data/{table}?format={fmt}", token)
            assert reply.status == 200 and reply.complete, reply.body[:300]
            want = storage.get_bytes(f"{ref.prefix}/{table}.{fmt}")
            assert reply.body == want, (table, fmt)
            assert reply.headers["content-disposition"] == f'attachment; filename="{table}.{fmt}"'
            status = server.get(f"/api/streams/{reply.headers['x-drp-attempt-id']}", token).json()
            rows = {t.name: t.rows for t in ref.manifest.tables}[table]
            assert (status["status"], status["rows"], status["bytes"], status["sha256"]) == (
                "succeeded", rows, len(want), hashlib.sha256(want).hexdigest())
    # Every table at once: a zip of the same files, manifest last with each file's rows and sha256.
    reply = server.get("/api/data?format=jsonl", token)
    assert reply.status == 200 and reply.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(reply.body)) as zf:
        names = zf.namelist()
        assert names[-1] == "manifest.json"
        manifest = json.loads(zf.read("manifest.json"))
        for entry in manifest["files"]:
            data = zf.read(entry["key"])
            assert data == storage.get_bytes(f"{ref.prefix}/{entry['key']}"), entry["key"]
            assert hashlib.sha256(data).hexdigest() == entry["sha256"]
            assert entry["rows"] == {t.name: t.rows for t in ref.manifest.tables}[entry["table"]]
    assert sorted(names[:-1]) == sorted(f"{t.name}.jsonl" for t in ref.manifest.tables)
    rows = audit_since(dsn, mark)
    streams = [r for r in rows if r["request"].startswith("GET /api/data")]
    assert [r["status"] for r in streams] == ["started", "succeeded"] * 7
    assert {r["credential_id"] for r in streams} == {rows[0]["credential_id"]} and rows[0]["credential_id"].startswith("pt_")
    assert {r["client_address"] for r in rows} == {"127.0.0.1"} and {tuple(r["tenant_ids"]) for r in rows} == {(A,)}
    assert portal_sessions(dsn) == 0


@pytest.mark.parametrize("path", ["/api/data/public.portal_bulk?format=csv",
                                  "/api/data?format=jsonl&table=public.patients&table=public.portal_bulk"])
def test_client_disconnect_mid_stream_is_abandoned_and_leaves_no_session(rig: dict[str, Any], path: str) -> None:
    server, dsn = rig["server"], rig["dsn"]
    sock = server.raw(path, rig["tokens"]["a"])
    status, headers = read_head(sock)
    assert status == 200
    attempt = headers["x-drp-attempt-id"]
    sock.recv(65536)
    assert portal_sessions(dsn) == 1  # the stream's snapshot, still open: the stream is mid-way
    sock.close()

    def closed() -> dict[str, Any] | None:
        rows = [r for r in audit_since(dsn, 0) if str(r["attempt_id"]) == attempt]
        return rows[-1] if rows and rows[-1]["status"] != "started" else None
    row = wait_for(closed, timeout=30, what="the abandoned row", interval=0.1)
    assert row["status"] == "abandoned" and row["bytes"] < BULK_ROWS * 384 and row["content_sha256"] is None
    wait_for(lambda: portal_sessions(dsn) == 0, timeout=10, what="no portal session left", interval=0.1)
    with psycopg.connect(dsn) as conn:  # and no COPY running for it
        assert conn.execute("SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'COPY%%portal_bulk%%'"
                            " AND pid <> pg_backend_pid()").fetchone()[0] == 0


def test_database_failure_mid_stream_cuts_the_body(rig: dict[str, Any]) -> None:
    server, dsn = rig["server"], rig["dsn"]
    sock = server.raw("/api/data/public.portal_bulk?format=csv", rig["tokens"]["a"])
    status, headers = read_head(sock)
    assert status == 200
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = %s"
                            " AND datname = current_database()", (APPLICATION_NAME,)).fetchone()[0] == 1
    body = b""
    while chunk := sock.recv(1 << 20):
        body += chunk
    sock.close()
    assert not body.endswith(b"0\r\n\r\n")  # chunked encoding never terminated: no client takes it for whole
    rows = wait_for(lambda: [r for r in audit_since(dsn, 0) if str(r["attempt_id"]) == headers["x-drp-attempt-id"]
                             and r["status"] != "started"], timeout=30, what="the failed row", interval=0.1)
    assert rows[-1]["status"] == "failed"


def _b_objects(rig: dict[str, Any]) -> dict[str, str]:
    """Clinic B's real ids: a finished export job, one of its files, a stream attempt."""
    server, tb = rig["server"], rig["tokens"]["b"]
    job = server.request("POST", "/api/exports", token=tb, json_body={"formats": ["jsonl"], "tables":
                                                                       ["public.portal_bulk"]}).json()
    job = wait_job(server, tb, job["job_id"])
    assert job["state"] == "succeeded", job
    stream = server.get("/api/data/public.portal_bulk?format=jsonl", tb)
    assert b"CLINIC-B-SECRET-1" in stream.body
    return {"job": job["job_id"], "file": job["files"][0]["name"], "attempt": stream.headers["x-drp-attempt-id"],
            "export_id": job["export_id"]}


def test_clinic_a_never_reaches_clinic_b(rig: dict[str, Any]) -> None:
    server, dsn, t = rig["server"], rig["dsn"], rig["tokens"]
    b = _b_objects(rig)
    ta = t["a"]
    tampered = sign_token(SECRET, "k1", A, subject="admin", lifetime_s=300)
    head, kid, payload, sig = tampered.split(".")
    forged = ".".join([head, kid, sign_token(SECRET, "k1", B, subject="admin", lifetime_s=300).split(".")[2], sig])
    wrong_key = sign_token("x" * 40, "k1", B, subject="admin", lifetime_s=300)
    too_long = sign_token(SECRET, "k1", B, subject="admin", lifetime_s=86400)
    expired_signed = sign_token(SECRET, "k1", B, subject="admin", lifetime_s=60, now=datetime.now(UTC).timestamp() - 120)
    b_paths = [f"/api/exports/{b['job']}", f"/api/exports/{b['job']}/files/{b['file']}",
               f"/api/streams/{b['attempt']}", "/api/exports/job_0000000000000000",
               "/api/exports/job_0000000000000000/files/x.csv", f"/api/streams/{uuid.uuid4()}",
               f"/api/exports/{b['job']}/files/..%2F..%2Fmanifest.json",
               f"/api/exports/..%2F{b['export_id']}/files/manifest.json", f"/api/data/..%2F..%2F{b['export_id']}",
               f"/api/exports/{b['export_id']}", "/api/clinics/2", f"/api/../exports/{b['job']}"]
    cases = [(ta, p) for p in b_paths]
    for bad in (t["a_expired"], t["a_revoked"], forged, wrong_key, too_long, expired_signed,
                ta[:-1] + ("A" if ta[-1] != "A" else "B"), "drpt.pt_000000000000." + "x" * 43, "not a token"):
        cases += [(bad, p) for p in ("/api/clinic", "/api/data/public.portal_bulk?format=csv", "/api/data?format=csv",
                                     "/api/exports", f"/api/exports/{b['job']}", f"/api/streams/{b['attempt']}",
                                     f"/api/exports/{b['job']}/files/{b['file']}")]
    cases += [(None, "/api/clinic"), (None, f"/api/exports/{b['job']}/files/{b['file']}")]
    mark = last_audit_id(dsn)
    for token, path in cases:
        reply = server.get(path, token)
        assert reply.status in (401, 403, 404), (path, reply.status)
        assert set(reply.json()) == {"error"}, path
        for secret in (b"CLINIC-B-SECRET", rig["names"][B].encode(), b["export_id"].encode()):
            assert secret not in reply.body, (path, secret)
    assert server.request("POST", "/api/exports", token=t["a_revoked"], json_body={}).status == 401
    rows = audit_since(dsn, mark)
    assert len(rows) == len(cases) + 1 and {r["status"] for r in rows} == {"refused"}
    assert all(r["tenant_ids"] in ([], [A]) for r in rows)
    # A's own data asked with B's id in the query: still A's rows only.
    reply = server.get("/api/data/public.portal_bulk?format=jsonl&clinic_id=2&tenant=2", ta)
    assert reply.status == 200 and b"CLINIC-B-SECRET" not in reply.body
    assert {json.loads(line)["clinic_id"] for line in reply.body.splitlines()} == {1}
    # A valid signed token acts for its clinic only.
    signed = sign_token(SECRET, "k1", A, subject="admin@a", lifetime_s=300)
    assert server.get("/api/clinic", signed).json()["clinic_id"] == A
    assert server.get(f"/api/exports/{b['job']}", signed).status == 404


def test_full_export_download_with_range_and_checksum(rig: dict[str, Any]) -> None:
    server, ta, storage = rig["server"], rig["tokens"]["a"], rig["storage"]
    created = server.request("POST", "/api/exports", token=ta, json_body={"formats": ["csv", "parquet"], "zip": True,
                                                                          "tables": ["public.patients"]})
    assert created.status == 202 and created.headers["location"] == f"/api/exports/{created.json()['job_id']}"
    job = wait_job(server, ta, created.json()["job_id"])
    assert job["state"] == "succeeded" and job["expires_at"], job
    files = {f["name"]: f for f in job["files"]}
    assert set(files) == {"public.patients.csv", "public.patients.parquet", f"{job['export_id']}.zip"}
    stored = storage.get_bytes(f"{export_prefix(job['export_id'])}/public.patients.csv")
    whole = server.get(files["public.patients.csv"]["href"], ta)
    assert whole.status == 200 and whole.body == stored and whole.headers["accept-ranges"] == "bytes"
    part = server.get(files["public.patients.csv"]["href"], ta, headers={"Range": "bytes=10-99"})
    assert part.status == 206 and part.body == stored[10:100]
    assert part.headers["content-range"] == f"bytes 10-99/{len(stored)}"
    tail = server.get(files["public.patients.csv"]["href"], ta, headers={"Range": f"bytes={len(stored) - 5}-"})
    assert tail.status == 206 and tail.body == stored[-5:]
    past = server.get(files["public.patients.csv"]["href"], ta, headers={"Range": f"bytes={len(stored)}-"})
    assert past.status == 416 and past.json()["error"]["code"] == "range_not_satisfiable"
    assert past.headers["content-range"] == f"bytes */{len(stored)}"
    listed = server.get("/api/exports", ta).json()["exports"]
    assert job["job_id"] in [j["job_id"] for j in listed]
    # A flipped byte in storage: the download is cut off before its end, never handed over whole.
    path = Path(rig["root"]) / "store" / export_prefix(job["export_id"]) / "public.patients.csv"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    damaged = server.get(files["public.patients.csv"]["href"], ta)
    assert damaged.status == 200 and not damaged.complete and len(damaged.body) < len(data)
    # Past its time-to-live (export_ttl_days, 7) by the manifest's finish: 410, and the status says expired.
    manifest_path = path.parent / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["finished_at"] = (datetime.now(UTC) - timedelta(days=8)).isoformat()
    manifest_path.write_text(json.dumps(manifest))
    old = server.get(files["public.patients.parquet"]["href"], ta)
    assert old.status == 410 and old.json()["error"]["code"] == "expired" and b"PAR1" not in old.body
    assert server.get(f"/api/exports/{job['job_id']}", ta).json()["state"] == "expired"
    # Removed from storage (by housekeeping or by hand): 410.
    path.unlink()
    (path.parent / "manifest.json").unlink()
    gone = server.get(files["public.patients.csv"]["href"], ta)
    assert gone.status == 410 and gone.json()["error"]["code"] == "expired"
    assert server.get(f"/api/exports/{job['job_id']}", ta).json()["state"] == "expired"


def test_bad_input_gets_a_json_error_and_writes_only_its_audit_row(rig: dict[str, Any]) -> None:
    server, dsn, ta = rig["server"], rig["dsn"], rig["tokens"]["a"]
    with psycopg.connect(dsn) as conn:
        jobs_before = conn.execute("SELECT count(*) FROM drp.portal_exports").fetchone()[0]
    mark = last_audit_id(dsn)
    cases = [
        (server.get("/api/clinic", "drpt.garbage"), 401, "token_malformed"),
        (server.get("/api/clinic", None, headers={"Authorization": "Basic abc"}), 401, "token_malformed"),
        (server.get("/api/clinic", rig["tokens"]["a_expired"]), 401, "token_expired"),
        (server.get("/api/data/public.nope?format=csv", ta), 404, "unknown_table"),
        (server.get("/api/data/public.patients?format=xml", ta), 400, "unknown_format"),
        (server.get("/api/data/public.patients?format=parquet", ta), 400, "unknown_format"),
        (server.request("POST", "/api/exports", token=ta, body=b"{not json",
                        headers={"Content-Type": "application/json"}), 400, "bad_json"),
        (server.request("POST", "/api/exports", token=ta, body=b"formats=csv",
                        headers={"Content-Type": "application/x-www-form-urlencoded"}), 415, "not_json"),
        (server.request("POST", "/api/exports", token=ta, json_body={"formats": ["csv"], "pad": "x" * 70000}),
         413, "body_too_large"),
        (server.request("POST", "/api/exports", token=ta, json_body={"formats": ["xls"]}), 400, "unknown_format"),
        (server.request("POST", "/api/exports", token=ta, json_body={"tables": ["public.nope"]}), 404,
         "unknown_table"),
        (server.request("POST", "/api/exports", token=ta, json_body=["csv"]), 400, "bad_request"),
        (server.request("HEAD", "/api/data/public.portal_bulk?format=csv", token=ta), 405, None),
    ]
    for reply, status, code in cases:
        assert reply.status == status and reply.headers["content-type"] == "application/json", reply.body
        if code is not None:  # (a HEAD answer has no body)
            assert reply.json()["error"]["code"] == code, reply.body
    rows = audit_since(dsn, mark)
    assert [r["status"] for r in rows] == ["refused"] * len(cases)
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT count(*) FROM drp.portal_exports").fetchone()[0] == jobs_before


def test_rate_limit_and_stream_cap_answer_429_with_retry_after(rig: dict[str, Any]) -> None:
    server, ta, tb = rig["server"], rig["tokens"]["a"], rig["tokens"]["b"]
    portal = server.portal
    limiter, slots = portal.limiter, portal.slots
    try:
        portal.limiter = RateLimiter(2)
        assert [server.get("/api/clinic", ta).status for _ in range(3)] == [200, 200, 429]
        limited = server.get("/api/clinic", ta)
        assert limited.json()["error"]["code"] == "rate_limited" and int(limited.headers["retry-after"]) >= 1
        assert server.get("/api/clinic", tb).status == 200  # per clinic
        portal.limiter, portal.slots = limiter, StreamSlots(1)
        held = server.raw("/api/data/public.portal_bulk?format=csv", ta)
        assert read_head(held)[0] == 200
        busy = server.get("/api/data/public.patients?format=csv", tb)
        assert busy.status == 429 and busy.json()["error"]["code"] == "too_busy" and busy.headers["retry-after"]
        held.close()
        wait_for(lambda: portal.slots.active == 0, timeout=30, what="the slot back", interval=0.1)
        assert server.get("/api/data/public.clinics?format=csv", tb).status == 200
    finally:
        portal.limiter, portal.slots = limiter, slots


def test_requests_without_a_valid_credential_are_limited_per_address(rig: dict[str, Any]) -> None:
    dsn, ta = rig["dsn"], rig["tokens"]["a"]
    server = PortalServer(load_settings(env={**rig["env"], **drp_env(portal_unauthenticated_per_minute=3)}))
    unknown = "drpt.pt_0123456789ab." + "Z" * 43  # well shaped, never issued
    in_query = "drpt.pt_ba9876543210." + "Q" * 43
    mark = last_audit_id(dsn)
    try:
        # A flood from one address: no token, a malformed one, an unknown one (header, then sign-in body) ...
        flood = [server.get("/api/clinic"), server.get("/api/exports", "drpt.garbage"),
                 server.get(f"/api/clinic?access_token={in_query}", unknown),
                 server.request("POST", "/api/session", json_body={"token": unknown}),
                 server.get("/api/clinic", unknown),
                 server.request("POST", "/sign-in", body=f"token={unknown}".encode(),
                                headers={"Content-Type": "application/x-www-form-urlencoded"})]
        assert [r.status for r in flood] == [401, 401, 401, 429, 429, 429]
        for limited in flood[3:5]:
            assert limited.json()["error"]["code"] == "unauthenticated_rate_limited"
            assert 1 <= int(limited.headers["retry-after"]) <= 60
        assert b"Too many requests without a valid token" in flood[5].body and flood[5].headers["retry-after"]
        # ... never refuses a valid credential from that address, nor a stranger elsewhere.
        assert server.get("/api/clinic", ta).status == 200
        assert server.get("/api/clinic", unknown, source="127.0.0.2").status == 401
    finally:
        server.stop()
    rows = audit_since(dsn, mark)
    assert [r["status"] for r in rows] == ["refused"] * 6 + ["granted", "refused"]
    assert [r["client_address"] for r in rows] == ["127.0.0.1"] * 7 + ["127.0.0.2"]
    assert all(r["tenant_ids"] == [] and r["credential_id"] is None for r in rows[:6])
    assert "without a valid credential" in rows[4]["error"]
    assert rows[2]["request"] == "GET /api/clinic?access_token=drpt.<redacted>"
    with psycopg.connect(dsn) as conn:  # the bad tokens are nowhere in the audit, not even the one in the URL
        text = conn.execute("SELECT string_agg(to_jsonb(a)::text, '') FROM drp.export_audit a WHERE id > %s",
                            (mark,)).fetchone()[0]
    assert unknown[8:] not in text and in_query[8:] not in text and "garbage" not in text


def test_tokens_from_the_cli_are_stored_hashed_and_revocable(rig: dict[str, Any]) -> None:
    server, dsn, env = rig["server"], rig["dsn"], rig["env"]
    created = drp("portal", "token", "create", "--clinic", B, "--expires", "2h", "--label", "cli", "--json", env=env)
    assert created.returncode == 0, created.stderr
    made = json.loads(created.stdout)
    assert server.get("/api/clinic", made["token"]).json()["name"] == rig["names"][B]
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT to_jsonb(t)::text, token_sha256 FROM drp.portal_tokens t WHERE token_id = %s",
                           (made["token_id"],)).fetchone()
        audit_text = conn.execute("SELECT coalesce(string_agg(to_jsonb(a)::text, ''), '') FROM drp.export_audit a"
                                  ).fetchone()[0]
    assert made["token"] not in row[0] and made["token"].split(".")[2] not in audit_text
    assert row[1] == hashlib.sha256(made["token"].encode()).hexdigest()
    listed = drp("portal", "token", "list", "--clinic", B, "--json", env=env)
    assert made["token"] not in listed.stdout and made["token_id"] in listed.stdout
    assert drp("portal", "token", "revoke", made["token_id"], env=env).returncode == 0
    assert server.get("/api/clinic", made["token"]).json()["error"]["code"] == "token_revoked"
    unknown = drp("portal", "token", "create", "--clinic", "999", env=env)
    assert unknown.returncode == 4 and "999" in unknown.stderr and "Traceback" not in unknown.stderr


def test_openapi_describes_every_route_and_errors_are_json(rig: dict[str, Any]) -> None:
    server = rig["server"]
    doc = server.get("/openapi.json").json()
    documented = set(doc["paths"])
    served = {r.path for r in ROUTES} - {"/api/{rest:path}"}
    assert served == documented
    assert server.get("/api/health").json()["status"] == "ok"
    nowhere = server.get("/nowhere")
    assert nowhere.status == 404 and nowhere.json()["error"]["code"] == "not_found"


def test_drp_portal_serve_says_where_it_listens_and_logs_no_secret(rig: dict[str, Any]) -> None:
    port = free_port()
    proc = subprocess.Popen([str(Path(sys.executable).parent / "drp"), "portal", "serve", "--port", str(port)],
                            env={**os.environ, **rig["env"]}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip() == f"drp portal listening on http://127.0.0.1:{port} (API description: /openapi.json)"
        health = wait_for(lambda: json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health",
                                                                    timeout=5).read()), timeout=30,
                          what="the portal", interval=0.1)
        assert health["status"] == "ok"
    finally:
        proc.terminate()
        rest = proc.communicate(timeout=30)[0]
    assert SECRET not in line + rest and rig["tokens"]["a"] not in rest
