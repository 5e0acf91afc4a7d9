"""The clinic administrator's web page: server-rendered HTML over the portal's own endpoint handlers.

Works without JavaScript; nothing from another origin (a strict Content-Security-Policy says so). Each page
route runs through the API's wrapper (``routes.endpoint``: credential, rate limit, audit row) and
calls the JSON handlers in-process (``routes.clinic``, ``exports_list``, ``exports_create``,
``export_status``, ``session_create``/``session_delete``), so the page has no scope, isolation or
audit logic of its own: it renders what the API answers. An API refusal keeps its HTTP status and
is shown as a readable message in a ``role="alert"`` region; a sign-in with a bad token redisplays
the form with the field marked invalid and described by the message.

The session is the API's HttpOnly, SameSite=Strict cookie (``POST /api/session``'s), so downloads
are plain links to ``/api/exports/{job}/files/{name}``; a cross-site form cannot post as the
clinic, and a form whose Origin is another site is refused (login CSRF). An export's page follows the job: a small same-origin script (``/page.js``) asks
``GET /api/exports/{job}`` and updates the status region in place (a screen reader hears the
change, focus stays), reloading once when the job ends so the files appear; without JavaScript
a ``<meta http-equiv="refresh">`` in ``<noscript>`` reloads the page instead.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from html import escape
from typing import Any
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from dr_pipelines.core.health.report import human_size
from dr_pipelines.portal import routes
from dr_pipelines.portal.errors import PortalError

REFRESH_SECONDS = 2  # an export's page asks for the job's state this often while it is queued or running
FORMAT_LABELS = {"csv": "CSV (spreadsheets)", "jsonl": "JSON Lines (one JSON document per row)",
                 "parquet": "Parquet (analytics tools)"}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; script-src 'self'; connect-src 'self'; "
                               "img-src 'self'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",  # no-referrer would make Chromium send "Origin: null" with our own forms
    "Cache-Control": "no-store",
}
STATE_TEXT = {"queued": "this page follows the export until it is done.",
              "running": "this page follows the export until it is done.",
              "succeeded": "the files are ready to download below.",
              "failed": "nothing was kept; you can request it again.",
              "expired": "its files were deleted after their time-to-live; request a new export."}
# What a person reads for the API's refusal codes (the API's own message follows as the detail).
READABLE = {
    "no_token": "Please sign in with your clinic's token.",
    "token_malformed": "That is not a clinic token. Paste the whole token your operator gave you.",
    "bad_request": "That request was not understood.",
    "no_format": "Choose at least one format.",
    "token_unknown": "This token was not accepted. Check that you pasted all of it, or ask your operator for a new one.",
    "token_revoked": "This token was revoked. Ask your operator for a new one.",
    "token_expired": "This token has expired. Ask your operator for a new one.",
    "token_bad_signature": "This token was not accepted. Sign in again from your clinic software.",
    "rate_limited": "Too many requests for your clinic just now.",
    "unauthenticated_rate_limited": "Too many requests without a valid token came from your network just now. "
                                    "Wait a minute, then sign in with your clinic's token.",
    "export_rate_limited": "Your clinic has requested the most exports allowed in an hour.",
    "too_busy": "The export service is busy.",
    "unknown_table": "One of the chosen tables is not part of your clinic's data.",
    "unknown_format": "One of the chosen formats is not offered.",
    "not_found": "There is nothing here for your clinic.",
    "expired": "This export has expired and its files were deleted.",
    "clinic_unknown": "Your clinic was not found.",
    "body_too_large": "The form sent too much data.",
    "cross_site": "This form was sent from another web site and was refused.",
}


# -- rendering ------------------------------------------------------------------------------------


def esc(value: object) -> str:
    return escape("" if value is None else str(value), quote=True)


def document(title: str, body: str, *, status: int = 200, refresh: bool = False) -> HTMLResponse:
    """A whole page: the shell, the stylesheet (same origin), the security headers."""
    meta = (f'<noscript><meta http-equiv="refresh" content="{REFRESH_SECONDS}"></noscript>'
            '<script src="/page.js" defer></script>') if refresh else ""
    html = (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">{meta}'
            f'<title>{esc(title)} · clinic data export</title><link rel="stylesheet" href="/page.css"></head>'
            f'<body><a class="skip" href="#main">Skip to content</a>{body}</body></html>\n')
    return HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)


def alert(problem: dict[str, Any], *, signing_in: bool = False) -> str:
    """An API error as a readable message, announced to screen readers when the page loads. At sign-in the API's
    fix (about Authorization headers) is left out: the readable line says what a person does."""
    code = problem.get("code", "")
    readable = READABLE.get(code, "The request could not be completed.")
    detail = problem.get("message") or ""
    fix = problem.get("fix") or ""
    return (f'<div class="alert" role="alert" id="problem"><p><strong>{esc(readable)}</strong></p>'
            f'<p class="detail">{esc(detail)}{" — " + esc(fix) if fix and not signing_in else ""}</p></div>')


def sign_in_page(problem: dict[str, Any] | None = None, status: int = 200) -> HTMLResponse:
    invalid = ' aria-invalid="true"' if problem else ""
    described = "token-help problem" if problem else "token-help"
    body = (
        '<main id="main" class="narrow"><h1>Clinic data export</h1>'
        f'{alert(problem, signing_in=True) if problem else ""}'
        '<form method="post" action="/sign-in" class="card">'
        '<label for="token">Clinic token</label>'
        f'<input id="token" name="token" type="password" autocomplete="off" spellcheck="false" required'
        f' aria-describedby="{described}"{invalid}>'
        '<p id="token-help" class="help">The token your operator issued for your clinic '
        '(it starts with <code>drpt.</code>). It signs you in to your clinic only.</p>'
        '<button type="submit">Sign in</button></form></main>')
    return document("Sign in", body, status=status)


def header(clinic: dict[str, Any]) -> str:
    cred = clinic["credential"]
    return (f'<header><p>Clinic <strong id="clinic-name">{esc(clinic.get("name") or clinic["clinic_id"])}</strong>'
            f' <span class="muted">(id {esc(clinic["clinic_id"])}; token {esc(cred["id"])}, valid until'
            f' {esc(when(cred["expires_at"]))})</span></p>'
            '<form method="post" action="/sign-out"><button type="submit" class="secondary">Sign out</button></form>'
            '</header>')


def when(iso: str | None) -> str:
    if not iso:
        return "—"
    return datetime.fromisoformat(iso).strftime("%Y-%m-%d %H:%M UTC")


def size(value: int | None) -> str:
    return "—" if value is None else human_size(value)


def export_form(clinic: dict[str, Any]) -> str:
    formats = "".join(
        f'<div class="choice"><input type="checkbox" id="format-{esc(f)}" name="format" value="{esc(f)}"'
        f'{" checked" if f == "csv" else ""}><label for="format-{esc(f)}">{esc(FORMAT_LABELS.get(f, f))}</label></div>'
        for f in clinic["export_formats"])
    tables = "".join(
        f'<div class="choice"><input type="checkbox" id="table-{i}" name="table" value="{esc(t)}">'
        f'<label for="table-{i}">{esc(t)}</label></div>' for i, t in enumerate(clinic["tables"]))
    return (
        '<form method="post" action="/exports" class="card" aria-labelledby="request-heading">'
        '<h2 id="request-heading">Request an export</h2>'
        f'<fieldset><legend>Formats</legend>{formats}</fieldset>'
        '<fieldset><legend>Tables</legend><p id="tables-help" class="help">Leave every box empty to export all '
        f'{len(clinic["tables"])} tables.</p><div class="tables" aria-describedby="tables-help">{tables}</div></fieldset>'
        '<div class="choice"><input type="checkbox" id="zip" name="zip" value="1">'
        '<label for="zip">Also as one zip file</label></div>'
        '<button type="submit">Request export</button></form>')


def exports_table(exports: list[dict[str, Any]]) -> str:
    if not exports:
        return '<p id="no-exports">No exports yet.</p>'
    rows = "".join(
        f'<tr><td><a href="/exports/{esc(e["job_id"])}">{esc(when(e["requested_at"]))}</a></td>'
        f'<td class="state state-{esc(e["state"])}">{esc(e["state"])}</td><td>{esc(", ".join(e["formats"]))}</td>'
        f'<td>{esc(", ".join(e["tables"]) or "all")}</td><td class="num">{esc(e["rows"] if e["rows"] is not None else "—")}</td>'
        f'<td class="num">{esc(size(e["bytes"]))}</td></tr>' for e in exports)
    return ('<table id="past-exports"><caption>Past exports (newest first)</caption><thead><tr>'
            '<th scope="col">Requested</th><th scope="col">State</th><th scope="col">Formats</th>'
            '<th scope="col">Tables</th><th scope="col">Rows</th><th scope="col">Size</th></tr></thead>'
            f'<tbody>{rows}</tbody></table>')


def export_view(clinic: dict[str, Any], job: dict[str, Any]) -> HTMLResponse:
    state = job["state"]
    running = state in ("queued", "running")
    lines = [f'<p id="export-state" role="status" aria-live="polite" data-job="{esc(job["job_id"])}"'
             f' data-state="{esc(state)}" data-refresh="{REFRESH_SECONDS}">Status: <strong>{esc(state)}</strong>'
             f' — <span>{esc(STATE_TEXT.get(state, ""))}</span></p>']
    if running:
        lines.append('<progress aria-labelledby="export-state"></progress>')
    if state == "failed":
        lines.append(f'<div class="alert" role="alert"><p><strong>The export failed.</strong></p>'
                     f'<p class="detail">{esc(job.get("error"))}</p></div>')
    if state == "expired":
        lines.append(alert({"code": "expired"}))
    if job.get("files"):
        files = "".join(
            f'<tr><td><a href="{esc(f["href"])}" download>{esc(f["name"])}</a></td><td>{esc(f["format"])}</td>'
            f'<td class="num">{esc(size(f["bytes"]))}</td><td><code>{esc(f["sha256"])}</code></td></tr>'
            for f in job["files"])
        lines.append('<table id="files"><caption>Files (each checked against its SHA-256 as it downloads)</caption>'
                     '<thead><tr><th scope="col">Download</th><th scope="col">Format</th><th scope="col">Size</th>'
                     f'<th scope="col">SHA-256</th></tr></thead><tbody>{files}</tbody></table>')
        counts = "".join(f'<tr><td>{esc(t["table"])}</td><td class="num">{esc(t["rows"])}</td></tr>'
                         for t in job.get("tables") or [])
        lines.append(f'<table id="tables"><caption>Rows per table</caption><thead><tr><th scope="col">Table</th>'
                     f'<th scope="col">Rows</th></tr></thead><tbody>{counts}</tbody></table>')
        if job.get("expires_at"):
            lines.append(f'<p>The files are deleted after {esc(when(job["expires_at"]))}.</p>')
    body = (f'{header(clinic)}<main id="main"><p><a href="/">← Back to your exports</a></p>'
            f'<h1>Export requested {esc(when(job["requested_at"]))}</h1>'
            f'<p class="muted">Formats: {esc(", ".join(job["formats"]))}; tables: {esc(requested_tables(job))}</p>'
            f'{"".join(lines)}</main>')
    return document(f"Export {job['job_id']}", body, refresh=running)


def requested_tables(job: dict[str, Any]) -> str:
    """The tables asked for; once the export succeeded the API's ``tables`` are the manifest's counts instead."""
    names = [t if isinstance(t, str) else t["table"] for t in job.get("tables") or []]
    return ", ".join(names) or "all"


def error_page(problem: dict[str, Any], status: int) -> HTMLResponse:
    body = (f'<main id="main" class="narrow"><h1>Clinic data export</h1>{alert(problem)}'
            '<p><a href="/">Back to your exports</a></p></main>')
    return document("Problem", body, status=status)


# -- the routes -----------------------------------------------------------------------------------


def api_json(response: Response) -> Any:
    return json.loads(bytes(response.body))


def problem_of(response: Response) -> dict[str, Any]:
    try:
        return api_json(response)["error"]
    except (ValueError, KeyError, TypeError):
        return {"code": "internal", "message": f"HTTP {response.status_code}"}


def form_fields(call: routes.Call) -> dict[str, list[str]]:
    """The posted form (read before the handler ran; a too-large body is refused here, inside the audit)."""
    error = getattr(call.request.state, "form_error", None)
    if error is not None:
        raise error
    return call.request.state.form


async def read_form(request: Request, limit: int) -> None:
    """Read an urlencoded form body, bounded by portal_max_body_bytes, into request.state."""
    request.state.form, request.state.form_error = {}, None
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > limit:
            request.state.form_error = PortalError(413, "body_too_large", f"the form is larger than {limit} bytes",
                                                   "send fewer fields")
            return
    try:
        request.state.form = parse_qs(data.decode(), keep_blank_values=True, max_num_fields=1000)
    except (UnicodeDecodeError, ValueError):
        request.state.form_error = PortalError(400, "bad_request", "the form is not valid", "submit the page's form")


def page(fn: Callable[[routes.Call], Response], *, authenticate: bool = True,
         on_error: Callable[[dict[str, Any], int], Response] = lambda p, s: error_page(p, s)) -> Callable[..., Any]:
    """A page route around ``fn`` through the API's wrapper; API errors come back as HTML from ``on_error``.
    A 401 (no, expired or revoked credential) always shows the sign-in form with the reason."""
    api = routes.endpoint(fn, authenticate=authenticate)

    async def handle(request: Request) -> Response:
        if request.method == "POST":
            await read_form(request, request.app.state.portal.settings.portal_max_body_bytes)
            origin = request.headers.get("origin")
            if origin is not None and origin != f"{request.url.scheme}://{request.url.netloc}":
                # A form posted from another site (login CSRF; the session cookie is SameSite=Strict anyway).
                request.state.form_error = PortalError(403, "cross_site", f"a form from {origin[:100]} was refused",
                                                       "use the page itself")
        response = await api(request)
        if response.status_code < 400:
            return response
        problem = problem_of(response)
        shown = sign_in_page(problem, response.status_code) if response.status_code == 401 \
            else on_error(problem, response.status_code)
        for key, value in response.headers.items():
            if key.lower() == "retry-after":
                shown.headers["Retry-After"] = value
        if response.status_code == 401:
            shown.delete_cookie(routes.COOKIE, path="/", httponly=True, samesite="strict")
        return shown

    return handle


def redirect_with_cookies(api_response: Response, to: str) -> RedirectResponse:
    """A 303 to ``to`` carrying the Set-Cookie headers of the API's answer (the session)."""
    out = RedirectResponse(to, status_code=303, headers={"Cache-Control": "no-store"})
    out.raw_headers.extend((k, v) for k, v in api_response.raw_headers if k == b"set-cookie")
    return out


