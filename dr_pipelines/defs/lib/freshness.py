"""Freshness policies shared by areas: a scheduled asset is fresh when its scheduled run landed."""

from __future__ import annotations

import re
from datetime import timedelta

import dagster as dg
from dagster._utils.schedules import get_smallest_cron_interval

SCHEDULE_GRACE = timedelta(hours=2)  # a scheduled run must have materialized this long after its tick


def scheduled_freshness(cron: str, *, grace: timedelta = SCHEDULE_GRACE) -> dg.FreshnessPolicy:
    """A cron policy matching a schedule, so the asset is green all day after its run and red only when a run is late.

    Daily crons (`M H * * *`) get a deadline `grace` after the tick and accept any materialization in the
    period before the deadline (a manual run counts too). Other crons fall back to the schedule itself as the
    deadline and one period as the window (Dagster's maximum): a run is flagged missing one period late.
    """
    period = get_smallest_cron_interval(cron, "UTC")
    fields = cron.split()
    if len(fields) == 5 and fields[2:] == ["*", "*", "*"] and all(re.fullmatch(r"\d+", f) for f in fields[:2]):
        minutes = (int(fields[1]) * 60 + int(fields[0]) + int(grace.total_seconds() // 60)) % (24 * 60)
        return dg.FreshnessPolicy.cron(deadline_cron=f"{minutes % 60} {minutes // 60} * * *", lower_bound_delta=period)
    return dg.FreshnessPolicy.cron(deadline_cron=cron, lower_bound_delta=period)
