"""Continuous WAL archiving: push (archive_command side), fetch (restore_command side), verify.

Every archived file is stored as ``zstd`` inside ``age`` (core/stream.py), next to a small JSON
sidecar holding the plaintext and stored SHA-256 and sizes. The sidecar is written last: it is the
commit, so a push killed midway leaves at most an uncommitted object that the retry overwrites.
See docs/wal.md for the mechanism chosen (a long-running archiver fed by a tiny client) and why.
"""
