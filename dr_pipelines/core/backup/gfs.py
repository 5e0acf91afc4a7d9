"""Which backups to keep: restic's ``forget --keep-*`` policy, as a pure function.

Retention is the one place that deletes backups, so the rules copy restic's
well-understood semantics instead of inventing new ones (see ``plan``), and two
safety nets sit on top: pinned backups and the newest restorable backup are never
dropped. ``plan`` only decides; deleting is the caller's job, which keeps this
testable and lets a dry run print exactly what a real run would do.

Deliberate differences from restic: an empty policy is refused (restic keeps
everything); ``within`` takes exact durations (weeks, days, hours) rather than
calendar months and years; there is no ``unlimited`` count and no grouping by
host or path (the caller passes one group); bucket boundaries use one explicit
time zone instead of each snapshot's recorded offset.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

from dr_pipelines.core.errors import ConfigError

__all__ = ["Candidate", "Decision", "RetentionPolicy", "plan", "summarize"]

_COUNT_RULES = ("last", "hourly", "daily", "weekly", "monthly", "yearly")
_RULES = (*_COUNT_RULES, "within")
_EXAMPLE = "last=3,daily=7,weekly=4,monthly=12,yearly=5,within=2d"
_DURATION = re.compile(r"(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?")
_DURATION_FIX = "write whole weeks, days and hours such as 36h, 2d, 1w or 1w2d (months and years vary in length)"


@dataclass(frozen=True)
class RetentionPolicy:
    """How many backups to keep per rule; rules are OR-ed, as with ``restic forget``."""

    keep_last: int = 0
    keep_hourly: int = 0
    keep_daily: int = 0
    keep_weekly: int = 0
    keep_monthly: int = 0
    keep_yearly: int = 0
    keep_within: timedelta | None = None

    def __post_init__(self) -> None:
        for rule in _COUNT_RULES:
            value = getattr(self, f"keep_{rule}")
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"retention rule {rule}={value!r} is not a whole number",
                                  fix=f"give a count of 0 or more, e.g. {rule}=7")
            if value < 0:
                raise ConfigError(f"retention rule {rule}={value} is negative",
                                  fix=f"give a count of 0 or more (0 disables the rule), e.g. {rule}=7")
        within = self.keep_within
        if within is not None and (not isinstance(within, timedelta) or within <= timedelta(0)):
            raise ConfigError(f"retention rule within={within!r} is not a positive duration",
                              fix=f"{_DURATION_FIX}; leave it out to disable the rule")

    def is_empty(self) -> bool:
        """True when no rule keeps anything: applying it would delete every unpinned backup."""
        return self.keep_within is None and not any(getattr(self, f"keep_{r}") for r in _COUNT_RULES)

    @classmethod
    def parse(cls, spec: str | Mapping[str, Any]) -> RetentionPolicy:
        """Read ``"last=3,daily=7,within=2d"`` or ``{"keep_daily": 7, ...}`` (``keep_``/``keep-`` optional)."""
        if isinstance(spec, str):
            pairs = _split_spec(spec)
        elif isinstance(spec, Mapping):
            pairs = [(str(k), v, f"{k}: {v!r}") for k, v in spec.items()]
        else:
            raise ConfigError(f"a retention policy must be text or a mapping, not {type(spec).__name__}",
                              fix=f"write it like {_EXAMPLE!r}")
        if not pairs:
            raise ConfigError("the retention policy is empty", fix=f"give at least one keep rule, e.g. {_EXAMPLE!r}")
        values: dict[str, Any] = {}
        for key, raw, part in pairs:
            rule = _rule_name(key)
            if rule not in _RULES:
                raise ConfigError(f"unknown retention rule {part!r}",
                                  fix=f"use {', '.join(_RULES)}, e.g. {_EXAMPLE!r}")
            if f"keep_{rule}" in values:
                raise ConfigError(f"retention rule {rule!r} is given twice ({part!r})", fix="give each rule once")
            values[f"keep_{rule}"] = _within(raw, part) if rule == "within" else _count(raw, part)
        return cls(**values)

    def describe(self) -> str:
        """Human summary such as ``last 3, daily 7, within 2d``."""
        parts = [f"{r} {getattr(self, f'keep_{r}')}" for r in _COUNT_RULES if getattr(self, f"keep_{r}")]
        if self.keep_within is not None:
            parts.append(f"within {_format_duration(self.keep_within)}")
        return ", ".join(parts) or "nothing (empty policy)"


@dataclass(frozen=True)
class Candidate:
    """One backup as retention sees it."""

    id: str
    time: datetime  # tz-aware restore point time
    pinned: bool = False
    restorable: bool = True  # False: known broken; may be kept by rules, never counts as "newest restorable"

    def __post_init__(self) -> None:
        if self.time.tzinfo is None or self.time.utcoffset() is None:
            raise ValueError(f"backup {self.id!r} has a naive time {self.time.isoformat()}; retention needs tz-aware times")


@dataclass(frozen=True)
class Decision:
    """Keep or forget one candidate, with every reason it is kept (empty when it goes)."""

    candidate: Candidate
    keep: bool
    reasons: tuple[str, ...]


def _iso_week(t: datetime) -> str:
    iso = t.isocalendar()
    return f"{iso.year:04d}-W{iso.week:02d}"


# Bucket labels double as bucket keys: equal label, same period.
_BUCKETS: tuple[tuple[str, Callable[[datetime], str]], ...] = (
    ("hourly", lambda t: f"{t.year:04d}-{t.month:02d}-{t.day:02d} {t.hour:02d}:00"),
    ("daily", lambda t: f"{t.year:04d}-{t.month:02d}-{t.day:02d}"),
    ("weekly", _iso_week),
    ("monthly", lambda t: f"{t.year:04d}-{t.month:02d}"),
    ("yearly", lambda t: f"{t.year:04d}"),
)


def plan(candidates: Iterable[Candidate], policy: RetentionPolicy, *, tz: tzinfo = UTC) -> list[Decision]:
    """Decide, newest first, which candidates to keep under ``policy`` (buckets computed in ``tz``).

    Same as restic's ``forget``: ``last`` keeps the n newest; each bucket rule walks
    newest to oldest keeping the newest backup of each period until n periods *that
    have backups* are used (gaps cost nothing), and if a rule still has count left
    at the oldest backup, that one is kept too ("oldest" in its reason), which
    maximises history while the policy is not yet full; ``within`` keeps everything
    strictly newer than the newest backup minus the duration. On top: pinned
    backups, and the newest backup that is restorable, are always kept.
    """
    if policy.is_empty():
        raise ConfigError("refusing to apply an empty retention policy: it would delete every unpinned backup",
                          fix=f"give at least one keep rule, e.g. {_EXAMPLE!r}")
    # Sort by id, then stably by time: newest first, ties in id order, deterministic.
    ordered = sorted(sorted(candidates, key=lambda c: c.id), key=lambda c: c.time, reverse=True)
    if not ordered:
        return []
    reasons: list[list[str]] = [[] for _ in ordered]
    for i in range(min(policy.keep_last, len(ordered))):
        reasons[i].append("last")
    for rule, bucket_of in _BUCKETS:
        left = getattr(policy, f"keep_{rule}")
        previous: str | None = None
        for i, candidate in enumerate(ordered):
            if left == 0:
                break
            bucket = bucket_of(candidate.time.astimezone(tz))
            if bucket != previous:
                reasons[i].append(f"{rule} {bucket}")
            elif i == len(ordered) - 1:
                reasons[i].append(f"{rule} {bucket} (oldest)")
            else:
                continue
            previous = bucket
            left -= 1
    if policy.keep_within is not None:
        cutoff = ordered[0].time - policy.keep_within
        label = f"within {_format_duration(policy.keep_within)}"
        for i, candidate in enumerate(ordered):
            if candidate.time > cutoff:
                reasons[i].append(label)
    for i, candidate in enumerate(ordered):
        if candidate.pinned:
            reasons[i].append("pinned")
    newest_restorable = next((i for i, c in enumerate(ordered) if c.restorable), None)
    if newest_restorable is not None:
        reasons[newest_restorable].append("newest restorable")
    return [Decision(c, bool(r), tuple(r)) for c, r in zip(ordered, reasons, strict=True)]


def summarize(decisions: Iterable[Decision]) -> str:
    """A dry-run listing: one ``keep|forget  <id>  <time>  <reasons>`` line per candidate."""
    rows = list(decisions)
    width = max((len(d.candidate.id) for d in rows), default=0)
    lines = []
    for d in rows:
        action = "keep" if d.keep else "forget"
        line = f"{action:<6}  {d.candidate.id:<{width}}  {d.candidate.time.isoformat()}  {', '.join(d.reasons)}"
        lines.append(line.rstrip())
    return "\n".join(lines)


def _split_spec(spec: str) -> list[tuple[str, Any, str]]:
    if not spec.strip():
        return []
    pairs = []
    for raw_part in spec.split(","):
        part = raw_part.strip()
        key, sep, value = part.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ConfigError(f"retention rule {part!r} in {spec!r} is not rule=value",
                              fix=f"separate rules with commas, each as rule=value, e.g. {_EXAMPLE!r}")
        pairs.append((key, value.strip(), part))
    return pairs


def _rule_name(key: str) -> str:
    name = key.strip().lower().replace("-", "_")
    return name.removeprefix("keep_")


def _count(raw: Any, part: str) -> int:
    if isinstance(raw, int) and not isinstance(raw, bool):
        value = raw
    elif isinstance(raw, str) and re.fullmatch(r"[+-]?\d+", raw.strip()):
        value = int(raw)
    else:
        raise ConfigError(f"retention rule {part!r} is not a whole number",
                          fix="give a count of 0 or more, e.g. daily=7")
    if value < 0:
        raise ConfigError(f"retention rule {part!r} is negative", fix="give a count of 0 or more (0 disables the rule)")
    return value


def _within(raw: Any, part: str) -> timedelta | None:
    if raw is None or isinstance(raw, timedelta):
        duration = raw
    elif isinstance(raw, str) and (m := _DURATION.fullmatch(raw.strip().lower())) and any(m.groups()):
        weeks, days, hours = (int(g or 0) for g in m.groups())
        duration = timedelta(weeks=weeks, days=days, hours=hours)
    else:
        raise ConfigError(f"retention rule {part!r} is not a duration", fix=_DURATION_FIX)
    if duration is not None and duration <= timedelta(0):
        raise ConfigError(f"retention rule {part!r} is not a positive duration",
                          fix=f"{_DURATION_FIX}; leave it out to disable the rule")
    return duration


def _format_duration(d: timedelta) -> str:
    hours, rest = divmod(int(d.total_seconds()), 3600)
    minutes, seconds = divmod(rest, 60)
    days, hours = divmod(hours, 24)
    text = "".join(f"{n}{unit}" for n, unit in ((days, "d"), (hours, "h"), (minutes, "min"), (seconds, "s")) if n)
    return text or str(d)
