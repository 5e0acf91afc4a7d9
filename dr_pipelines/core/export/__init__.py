"""Tenant data export: one clinic's rows, from one snapshot, as CSV, JSON Lines and Parquet, audited."""
