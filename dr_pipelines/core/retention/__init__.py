"""Data retention: how long clinic rows stay in the live database, and what happens to them after.

Not to be confused with ``core/backup/gfs.py`` (GFS rules for *backups*). Here: policies per
table (policy.py), legal holds (holds.py), the segment journal (journal.py), archive to
Parquet and verify (segment.py), the apply loop with batch deletes or partition drops
(apply.py), the dry-run (plan.py) and rehydration (rehydrate.py). Design: docs/retention.md.
"""
