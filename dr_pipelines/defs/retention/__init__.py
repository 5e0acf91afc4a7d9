"""Data retention in Dagster: one monthly-partitioned archival asset per policy, its checks, a schedule."""
