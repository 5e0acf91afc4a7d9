"""The clinic administrator's export page in a real browser (Chromium through Playwright) against the real portal.

One portal server and one copy of the demo database for the module. A clinic administrator signs in
with the clinic's token, sees the clinic's name, requests a CSV export of one table, watches it finish,
downloads the file and finds exactly the database's rows of that clinic; a wrong token is refused with
a readable message (and an audit row); clinic A's session, editing URLs, gets 404 for clinic B's export
page, its status and its files, and no byte of B's data.
"""

from __future__ import annotations

import csv
import io
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from dr_pipelines.core.pg.cluster import LocalCluster
from dr_pipelines.core.settings import load_settings
from dr_pipelines.portal.tokens import create_token, revoke_token
from dr_pipelines_tests.support.browser import needs_chromium, screenshot
from dr_pipelines_tests.support.env import drp_env
from dr_pipelines_tests.support.portal import PortalServer
from dr_pipelines_tests.support.procs import wait_for

pytestmark = needs_chromium
A, B = "1", "2"
TABLE = "public.patients"


@pytest.fixture(scope="module")
def rig(pg_cluster: LocalCluster, demo_template: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    name = f"page_{uuid.uuid4().hex[:10]}"
    dsn = pg_cluster.create_database(name, template=demo_template)
    root = tmp_path_factory.mktemp("page")
    server = PortalServer(load_settings(env=drp_env(source=dsn, storage=root / "store", work=root / "work",
                                                    export_max_per_hour=0)))
    with psycopg.connect(dsn, autocommit=True) as conn:
        soon = datetime.now(UTC) + timedelta(days=1)
        tokens = {c: create_token(conn, c, expires_at=soon, created_by="test")[1] for c in (A, B)}
        names = dict(conn.execute("SELECT id::text, name FROM clinics").fetchall())
    try:
        yield {"dsn": dsn, "server": server, "url": f"http://127.0.0.1:{server.port}", "tokens": tokens,
               "names": names, "root": root}
    finally:
        server.stop()
        pg_cluster.drop_database(name)


@pytest.fixture(params=[True], ids=["js"])
def page(browser: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A fresh browser context (no cookies) per test, at a README-sized viewport; no console errors allowed
    (a script or style the CSP blocked, a failed request the page made)."""
    context = browser.new_context(viewport={"width": 1100, "height": 800}, accept_downloads=True,
                                  java_script_enabled=request.param)
    errors: list[str] = []
    pg = context.new_page()
    pg.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    yield pg
    context.close()
    assert [e for e in errors if "401" not in e and "404" not in e and "400" not in e and "403" not in e] == []


def sign_in(page: Any, url: str, token: str) -> Any:
    page.goto(url + "/")
    page.get_by_label("Clinic token").fill(token)
    with page.expect_navigation():
        page.get_by_role("button", name="Sign in").click()
    return page


def unlabelled_fields(page: Any) -> list[str]:
    """Form fields a screen reader would announce without a name (no <label> tied to them)."""
    return page.eval_on_selector_all(
        "input:not([type=hidden]), select, textarea, button",
        "els => els.filter(e => e.tagName === 'BUTTON' ? !e.textContent.trim() : e.labels.length === 0)"
        ".map(e => e.outerHTML)")


def db_rows(dsn: str, clinic: str) -> list[list[str]]:
    """The clinic's patients as the export renders CSV (COPY's CSV in UTC/ISO), header first."""
    with psycopg.connect(dsn) as conn:
        conn.execute("SET TimeZone = 'UTC'; SET DateStyle = 'ISO'; SET IntervalStyle = 'postgres'")
        conn.execute("SET extra_float_digits = 3")
        buf = io.BytesIO()
        with conn.cursor().copy("COPY (SELECT * FROM public.patients WHERE clinic_id = %s) TO STDOUT"
                                " WITH (FORMAT csv, HEADER)", (int(clinic),)) as copy:
            for chunk in copy:
                buf.write(chunk)
    return list(csv.reader(io.StringIO(buf.getvalue().decode())))


def audit_rows(dsn: str, after: int) -> list[dict[str, Any]]:
    with psycopg.connect(dsn) as conn:
        cur = conn.execute("SELECT id, status, request, tenant_ids, error FROM drp.export_audit WHERE id > %s"
                           " ORDER BY id", (after,))
        return [dict(zip([d.name for d in cur.description], r, strict=True)) for r in cur.fetchall()]


def last_audit(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT coalesce(max(id), 0) FROM drp.export_audit").fetchone()[0]


@pytest.mark.parametrize("page", [True, False], ids=["js", "no-js"], indirect=True)
def test_sign_in_request_export_watch_download_and_check_rows(rig: dict[str, Any], page: Any, tmp_path: Path) -> None:
    """With JavaScript the export page follows the job through the API; without, it refreshes itself."""
    url, dsn = rig["url"], rig["dsn"]
    page.goto(url + "/")
    assert page.get_by_role("heading", name="Clinic data export").is_visible()
    screenshot(page, "portal-sign-in", tmp_path)
    sign_in(page, url, rig["tokens"][A])
    name = rig["names"][A]
    assert page.get_by_role("heading", name=f"Data export for {name}").is_visible()
    assert page.locator("#clinic-name").inner_text() == name
    assert rig["names"][B] not in page.content()
    earlier = page.locator("#past-exports tbody tr").count()
    assert earlier > 0 or page.get_by_text("No exports yet.").is_visible()

    assert page.get_by_label("CSV (spreadsheets)").is_checked()
    assert unlabelled_fields(page) == []
    page.get_by_label(TABLE, exact=True).check()
    screenshot(page, "portal-request", tmp_path)
    with page.expect_navigation():
        page.get_by_role("button", name="Request export").click()
    assert "/exports/job_" in page.url
    # The page refreshes itself while the export runs; wait for the finished state.
    page.get_by_role("link", name=f"{TABLE}.csv").wait_for(timeout=60_000)
    assert "succeeded" in page.locator("#export-state").inner_text()
    assert page.locator("#tables").inner_text().count(TABLE) == 1
    screenshot(page, "portal-export-done", tmp_path)

    with page.expect_download() as download:
        page.get_by_role("link", name=f"{TABLE}.csv").click()
    saved = tmp_path / "downloaded.csv"
    download.value.save_as(saved)
    assert download.value.suggested_filename == f"{TABLE}.csv"
    got = list(csv.reader(io.StringIO(saved.read_text())))
    expected = db_rows(dsn, A)
    assert got[0] == expected[0]  # the same columns in the same order
    assert len(got) > 10 and sorted(got[1:]) == sorted(expected[1:])  # exactly clinic A's rows, each as stored
    clinic_col = got[0].index("clinic_id")
    assert {row[clinic_col] for row in got[1:]} == {A}
    rows_shown = page.locator("#tables td.num").first.inner_text()
    assert int(rows_shown.replace(",", "")) == len(expected) - 1

    page.get_by_role("link", name="Back to your exports").click()
    past = page.locator("#past-exports tbody tr")
    assert past.count() == earlier + 1  # newest first: this one
    assert "succeeded" in past.first.inner_text() and TABLE in past.first.inner_text()
    screenshot(page, "portal-home", tmp_path, full_page=True)


@pytest.mark.parametrize(("wrong", "readable"), [
    ("mistyped", "This token was not accepted"),  # clinic A's token with its secret part altered
    ("not a token at all", "That is not a clinic token"),
])
def test_wrong_token_is_refused_with_a_readable_message(rig: dict[str, Any], page: Any, wrong: str, readable: str,
                                                         tmp_path: Path) -> None:
    token = rig["tokens"][A][:-6] + ("AAAAAA" if not rig["tokens"][A].endswith("AAAAAA") else "BBBBBB") \
        if wrong == "mistyped" else wrong
    before = last_audit(rig["dsn"])
    sign_in(page, rig["url"], token)
    message = page.get_by_role("alert")
    assert readable in message.inner_text()
    field = page.get_by_label("Clinic token")
    assert field.get_attribute("aria-invalid") == "true"
    assert "problem" in field.get_attribute("aria-describedby").split()  # the message describes the field
    assert all(n not in page.content() for n in rig["names"].values())  # no clinic's name shown
    assert not [c for c in page.context.cookies() if c["name"] == "drp_portal"]
    (row,) = audit_rows(rig["dsn"], before)
    assert row["status"] == "refused" and row["request"] == "POST /sign-in" and row["tenant_ids"] == []
    if "not accepted" in readable:
        screenshot(page, "portal-wrong-token", tmp_path)


def test_clinic_a_cannot_reach_clinic_b_exports_by_editing_urls(rig: dict[str, Any], page: Any) -> None:
    url, server = rig["url"], rig["server"]
    created = server.request("POST", "/api/exports", token=rig["tokens"][B],
                             json_body={"formats": ["csv"], "tables": [TABLE]})
    assert created.status == 202, created.body
    b_job = created.json()["job_id"]

    def b_done() -> dict[str, Any] | None:
        job = server.get(f"/api/exports/{b_job}", rig["tokens"][B]).json()
        return job if job["state"] == "succeeded" else None

    b_files = [f["href"] for f in wait_for(b_done, timeout=60, what="clinic B's export", interval=0.2)["files"]]
    with psycopg.connect(rig["dsn"]) as conn:
        b_names = [r[0] for r in conn.execute("SELECT family_name FROM patients WHERE clinic_id = %s"
                                              " AND family_name NOT IN (SELECT family_name FROM patients"
                                              " WHERE clinic_id = %s) LIMIT 20", (int(B), int(A))).fetchall()]
    assert b_names

    sign_in(page, url, rig["tokens"][A])
    assert b_job not in page.content()  # not listed among A's exports
    for path in [f"/exports/{b_job}", f"/api/exports/{b_job}", *b_files, f"/exports/..%2F{b_job}",
                 f"/exports/{b_job}/../{b_job}", "/api/exports/job_0000000000000000"]:
        response = page.goto(url + path)
        assert response.status in (403, 404), (path, response.status)
        text = page.content()
        assert b_job not in text, path
        assert not any(n in text for n in b_names), path
        assert rig["names"][B] not in text, path
    # The page itself explains it, readably.
    page.goto(url + f"/exports/{b_job}")
    assert "There is nothing here for your clinic." in page.get_by_role("alert").inner_text()


def test_export_form_without_a_format_gets_a_readable_message(rig: dict[str, Any], page: Any) -> None:
    sign_in(page, rig["url"], rig["tokens"][A])
    before = last_audit(rig["dsn"])
    page.get_by_label("CSV (spreadsheets)").uncheck()
    with page.expect_navigation() as nav:
        page.get_by_role("button", name="Request export").click()
    assert nav.value.status == 400
    assert "Choose at least one format." in page.get_by_role("alert").inner_text()
    (row,) = audit_rows(rig["dsn"], before)  # refused and recorded; no export queued
    assert row["status"] == "refused" and row["request"] == "POST /exports" and row["tenant_ids"] == [A]
    page.get_by_role("link", name="Back to your exports").click()
    assert page.get_by_role("heading", name=f"Data export for {rig['names'][A]}").is_visible()


def test_a_form_posted_from_another_site_is_refused(rig: dict[str, Any]) -> None:
    """Login CSRF: another site's form cannot sign a browser in (or out); refused with 403 and audited."""
    server = rig["server"]
    before = last_audit(rig["dsn"])
    reply = server.request("POST", "/sign-in", body=f"token={rig['tokens'][A]}".encode(),
                           headers={"Content-Type": "application/x-www-form-urlencoded",
                                    "Origin": "http://evil.example"})
    assert reply.status == 403 and "set-cookie" not in reply.headers
    assert b"sent from another web site" in reply.body and b'role="alert"' in reply.body
    (row,) = audit_rows(rig["dsn"], before)
    assert row["status"] == "refused" and row["request"] == "POST /sign-in"


def test_a_revoked_token_ends_the_session_with_the_reason(rig: dict[str, Any], page: Any) -> None:
    with psycopg.connect(rig["dsn"], autocommit=True) as conn:
        token_id, token = create_token(conn, A, expires_at=datetime.now(UTC) + timedelta(hours=1), created_by="test")
    sign_in(page, rig["url"], token)
    assert page.locator("#clinic-name").inner_text() == rig["names"][A]
    with psycopg.connect(rig["dsn"], autocommit=True) as conn:
        assert revoke_token(conn, token_id, revoked_by="test")
    response = page.reload()
    assert response.status == 401
    assert "This token was revoked. Ask your operator for a new one." in page.get_by_role("alert").inner_text()
    assert rig["names"][A] not in page.content() and unlabelled_fields(page) == []
    assert not [c for c in page.context.cookies() if c["name"] == "drp_portal"]  # the dead session is cleared


def test_an_edited_form_naming_a_table_outside_the_scope_is_refused(rig: dict[str, Any], page: Any) -> None:
    """A table name changed in the form (developer tools): 404 unknown_table, a readable page, no job queued."""
    sign_in(page, rig["url"], rig["tokens"][A])
    page.eval_on_selector(f"input[value='{TABLE}']", "e => { e.value = 'drp.portal_tokens'; e.checked = true; }")
    with page.expect_navigation() as nav:
        page.get_by_role("button", name="Request export").click()
    assert nav.value.status == 404
    assert "One of the chosen tables is not part of your clinic's data." in page.get_by_role("alert").inner_text()
    with psycopg.connect(rig["dsn"]) as conn:
        assert conn.execute("SELECT count(*) FROM drp.portal_exports WHERE 'drp.portal_tokens' = ANY (tables)"
                            ).fetchone()[0] == 0