def _home(call: routes.Call) -> Response:
    clinic = api_json(routes.clinic(call))
    (exports,) = api_json(routes.exports_list(call)).values()  # GET /api/exports: one field, the list
    body = (f'{header(clinic)}<main id="main"><h1>Data export for {esc(clinic.get("name") or clinic["clinic_id"])}'
            f'</h1>{export_form(clinic)}<section aria-labelledby="past-heading"><h2 id="past-heading">Your exports</h2>'
            f'{exports_table(exports)}</section></main>')
    return document("Your exports", body)


_home_page = page(_home)


async def home(request: Request) -> Response:
    """The sign-in form without a session (no audit row for a bare visit), the clinic's page with one."""
    if routes.COOKIE not in request.cookies:
        return sign_in_page()
    return await _home_page(request)


def _sign_in(call: routes.Call) -> Response:
    token = (form_fields(call).get("token") or [""])[0].strip()
    if not token:
        raise PortalError(400, "token_malformed", "no token was entered", "paste the token")
    call.payload = {"token": token}
    return redirect_with_cookies(routes.session_create(call), "/")


def _sign_out(call: routes.Call) -> Response:
    form_fields(call)  # refuses a cross-site post
    return redirect_with_cookies(routes.session_delete(call), "/")


def _request_export(call: routes.Call) -> Response:
    fields = form_fields(call)
    formats = fields.get("format") or []
    if not formats:
        raise PortalError(400, "no_format", "no format was chosen", "tick at least one format")
    call.payload = {"formats": formats, "tables": fields.get("table") or [], "zip": (fields.get("zip") or [""])[0] == "1"}
    job = api_json(routes.exports_create(call))
    return RedirectResponse(f"/exports/{job['job_id']}", status_code=303)


