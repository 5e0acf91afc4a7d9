"""The export's errors, apart so that every export module (and bundle) can raise them without a cycle."""

from __future__ import annotations

from dr_pipelines.core.errors import DrpError
from dr_pipelines.core.export import audit


class ExportError(DrpError):
    """An export failed; nothing was committed (no manifest)."""


class ExportRefusedError(ExportError):
    """An export was refused before any tenant data was read."""

    exit_code = 4


class UnknownTenantError(ExportRefusedError):
    """A requested tenant id does not exist (or is not a valid key)."""


class RateLimitedError(ExportRefusedError, audit.RateLimitedError):
    """Too many exports of a tenant in the last hour."""
