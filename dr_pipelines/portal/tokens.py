"""Clinic credentials: operator tokens (stored hashed in drp.portal_tokens) and the SaaS backend's signed tokens.

**Operator tokens** (``drp portal token create``): ``drpt.<token id>.<43 random characters>``
(256 bits from ``secrets``), shown once. Only their sha256 is stored, with the clinic id,
creator, creation, expiry and revocation. sha256 and not bcrypt/scrypt: a slow hash protects
guessable passwords; a 256-bit random token cannot be guessed or brute-forced from its
hash, and a slow hash on every request would be a CPU denial of service (and a dependency).
The lookup is by hash (an index), so there is no secret-dependent comparison in Python.

**Signed tokens** (the SaaS backend acting for a signed-in clinic administrator):
``drps.<key id>.<payload>.<signature>``; payload = base64url of JSON
``{"clinic": "7", "sub": "admin@example.org", "iat": 1764554400, "exp": 1764555300}``,
signature = base64url(HMAC-SHA256(secret, "drps.<key id>.<payload>")). Checked: the key id
is the configured one, the signature (constant time), ``exp`` in the future and at most
``portal_signed_token_max_seconds`` away, the clinic a string. No state: they cannot be
revoked, hence the short lifetime.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg.rows import dict_row

from dr_pipelines.core.errors import ConfigError
from dr_pipelines.core.pg.drp_schema import PORTAL_LOCK, PORTAL_TOKENS_DDL, ensure_table
from dr_pipelines.portal.errors import unauthorized

TOKEN_PREFIX = "drpt"
SIGNED_PREFIX = "drps"
_TOKEN_FORM = re.compile(r"^drpt\.(pt_[0-9a-f]{12})\.[A-Za-z0-9_-]{43}$")
_MAX_TOKEN_CHARS = 4096


@dataclass(frozen=True)
class Credential:
    """Who is asking: one clinic, by an operator token or a backend-signed token."""

    id: str  # pt_… for operator tokens; signed:<key id>:<hash prefix> for signed ones (audited)
    kind: str  # "token" or "signed"
    clinic_id: str
    subject: str  # the requester recorded in the audit
    expires_at: datetime

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "clinic_id": self.clinic_id, "subject": self.subject,
                "expires_at": self.expires_at.isoformat()}


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def ensure_tokens_table(conn: psycopg.Connection) -> None:
    ensure_table(conn, "drp.portal_tokens", PORTAL_TOKENS_DDL, PORTAL_LOCK)


def create_token(conn: psycopg.Connection, clinic_id: str, *, expires_at: datetime, created_by: str,
                 label: str = "") -> tuple[str, str]:
    """Store a new token of ``clinic_id`` (its hash only); return (token id, the token, to be shown once)."""
    if expires_at <= datetime.now(UTC):
        raise ConfigError(f"expiry {expires_at:%Y-%m-%d %H:%M} UTC is in the past", fix="pass a future expiry, e.g. 30d")
    ensure_tokens_table(conn)
    token_id = f"pt_{secrets.token_hex(6)}"
    token = f"{TOKEN_PREFIX}.{token_id}.{secrets.token_urlsafe(32)}"
    with conn.transaction():
        conn.execute("INSERT INTO drp.portal_tokens (token_id, token_sha256, clinic_id, label, created_by, expires_at)"
                     " VALUES (%s, %s, %s, %s, %s, %s)",
                     (token_id, _sha256(token), clinic_id, label, created_by, expires_at))
    return token_id, token


def list_tokens(conn: psycopg.Connection, clinic_id: str | None = None) -> list[dict[str, Any]]:
    """Every token's metadata (never a hash), newest first; of one clinic if given."""
    ensure_tokens_table(conn)
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            "SELECT token_id, clinic_id, label, created_by, created_at, expires_at, revoked_at, revoked_by,"
            " CASE WHEN revoked_at IS NOT NULL THEN 'revoked' WHEN expires_at <= clock_timestamp() THEN 'expired'"
            " ELSE 'active' END AS state FROM drp.portal_tokens WHERE %s::text IS NULL OR clinic_id = %s"
            " ORDER BY created_at DESC", (clinic_id, clinic_id)).fetchall()


def revoke_token(conn: psycopg.Connection, token_id: str, *, revoked_by: str) -> bool:
    """Revoke ``token_id``; False if there is no such token or it was already revoked."""
    ensure_tokens_table(conn)
    with conn.transaction():
        return conn.execute("UPDATE drp.portal_tokens SET revoked_at = clock_timestamp(), revoked_by = %s"
                            " WHERE token_id = %s AND revoked_at IS NULL", (revoked_by, token_id)).rowcount == 1


