"""Backup retention keeps what restic's ``forget --keep-*`` would, plus pinned and newest-restorable backups.

Expectations are worked out by hand from restic's documented rules, not recomputed by
a second copy of the algorithm.
"""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, timedelta, timezone
from itertools import pairwise

import pytest

from dr_pipelines.core.backup.gfs import Candidate, Decision, RetentionPolicy, plan, summarize
from dr_pipelines.core.errors import ConfigError

UTC_PLUS_2 = timezone(timedelta(hours=2))


def at(text: str) -> datetime:
    """``2024-03-05 12:00`` as an aware UTC time."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def backup(text: str, **kw: bool) -> Candidate:
    return Candidate(id=text, time=at(text), **kw)


def daily_backups(first: date, last: date, hour: int = 12) -> list[Candidate]:
    """One backup per day at ``hour`` UTC, id = the date."""
    days = (last - first).days + 1
    out = []
    for n in range(days):
        day = first + timedelta(days=n)
        out.append(Candidate(id=day.isoformat(), time=datetime(day.year, day.month, day.day, hour, tzinfo=UTC)))
    return out


def kept(decisions: list[Decision]) -> list[str]:
    return [d.candidate.id for d in decisions if d.keep]


def reasons_of(decisions: list[Decision], candidate_id: str) -> tuple[str, ...]:
    return next(d.reasons for d in decisions if d.candidate.id == candidate_id)


# --- restic's documented examples -------------------------------------------------------------------------------


def test_two_years_of_dailies_keep_exactly_the_gfs_set() -> None:
    backups = daily_backups(date(2022, 1, 1), date(2023, 12, 31))  # 2023-12-31 is a Sunday
    decisions = plan(backups, RetentionPolicy.parse("daily=7,weekly=4,monthly=12,yearly=3"))

    last_week = [f"2023-12-{d}" for d in range(25, 32)]
    earlier_sundays = ["2023-12-24", "2023-12-17", "2023-12-10"]
    month_ends_2023 = ["2023-01-31", "2023-02-28", "2023-03-31", "2023-04-30", "2023-05-31", "2023-06-30",
                       "2023-07-31", "2023-08-31", "2023-09-30", "2023-10-31", "2023-11-30"]
    # yearly=3 but only two years exist: restic also keeps the oldest backup while a count is left.
    years = ["2022-12-31", "2022-01-01"]
    assert sorted(kept(decisions)) == sorted(last_week + earlier_sundays + month_ends_2023 + years)
    assert reasons_of(decisions, "2023-12-31") == (
        "daily 2023-12-31", "weekly 2023-W52", "monthly 2023-12", "yearly 2023", "newest restorable")
    assert reasons_of(decisions, "2023-12-24") == ("weekly 2023-W51",)
    assert reasons_of(decisions, "2022-12-31") == ("yearly 2022",)
    assert reasons_of(decisions, "2022-01-01") == ("yearly 2022 (oldest)",)
    assert [d.candidate.id for d in decisions] == [b.id for b in reversed(backups)]  # newest first


def test_restic_docs_hundred_years_example_scaled_to_three() -> None:
    """restic docs: daily=7 weekly=5 monthly=12 yearly=75 keeps 7 dailies, 4 more weeklies, 11 or 12 monthlies."""
    backups = daily_backups(date(2021, 1, 1), date(2023, 12, 31))
    decisions = plan(backups, RetentionPolicy(keep_daily=7, keep_weekly=5, keep_monthly=12, keep_yearly=75))

    def only(rule: str) -> list[str]:
        return [d.candidate.id for d in decisions
                if d.keep and {r.split()[0] for r in d.reasons} - {"newest"} == {rule}]

    assert len([d for d in decisions if any(r.startswith("daily") for r in d.reasons)]) == 7
    assert only("weekly") == ["2023-12-24", "2023-12-17", "2023-12-10", "2023-12-03"]
    assert len(only("monthly")) == 11  # the five weeklies stay inside December
    assert only("yearly") == ["2022-12-31", "2021-12-31", "2021-01-01"]
    assert len(kept(decisions)) == 7 + 4 + 11 + 3


# --- bucket rules -----------------------------------------------------------------------------------------------


def test_gaps_between_days_do_not_consume_daily_slots() -> None:
    backups = [backup(f"2024-03-{d:02d} 12:00") for d in (1, 2, 5, 9, 10)]
    decisions = plan(backups, RetentionPolicy(keep_daily=3))
    assert kept(decisions) == ["2024-03-10 12:00", "2024-03-09 12:00", "2024-03-05 12:00"]
    assert reasons_of(decisions, "2024-03-05 12:00") == ("daily 2024-03-05",)


def test_several_backups_in_one_day_keep_only_the_newest_of_that_day() -> None:
    backups = [backup(t) for t in ("2024-03-10 08:00", "2024-03-10 20:00", "2024-03-10 14:00",
                                   "2024-03-09 07:00", "2024-03-09 19:00", "2024-03-08 12:00")]
    decisions = plan(backups, RetentionPolicy(keep_daily=2))
    assert kept(decisions) == ["2024-03-10 20:00", "2024-03-09 19:00"]


def test_oldest_backup_is_kept_while_a_rule_has_count_left() -> None:
    """restic >= 0.16: with fewer periods than the count, the oldest backup is kept too."""
    backups = [backup(t) for t in ("2024-03-10 20:00", "2024-03-10 08:00", "2024-03-09 19:00", "2024-03-09 07:00")]
    decisions = plan(backups, RetentionPolicy(keep_daily=5))
    assert kept(decisions) == ["2024-03-10 20:00", "2024-03-09 19:00", "2024-03-09 07:00"]
    assert reasons_of(decisions, "2024-03-09 07:00") == ("daily 2024-03-09 (oldest)",)


def test_hourly_buckets() -> None:
    backups = [backup(t) for t in ("2024-03-10 10:05", "2024-03-10 10:45", "2024-03-10 11:15", "2024-03-10 09:59")]
    decisions = plan(backups, RetentionPolicy(keep_hourly=2))
    assert kept(decisions) == ["2024-03-10 11:15", "2024-03-10 10:45"]
    assert reasons_of(decisions, "2024-03-10 10:45") == ("hourly 2024-03-10 10:00",)


def test_weekly_bucket_follows_iso_weeks_across_the_year_boundary() -> None:
    # 2020-12-28 (Mon) .. 2021-01-03 (Sun) is ISO week 2020-W53; 2021-01-04 starts 2021-W01.
    backups = [backup(t) for t in ("2020-12-28 12:00", "2020-12-31 12:00", "2021-01-01 12:00",
                                   "2021-01-03 12:00", "2021-01-04 12:00")]
    decisions = plan(backups, RetentionPolicy(keep_weekly=2))
    assert kept(decisions) == ["2021-01-04 12:00", "2021-01-03 12:00"]
    assert reasons_of(decisions, "2021-01-03 12:00") == ("weekly 2020-W53",)

    same_week = plan([backup("2020-12-31 12:00"), backup("2021-01-01 12:00")], RetentionPolicy(keep_weekly=1))
    assert kept(same_week) == ["2021-01-01 12:00"]
    assert reasons_of(same_week, "2021-01-01 12:00")[0] == "weekly 2020-W53"


def test_time_zone_decides_the_bucket() -> None:
    backups = [backup("2024-03-05 12:00"), backup("2024-03-04 23:30"), backup("2024-03-03 12:00")]
    policy = RetentionPolicy(keep_daily=2)
    assert kept(plan(backups, policy)) == ["2024-03-05 12:00", "2024-03-04 23:30"]
    # In UTC+2, 23:30 UTC on the 4th is 01:30 on the 5th: the same day as the newest backup.
    in_plus_2 = plan(backups, policy, tz=UTC_PLUS_2)
    assert kept(in_plus_2) == ["2024-03-05 12:00", "2024-03-03 12:00"]
    assert reasons_of(in_plus_2, "2024-03-05 12:00")[0] == "daily 2024-03-05"


# --- last, within, safety nets ----------------------------------------------------------------------------------


def test_keep_last_larger_than_the_number_of_backups_keeps_all() -> None:
    backups = daily_backups(date(2024, 3, 1), date(2024, 3, 3))
    decisions = plan(backups, RetentionPolicy(keep_last=10))
    assert all(d.keep and "last" in d.reasons for d in decisions)


def test_keep_last_keeps_the_n_newest() -> None:
    decisions = plan(daily_backups(date(2024, 3, 1), date(2024, 3, 5)), RetentionPolicy(keep_last=2))
    assert kept(decisions) == ["2024-03-05", "2024-03-04"]


def test_within_keeps_backups_strictly_newer_than_newest_minus_duration() -> None:
    backups = [backup(t) for t in ("2024-03-05 12:00", "2024-03-04 12:01", "2024-03-04 12:00", "2024-03-01 12:00")]
    decisions = plan(backups, RetentionPolicy.parse("within=1d"))
    # Like restic, the cut-off itself is outside the window.
    assert kept(decisions) == ["2024-03-05 12:00", "2024-03-04 12:01"]
    assert reasons_of(decisions, "2024-03-04 12:01") == ("within 1d",)


def test_pinned_old_backup_is_kept_with_its_reason() -> None:
    backups = daily_backups(date(2024, 3, 1), date(2024, 3, 10))
    backups[0] = Candidate(backups[0].id, backups[0].time, pinned=True)
    decisions = plan(backups, RetentionPolicy(keep_daily=1))
    assert kept(decisions) == ["2024-03-10", "2024-03-01"]
    assert reasons_of(decisions, "2024-03-01") == ("pinned",)


def test_newest_restorable_is_kept_even_when_the_policy_would_drop_it() -> None:
    backups = [backup("2024-03-05 12:00", restorable=False), backup("2024-03-05 10:00"), backup("2024-03-05 09:00")]
    decisions = plan(backups, RetentionPolicy.parse("within=1h"))
    assert kept(decisions) == ["2024-03-05 12:00", "2024-03-05 10:00"]
    assert reasons_of(decisions, "2024-03-05 12:00") == ("within 1h",)
    assert reasons_of(decisions, "2024-03-05 10:00") == ("newest restorable",)
    assert reasons_of(decisions, "2024-03-05 09:00") == ()


def test_reasons_list_every_rule_that_keeps_a_backup() -> None:
    newest = Candidate("b2", at("2024-03-05 12:00"), pinned=True)
    decisions = plan([newest, backup("2024-03-04 12:00")], RetentionPolicy(keep_last=1, keep_daily=1))
    assert decisions[0].reasons == ("last", "daily 2024-03-05", "pinned", "newest restorable")
    assert decisions[1] == Decision(decisions[1].candidate, keep=False, reasons=())


def test_ties_are_broken_by_id_whatever_the_input_order() -> None:
    same = at("2024-03-05 12:00")
    for order in (["b", "a", "c"], ["c", "b", "a"]):
        decisions = plan([Candidate(i, same) for i in order], RetentionPolicy(keep_last=1))
        assert [d.candidate.id for d in decisions] == ["a", "b", "c"]
        assert kept(decisions) == ["a"]


def test_empty_policy_is_refused() -> None:
    for candidates in ([backup("2024-03-05 12:00")], []):
        with pytest.raises(ConfigError, match="refusing to apply an empty retention policy") as err:
            plan(candidates, RetentionPolicy())
        assert err.value.fix and "keep rule" in err.value.fix
    assert RetentionPolicy.parse("daily=0").is_empty()
    assert not RetentionPolicy(keep_within=timedelta(hours=1)).is_empty()


def test_no_candidates_means_no_decisions() -> None:
    assert plan([], RetentionPolicy(keep_last=1)) == []


def test_naive_times_are_rejected() -> None:
    with pytest.raises(ValueError, match="naive"):
        Candidate("x", datetime(2024, 3, 5, 12))


# --- parsing and describing -------------------------------------------------------------------------------------


def test_parse_text_and_mapping() -> None:
    policy = RetentionPolicy.parse("last=3, daily=7,weekly=4,monthly=12,yearly=5,within=2d")
    assert policy == RetentionPolicy(3, 0, 7, 4, 12, 5, timedelta(days=2))
    assert RetentionPolicy.parse({"keep_last": 3, "keep_daily": "7", "keep-weekly": 4, "monthly": 12,
                                  "keep_yearly": 5, "keep_within": "2d"}) == policy
    assert RetentionPolicy.parse({"keep_hourly": 24, "keep_within": timedelta(hours=6)}).keep_within == timedelta(hours=6)
    assert RetentionPolicy.parse("keep-hourly=24").keep_hourly == 24


@pytest.mark.parametrize(("text", "expected"), [
    ("36h", timedelta(hours=36)), ("2d", timedelta(days=2)), ("1w", timedelta(weeks=1)),
    ("1w2d3h", timedelta(days=9, hours=3)), ("2D", timedelta(days=2)),
])
def test_parse_durations(text: str, expected: timedelta) -> None:
    assert RetentionPolicy.parse(f"within={text}").keep_within == expected


@pytest.mark.parametrize(("spec", "named", "says"), [
    ("last=3,dayly=7", "dayly=7", "unknown retention rule"),
    ("daily=-1", "daily=-1", "negative"),
    ("daily=1.5", "daily=1.5", "not a whole number"),
    ("daily=seven", "daily=seven", "not a whole number"),
    ("last=3,daily", "daily", "not rule=value"),
    ("last=3,,daily=7", "''", "not rule=value"),
    ("daily=7,daily=3", "daily=3", "given twice"),
    ("within=1m", "within=1m", "not a duration"),
    ("within=2 days", "within=2 days", "not a duration"),
    ("within=0h", "within=0h", "not a positive duration"),
    ({"keep_daily": True}, "keep_daily: True", "not a whole number"),
    ({"keep_daily": None}, "keep_daily: None", "not a whole number"),
    ({"keep_within": 3600}, "keep_within: 3600", "not a duration"),
    ("", "empty", "empty"),
])
def test_parse_errors_name_the_bad_part(spec: object, named: str, says: str) -> None:
    with pytest.raises(ConfigError) as err:
        RetentionPolicy.parse(spec)  # type: ignore[arg-type]
    assert named in err.value.problem
    assert says in err.value.problem
    assert err.value.fix


def test_negative_or_zero_values_are_refused_by_the_dataclass() -> None:
    with pytest.raises(ConfigError, match="weekly=-2 is negative"):
        RetentionPolicy(keep_weekly=-2)
    with pytest.raises(ConfigError, match="not a positive duration"):
        RetentionPolicy(keep_within=timedelta(0))
    with pytest.raises(ConfigError, match="not a whole number"):
        RetentionPolicy(keep_last=1.5)  # type: ignore[arg-type]


def test_describe() -> None:
    assert RetentionPolicy.parse("last=3,daily=7,within=36h").describe() == "last 3, daily 7, within 1d12h"
    assert RetentionPolicy().describe() == "nothing (empty policy)"


def test_summarize_prints_one_line_per_candidate() -> None:
    backups = [Candidate("full-2", at("2024-03-05 12:00")), Candidate("f1", at("2024-03-04 12:00"))]
    text = summarize(plan(backups, RetentionPolicy(keep_last=1)))
    assert text.splitlines() == [
        "keep    full-2  2024-03-05T12:00:00+00:00  last, newest restorable",
        "forget  f1      2024-03-04T12:00:00+00:00",
    ]
    assert summarize([]) == ""


# --- randomized invariants --------------------------------------------------------------------------------------


def test_invariants_hold_over_random_backup_sets() -> None:
    rng = random.Random(20240305)
    zones = [UTC, UTC_PLUS_2, timezone(timedelta(hours=-5, minutes=-30))]
    base = at("2024-01-01 00:00")
    for _ in range(200):
        candidates = [
            Candidate(id=f"b{n:03d}", time=base + timedelta(minutes=rng.randrange(60 * 24 * 90)),
                      pinned=rng.random() < 0.1, restorable=rng.random() < 0.8)
            for n in range(rng.randrange(0, 40))
        ]
        policy = RetentionPolicy(
            keep_last=rng.choice([0, 0, 1, 3]), keep_hourly=rng.choice([0, 0, 4]),
            keep_daily=rng.choice([0, 1, 3, 7, 30]), keep_weekly=rng.choice([0, 0, 2]),
            keep_monthly=rng.choice([0, 0, 2]), keep_yearly=rng.choice([0, 0, 1]),
            keep_within=rng.choice([None, None, timedelta(hours=5), timedelta(days=3)]),
        )
        if policy.is_empty():
            policy = RetentionPolicy(keep_daily=1)
        tz = rng.choice(zones)
        decisions = plan(candidates, policy, tz=tz)

        assert sorted(d.candidate.id for d in decisions) == sorted(c.id for c in candidates)
        assert all(a.candidate.time >= b.candidate.time for a, b in pairwise(decisions))
        assert all(d.keep == bool(d.reasons) for d in decisions)
        if not candidates:
            assert decisions == []
            continue
        assert any(d.keep for d in decisions)
        assert all(d.keep and "pinned" in d.reasons for d in decisions if d.candidate.pinned)
        restorable = [c for c in candidates if c.restorable]
        if restorable:
            newest_time = max(c.time for c in restorable)
            newest_id = min(c.id for c in restorable if c.time == newest_time)
            assert reasons_of(decisions, newest_id)[-1] == "newest restorable"
        days = {c.time.astimezone(tz).date() for c in candidates}
        kept_days = {d.candidate.time.astimezone(tz).date() for d in decisions
                     if any(r.startswith("daily ") for r in d.reasons)}
        assert len(kept_days) == min(policy.keep_daily, len(days))
        newest = max(c.time for c in candidates)
        for d in decisions:
            if policy.keep_within is not None and d.candidate.time > newest - policy.keep_within:
                assert d.keep
        assert all(d.keep for d in decisions[: policy.keep_last])
