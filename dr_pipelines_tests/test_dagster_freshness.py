"""Freshness policies, evaluated by Dagster's own evaluators at chosen instants (no database needed).

wal_archive's freshness is the RPO with WAL archiving (wal_rpo_seconds): warn past it, fail one sensor
interval later. logical_backup runs daily: its freshness is a cron policy matching the schedule, green all day after
the 02:00 run and red only when a scheduled run did not land (the old one-hour window was red ~23 h a day).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import dagster as dg
from dagster._core.definitions.freshness import CronFreshnessPolicy, FreshnessState
from dagster._core.definitions.freshness_evaluator import FRESHNESS_EVALUATORS_BY_POLICY_TYPE
from dagster._core.loader import LoadingContextForTest
from dagster._core.test_utils import freeze_time

from dr_pipelines.definitions import build_definitions
from dr_pipelines.defs.backups.assets import BACKUP_KEY
from dr_pipelines.defs.wal.assets import WAL_KEY


def freshness_at(defs: dg.Definitions, instance: dg.DagsterInstance, key: dg.AssetKey, when: datetime) -> FreshnessState:
    """What Dagster's freshness daemon would compute for ``key`` at ``when``."""
    node = defs.resolve_asset_graph().get(key)
    evaluator = FRESHNESS_EVALUATORS_BY_POLICY_TYPE[type(node.freshness_policy)]()
    with freeze_time(when):
        return asyncio.run(evaluator.evaluate_freshness(LoadingContextForTest(instance), node))


def materialize_at(instance: dg.DagsterInstance, key: dg.AssetKey, when: datetime) -> None:
    with freeze_time(when):
        instance.report_runless_asset_event(dg.AssetMaterialization(key))


def test_logical_backup_is_fresh_all_day_after_its_scheduled_run(set_drp_env: Callable[..., dict[str, str]]) -> None:
    set_drp_env(backup_cron="0 2 * * *")
    defs = build_definitions()
    policy = defs.resolve_assets_def(BACKUP_KEY).specs_by_key[BACKUP_KEY].freshness_policy
    assert isinstance(policy, CronFreshnessPolicy)
    assert (policy.deadline_cron, policy.lower_bound_delta.total_seconds()) == ("0 4 * * *", 86400)

    with dg.DagsterInstance.ephemeral() as instance:
        materialize_at(instance, BACKUP_KEY, datetime(2026, 3, 10, 2, 5, tzinfo=UTC))  # the 02:00 run
        for hour in (4, 12, 23):
            assert freshness_at(defs, instance, BACKUP_KEY, datetime(2026, 3, 10, hour, 30, tzinfo=UTC)) == FreshnessState.PASS
        # the next day's 04:00 deadline passes with no new backup: red until one lands
        assert freshness_at(defs, instance, BACKUP_KEY, datetime(2026, 3, 11, 4, 30, tzinfo=UTC)) == FreshnessState.FAIL


def test_wal_archive_freshness_is_the_rpo(set_drp_env: Callable[..., dict[str, str]]) -> None:
    set_drp_env(wal_rpo_seconds="60")
    defs = build_definitions()
    policy = defs.resolve_asset_graph().get(WAL_KEY).freshness_policy
    assert (policy.warn_window.to_timedelta(), policy.fail_window.to_timedelta()) == (timedelta(seconds=60),
                                                                                    timedelta(seconds=90))
    pushed = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
    with dg.DagsterInstance.ephemeral() as instance:
        materialize_at(instance, WAL_KEY, pushed)
        states = [freshness_at(defs, instance, WAL_KEY, pushed + timedelta(seconds=s)) for s in (30, 75, 120)]
    assert states == [FreshnessState.PASS, FreshnessState.WARN, FreshnessState.FAIL]
