"""Tenant exports: one partition per clinic, on demand; a daily all-tenant Parquet export for analysts."""
