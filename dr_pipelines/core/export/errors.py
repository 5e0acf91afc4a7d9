"""The export's own refusals, apart so that every export module can raise them without a cycle.

ExportError and ExportRefusedError live in core/errors.py (other layers catch them); they are
re-exported here so the export package has one place for its errors.
"""

from __future__ import annotations

from dr_pipelines.core.errors import ExportError, ExportRefusedError
from dr_pipelines.core.export import audit

__all__ = ["ExportError", "ExportRefusedError", "RateLimitedError", "UnknownTenantError"]


class UnknownTenantError(ExportRefusedError):
    """A requested tenant id does not exist (or is not a valid key)."""


class RateLimitedError(ExportRefusedError, audit.RateLimitedError):
    """Too many exports of a tenant in the last hour."""