def _export(call: routes.Call) -> Response:
    job = api_json(routes.export_status(call))
    return export_view(api_json(routes.clinic(call)), job)


async def stylesheet(_request: Request) -> Response:
    return Response(CSS, media_type="text/css", headers={"Cache-Control": "max-age=3600"})


async def script(_request: Request) -> Response:
    return Response(JS, media_type="text/javascript", headers={"Cache-Control": "max-age=3600"})


ROUTES = [
    Route("/", home, methods=["GET"]),
    Route("/sign-in", page(_sign_in, authenticate=False, on_error=lambda p, s: sign_in_page(p, s)), methods=["POST"]),
    Route("/sign-out", page(_sign_out, authenticate=False), methods=["POST"]),
    Route("/exports", page(_request_export), methods=["POST"]),
    Route("/exports/{job_id}", page(_export), methods=["GET"]),
    Route("/page.css", stylesheet, methods=["GET"]),
    Route("/page.js", script, methods=["GET"]),
]

# The export page's follower (progressive: the page works without it). Updates the status region in place while
# the state is queued or running; reloads when it changes to anything else (files, error) or the session ends.
JS = """
(function () {
  var status = document.getElementById("export-state");
  if (!status || !status.dataset.job) return;
  var every = Number(status.dataset.refresh || 2) * 1000;
  var following = {queued: true, running: true};
  function poll() {
    fetch("/api/exports/" + encodeURIComponent(status.dataset.job), {credentials: "same-origin"})
      .then(function (r) { return r.ok ? r.json() : {state: "reload"}; })
      .then(function (job) {
        if (!following[job.state]) { window.location.reload(); return; }
        if (job.state !== status.dataset.state) {
          status.dataset.state = job.state;
          status.querySelector("strong").textContent = job.state;
        }
        window.setTimeout(poll, every);
      }, function () { window.setTimeout(poll, every); });
  }
  window.setTimeout(poll, every);
})();
"""

