"""The migration lint rules (id -> default severity, what each catches) and the function lists the
classifier consults (which defaults force a rewrite). docs/migrations.md lists the same rules."""

from __future__ import annotations

import re

ERROR, WARNING, INFO = "error", "warning", "info"

# rule id -> (default severity, what it catches). docs/migrations.md lists the same rules.
RULES: dict[str, tuple[str, str]] = {
    "create-index-not-concurrently": (ERROR, "CREATE INDEX on an existing table blocks writes for the whole build"),
    "concurrently-in-transaction": (ERROR, "CONCURRENTLY cannot run inside a transaction: PostgreSQL refuses it"),
    "add-column-volatile-default": (ERROR, "ADD COLUMN whose value is computed per row rewrites the table"),
    "alter-column-type-rewrite": (ERROR, "ALTER COLUMN TYPE that is not a binary-compatible widening rewrites"),
    "alter-column-type-unverified": (INFO, "ALTER COLUMN TYPE that is safe only if it widens the live type"),
    "set-not-null-without-check": (ERROR, "SET NOT NULL scans the table under ACCESS EXCLUSIVE"),
    "add-constraint-without-not-valid": (ERROR, "ADD FOREIGN KEY / CHECK validates every row under the lock"),
    "add-unique-without-index": (ERROR, "ADD UNIQUE / PRIMARY KEY builds its index under ACCESS EXCLUSIVE"),
    "drop-column": (ERROR, "DROP COLUMN loses data and breaks code that still reads the column"),
    "rename-column": (ERROR, "RENAME COLUMN breaks code that uses the old name"),
    "drop-table": (ERROR, "DROP TABLE loses data and breaks code that still uses the table"),
    "rename-table": (ERROR, "RENAME TABLE breaks code that uses the old name"),
    "truncate": (ERROR, "TRUNCATE deletes every row under ACCESS EXCLUSIVE"),
    "vacuum-full": (ERROR, "VACUUM FULL rewrites the table under ACCESS EXCLUSIVE"),
    "cluster": (ERROR, "CLUSTER rewrites the table under ACCESS EXCLUSIVE"),
    "reindex-not-concurrently": (ERROR, "REINDEX blocks writes, and reads that use the index"),
    "no-lock-timeout": (ERROR, "a strong lock requested without lock_timeout queues every query behind it"),
    "do-block-not-analysed": (INFO, "the statements inside a DO block are not visible to lint"),
    "suppression-without-reason": (ERROR, "a drp:allow comment must say why"),
    "suppression-unused": (WARNING, "a drp:allow comment that matches no finding of its statement"),
}

# Functions whose value differs per row: as a new column's default they force a rewrite.
VOLATILE_FUNCTIONS = frozenset({
    "random", "random_normal", "clock_timestamp", "timeofday", "gen_random_uuid", "uuid_generate_v1",
    "uuid_generate_v1mc", "uuid_generate_v4", "uuidv4", "uuidv7", "nextval", "setseed", "txid_current",
    "pg_current_xact_id", "gen_random_bytes", "gen_salt",
})
# Known non-volatile functions common in defaults; anything else is "cannot tell offline".
NON_VOLATILE_FUNCTIONS = frozenset({
    "now", "transaction_timestamp", "statement_timestamp", "current_setting", "lower", "upper", "length", "lpad",
    "rpad", "concat", "coalesce", "jsonb_build_object", "json_build_object", "to_jsonb", "make_interval",
    "date_trunc", "timezone", "array_length", "abs", "round", "greatest", "least", "md5", "btrim", "trim",
})
SERIALS = frozenset({"serial", "serial4", "bigserial", "serial8", "smallserial", "serial2"})
# Target types that can be a binary-compatible widening (no rewrite) of a narrower live column type.
WIDENING_TARGETS = frozenset({"text", "varchar", "numeric", "varbit", "citext"})
SET_CONFIG_LOCK_TIMEOUT = re.compile(r"set_config\s*\(\s*'lock_timeout'\s*,\s*'(?P<value>[^']*)'", re.I)
