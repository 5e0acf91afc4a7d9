"""Tenant restore (issue 14): one clinic restored to a point in time, on request; a monthly drill on a scratch copy."""