CSS = """
:root { font-family: system-ui, sans-serif; color: #1b1f24; background: #f6f7f9; line-height: 1.45; }
body { margin: 0; }
.skip { position: absolute; left: -999px; } .skip:focus { left: 1rem; top: 1rem; background: #fff; padding: .5rem; }
header { display: flex; justify-content: space-between; align-items: center; padding: .5rem 1.5rem;
         background: #fff; border-bottom: 1px solid #d8dde3; }
header p { margin: 0; } header form { margin: 0; }
main { max-width: 60rem; margin: 1.5rem auto; padding: 0 1.5rem; } main.narrow { max-width: 32rem; }
h1 { font-size: 1.6rem; } h2 { font-size: 1.2rem; margin-top: 0; }
.card { background: #fff; border: 1px solid #d8dde3; border-radius: 8px; padding: 1.25rem; margin-bottom: 1.5rem; }
label { font-weight: 600; } .choice label { font-weight: 400; margin-left: .35rem; }
input[type=password] { display: block; width: 100%; box-sizing: border-box; padding: .5rem; margin: .35rem 0;
                       font: inherit; border: 1px solid #8a939e; border-radius: 4px; }
input[aria-invalid=true] { border: 2px solid #b3261e; }
fieldset { border: 1px solid #d8dde3; border-radius: 6px; margin: 0 0 1rem; }
.tables { max-height: 14rem; overflow: auto; columns: 2; }
button { font: inherit; padding: .45rem 1.1rem; border-radius: 4px; border: 1px solid #0b57d0; background: #0b57d0;
         color: #fff; cursor: pointer; } button.secondary { background: #fff; color: #0b57d0; }
button:focus-visible, a:focus-visible, input:focus-visible { outline: 3px solid #f29900; outline-offset: 2px; }
.help code { word-break: normal; white-space: nowrap; }
.help, .muted, .detail { color: #4a525c; font-size: .92rem; }
.alert { border: 2px solid #b3261e; background: #fdecea; border-radius: 6px; padding: .25rem 1rem; margin: 1rem 0; }
table { border-collapse: collapse; width: 100%; background: #fff; margin-bottom: 1.5rem; }
caption { text-align: left; font-weight: 600; padding: .4rem 0; }
th, td { text-align: left; padding: .35rem .6rem; border-bottom: 1px solid #e3e6ea; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; } code { font-size: .8rem; word-break: break-all; }
.state-succeeded { color: #146c2e; } .state-failed, .state-expired { color: #b3261e; }
progress { width: 100%; }
"""
