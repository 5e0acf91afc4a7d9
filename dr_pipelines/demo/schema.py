"""Where the demo clinic schema's migrations live (applied with ``core.migrate.runner.migrate``)."""

from __future__ import annotations

from pathlib import Path

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
