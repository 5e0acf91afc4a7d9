"""Proof that a backup restores: verification restores, their checks, and DR drills."""
