"""The portal's refusals: a DrpError with the HTTP status and a stable code, rendered as one JSON shape."""

from __future__ import annotations

from dr_pipelines.core.errors import DrpError


class PortalError(DrpError):
    """A request the portal answers with an error: ``{"error": {"code", "message", "fix"}}`` and ``status``.

    ``audit`` is the status its audit row gets ("refused" for credentials, scope and bad input;
    "failed" when the portal or the database broke).
    """

    def __init__(self, status: int, code: str, problem: str, fix: str | None = None, *,
                 audit: str = "refused", retry_after: int | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(problem, fix)
        self.status = status
        self.code = code
        self.audit = audit
        self.retry_after = retry_after
        self.headers = dict(headers or {})
        if retry_after is not None:
            self.headers["Retry-After"] = str(retry_after)

    def body(self) -> dict[str, object]:
        return {"error": {"code": self.code, "message": self.problem, "fix": self.fix}}


def unauthorized(code: str, problem: str) -> PortalError:
    return PortalError(401, code, problem, "sign in with a valid clinic token (Authorization: Bearer <token>); "
                       "ask the operator for a new one if it expired or was revoked")


def not_found(what: str) -> PortalError:
    """The same answer for "absent" and "another clinic's": existence is never confirmed across clinics."""
    return PortalError(404, "not_found", f"no such {what} for this clinic",
                       "list what this clinic has (GET /api/exports, GET /api/clinic)")
