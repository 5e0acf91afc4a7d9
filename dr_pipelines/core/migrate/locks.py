"""PostgreSQL's table-level lock modes (docs: "Explicit Locking", table 13.2), weakest first.

Lint and the impact estimate speak in these names. What matters to a running application is
whether a mode conflicts with ACCESS SHARE (every SELECT) or with ROW EXCLUSIVE (every INSERT,
UPDATE, DELETE): that is what ``blocks`` reports.
"""

from __future__ import annotations

ACCESS_SHARE = "ACCESS SHARE"
ROW_SHARE = "ROW SHARE"
ROW_EXCLUSIVE = "ROW EXCLUSIVE"
SHARE_UPDATE_EXCLUSIVE = "SHARE UPDATE EXCLUSIVE"
SHARE = "SHARE"
SHARE_ROW_EXCLUSIVE = "SHARE ROW EXCLUSIVE"
EXCLUSIVE = "EXCLUSIVE"
ACCESS_EXCLUSIVE = "ACCESS EXCLUSIVE"

MODES = (ACCESS_SHARE, ROW_SHARE, ROW_EXCLUSIVE, SHARE_UPDATE_EXCLUSIVE, SHARE, SHARE_ROW_EXCLUSIVE, EXCLUSIVE,
         ACCESS_EXCLUSIVE)

# The conflict table, as documented: mode -> the modes it conflicts with.
CONFLICTS: dict[str, frozenset[str]] = {
    ACCESS_SHARE: frozenset({ACCESS_EXCLUSIVE}),
    ROW_SHARE: frozenset({EXCLUSIVE, ACCESS_EXCLUSIVE}),
    ROW_EXCLUSIVE: frozenset({SHARE, SHARE_ROW_EXCLUSIVE, EXCLUSIVE, ACCESS_EXCLUSIVE}),
    SHARE_UPDATE_EXCLUSIVE: frozenset({SHARE_UPDATE_EXCLUSIVE, SHARE, SHARE_ROW_EXCLUSIVE, EXCLUSIVE,
                                       ACCESS_EXCLUSIVE}),
    SHARE: frozenset({ROW_EXCLUSIVE, SHARE_UPDATE_EXCLUSIVE, SHARE_ROW_EXCLUSIVE, EXCLUSIVE, ACCESS_EXCLUSIVE}),
    SHARE_ROW_EXCLUSIVE: frozenset({ROW_EXCLUSIVE, SHARE_UPDATE_EXCLUSIVE, SHARE, SHARE_ROW_EXCLUSIVE, EXCLUSIVE,
                                    ACCESS_EXCLUSIVE}),
    EXCLUSIVE: frozenset({ROW_SHARE, ROW_EXCLUSIVE, SHARE_UPDATE_EXCLUSIVE, SHARE, SHARE_ROW_EXCLUSIVE, EXCLUSIVE,
                          ACCESS_EXCLUSIVE}),
    ACCESS_EXCLUSIVE: frozenset(MODES),
}

# pg_locks.mode spells them in CamelCase.
PG_LOCKS_NAMES = {m.title().replace(" ", "") + "Lock": m for m in MODES}


def rank(mode: str) -> int:
    """Position in the strength order (ACCESS SHARE = 0); ValueError for an unknown name."""
    return MODES.index(mode)


def strongest(modes: list[str | None] | tuple[str | None, ...]) -> str | None:
    """The strongest of modes (None entries ignored); None if there are none."""
    known = [m for m in modes if m]
    return max(known, key=rank) if known else None


def blocks_reads(mode: str) -> bool:
    return ACCESS_SHARE in CONFLICTS[mode]


def blocks_writes(mode: str) -> bool:
    return ROW_EXCLUSIVE in CONFLICTS[mode]


def blocks(mode: str | None) -> str:
    """What running application queries wait for while mode is held: "reads and writes", "writes" or "nothing"."""
    if mode is None:
        return "nothing"
    if blocks_reads(mode):
        return "reads and writes"
    return "writes" if blocks_writes(mode) else "nothing"


def is_strong(mode: str | None) -> bool:
    """Blocks reads or writes: waiting for it in the lock queue stalls the application."""
    return blocks(mode) != "nothing"


def from_pg_locks(name: str) -> str:
    """'AccessExclusiveLock' -> 'ACCESS EXCLUSIVE'."""
    return PG_LOCKS_NAMES[name]
