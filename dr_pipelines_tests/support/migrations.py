"""Helpers for the migration tests: small migration directories written on the fly, tracking rows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg

# Three small migrations on their own tables, each with a down script.
BASIC = {
    "0001_accounts.sql": "CREATE TABLE accounts (id bigint PRIMARY KEY, name text NOT NULL);\n"
                         "INSERT INTO accounts VALUES (1, 'a'), (2, 'b');\n",
    "0001_accounts.down.sql": "DROP TABLE accounts;\n",
    "0002_accounts_email.sql": "ALTER TABLE accounts ADD COLUMN email text;\n"
                               "-- drp:allow create-index-not-concurrently reason: two rows\n"
                               "CREATE INDEX accounts_email_idx ON accounts (email);\n",
    "0002_accounts_email.down.sql": "DROP INDEX accounts_email_idx;\nALTER TABLE accounts DROP COLUMN email;\n",
    "0003_orders.sql": "CREATE TABLE orders (id bigint PRIMARY KEY, account_id bigint REFERENCES accounts);\n",
    "0003_orders.down.sql": "DROP TABLE orders;\n",
}


def write_migrations(directory: Path, files: dict[str, str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, sql in files.items():
        (directory / name).write_text(sql)
    return directory


def tracking_rows(dsn: str) -> list[dict[str, Any]]:
    with psycopg.connect(dsn) as conn:
        cur = conn.execute("SELECT * FROM drp.schema_migrations ORDER BY version")
        names = [c.name for c in cur.description or []]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def versions(dsn: str) -> list[int]:
    return [r["version"] for r in tracking_rows(dsn)]


def table_exists(dsn: str, name: str) -> bool:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT to_regclass(%s) IS NOT NULL", (name,)).fetchone()[0]