def check_operator_token(conn: psycopg.Connection, token: str) -> Credential:
    """The credential of an operator token, or a 401 PortalError (malformed, unknown, revoked, expired)."""
    if not _TOKEN_FORM.match(token):
        raise unauthorized("token_malformed", "the token is not a drp portal token")
    ensure_tokens_table(conn)
    row = conn.execute("SELECT token_id, clinic_id, created_by, label, expires_at, revoked_at, clock_timestamp()"
                       " FROM drp.portal_tokens WHERE token_sha256 = %s", (_sha256(token),)).fetchone()
    if row is None:
        raise unauthorized("token_unknown", "the token is not known (never issued, or mistyped)")
    token_id, clinic_id, created_by, label, expires_at, revoked_at, now = row
    if revoked_at is not None:
        raise unauthorized("token_revoked", f"token {token_id} was revoked")
    if expires_at <= now:
        raise unauthorized("token_expired", f"token {token_id} expired at {expires_at:%Y-%m-%d %H:%M} UTC")
    subject = f"portal token {token_id}" + (f" ({label})" if label else "") + f" by {created_by}"
    return Credential(token_id, "token", clinic_id, subject, expires_at)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign_token(secret: str, key_id: str, clinic_id: str, *, subject: str, lifetime_s: int,
               now: float | None = None) -> str:
    """What the SaaS backend does (a reference implementation; tests and the demo use it)."""
    iat = int(now if now is not None else time.time())
    payload = _b64(json.dumps({"clinic": str(clinic_id), "sub": subject, "iat": iat, "exp": iat + lifetime_s},
                              separators=(",", ":")).encode())
    signed = f"{SIGNED_PREFIX}.{key_id}.{payload}"
    return f"{signed}.{_b64(hmac.new(secret.encode(), signed.encode(), hashlib.sha256).digest())}"


def check_signed_token(token: str, *, secret: str | None, key_id: str, max_lifetime_s: int) -> Credential:
    """The credential of a backend-signed token, or a 401 PortalError."""
    parts = token.split(".")
    if len(parts) != 4 or parts[0] != SIGNED_PREFIX:
        raise unauthorized("token_malformed", "the signed token is not of the form drps.<key id>.<payload>.<signature>")
    if secret is None:
        raise unauthorized("signed_tokens_disabled", "this portal accepts no signed tokens (no signing secret set)")
    if not hmac.compare_digest(parts[1].encode(), key_id.encode()):
        raise unauthorized("token_key_unknown", "the signed token names another signing key")
    try:
        signature = _unb64(parts[3])
    except ValueError:
        raise unauthorized("token_malformed", "the signed token's signature is not base64url") from None
    expected = hmac.new(secret.encode(), ".".join(parts[:3]).encode(), hashlib.sha256).digest()
    if not hmac.compare_digest(signature, expected):
        raise unauthorized("token_bad_signature", "the signed token's signature does not verify")
    try:
        claims = json.loads(_unb64(parts[2]))
        clinic, exp, iat = claims["clinic"], int(claims["exp"]), int(claims.get("iat", 0))
        subject = str(claims.get("sub", "backend"))[:200]
    except (ValueError, KeyError, TypeError):
        raise unauthorized("token_malformed", "the signed token's payload is not the expected JSON") from None
    if not isinstance(clinic, str) or not clinic:
        raise unauthorized("token_malformed", "the signed token's clinic must be a non-empty string")
    now = time.time()
    if exp <= now:
        raise unauthorized("token_expired", "the signed token has expired")
    if exp - now > max_lifetime_s or exp - iat > max_lifetime_s:
        raise unauthorized("token_too_long", f"the signed token is valid for longer than {max_lifetime_s} s")
    digest = _sha256(token)[:16]
    return Credential(f"signed:{key_id}:{digest}", "signed", clinic, f"signed token for {subject}",
                      datetime.fromtimestamp(exp, UTC))


def parse_expiry(text: str, now: datetime | None = None) -> datetime:
    """'30d', '12h', '90m' or an ISO date/time (UTC if no offset) -> an aware datetime."""
    now = now or datetime.now(UTC)
    m = re.fullmatch(r"\s*(\d+)\s*([dhm])\s*", text)
    if m:
        n, unit = int(m[1]), m[2]
        return now + {"d": timedelta(days=n), "h": timedelta(hours=n), "m": timedelta(minutes=n)}[unit]
    try:
        at = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ConfigError(f"cannot read the expiry {text[:40]!r}",
                          fix="give a duration (30d, 12h, 90m) or an ISO date (2027-01-31 or 2027-01-31T18:00Z)") from None
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def is_token_shaped(text: str) -> bool:
    return 0 < len(text) <= _MAX_TOKEN_CHARS and text.isascii() and text.isprintable()
