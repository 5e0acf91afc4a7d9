"""Full exports as Dagster runs: the clinic's ``tenant_export`` partition, launched and followed through GraphQL.

When ``portal_dagster_url`` names a Dagster webserver, a portal export is a run of
``tenant_export_job`` for the clinic's partition (dr_pipelines/defs/exports/definitions.py), so it
is in the run history, the asset's lineage and its materialization metadata like any other export.
Why the webserver's GraphQL API and not ``execute_job`` against DAGSTER_HOME: the run goes through
the deployment's own run coordinator and launcher (its queue, concurrency limits, run workers and
their settings), the portal needs no access to the instance's storage nor the code location
loaded in its process (nor Dagster itself: plain HTTP, core/graphql.py), and the portal can
restart while the run goes on: the job keeps the run id and follows it.

The names below are the code location's (a drift fails tests/test_dagster_dev.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dr_pipelines.core.errors import DrpError
from dr_pipelines.core.graphql import graphql
from dr_pipelines.core.settings import Settings

REPOSITORY = "__repository__"  # the repository name of a Definitions object
JOB = "tenant_export_job"
ASSET = ["tenant_export"]
PARTITIONS = "clinics"  # tenant_export's DynamicPartitionsDefinition

ADD_PARTITION = """
mutation AddPartition($repo: RepositorySelector!, $name: String!, $key: String!) {
  addDynamicPartition(repositorySelector: $repo, partitionsDefName: $name, partitionKey: $key) {
    __typename
    ... on Error { message }
  }
}
"""

LAUNCH = """
mutation Launch($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on RunConfigValidationInvalid { errors { message } }
    ... on Error { message }
  }
}
"""

RUN = """
query Run($runId: ID!) {
  runOrError(runId: $runId) {
    __typename
    ... on Run {
      status
      startTime
      endTime
      assetMaterializations {
        assetKey { path }
        partition
        metadataEntries {
          label
          ... on TextMetadataEntry { text }
          ... on IntMetadataEntry { intValue }
        }
      }
    }
    ... on Error { message }
  }
}
"""

FAILURE = """
query Failure($runId: ID!) {
  logsForRun(runId: $runId, limit: 1000) {
    __typename
    ... on EventConnection {
      events {
        __typename
        ... on ExecutionStepFailureEvent { error { className message cause { className message } } }
        ... on RunFailureEvent { message }
      }
    }
  }
}
"""

# Dagster's run statuses as the portal's job states.
STATES = {"QUEUED": "queued", "NOT_STARTED": "queued", "STARTING": "queued", "MANAGED": "queued",
          "STARTED": "running", "CANCELING": "running",
          "SUCCESS": "succeeded", "FAILURE": "failed", "CANCELED": "failed"}


@dataclass
class RunState:
    """What the portal's job takes from its run."""

    state: str  # queued, running, succeeded, failed
    started: float | None = None  # epoch seconds
    finished: float | None = None
    export_id: str | None = None
    rows: int | None = None
    bytes: int | None = None
    error: str | None = None


class DagsterRuns:
    """Launch and follow ``tenant_export`` runs on the webserver ``portal_dagster_url``."""

    def __init__(self, settings: Settings) -> None:
        assert settings.portal_dagster_url
        self.url = settings.portal_dagster_url
        self.location = settings.portal_dagster_location

    def _ask(self, query: str, variables: dict[str, Any]) -> dict[str, Any]:
        return graphql(self.url, query, variables, timeout=30,
                       fix="start the Dagster webserver, or unset portal_dagster_url to run exports in the portal")

    def launch(self, clinic: str, config: dict[str, Any], tags: dict[str, str]) -> str:
        """Add the clinic's partition if missing (the sync sensor may not have run yet) and launch its run."""
        repo = {"repositoryLocationName": self.location, "repositoryName": REPOSITORY}
        added = self._ask(ADD_PARTITION, {"repo": repo, "name": PARTITIONS, "key": clinic})["addDynamicPartition"]
        if added["__typename"] not in ("AddDynamicPartitionSuccess", "DuplicateDynamicPartitionError"):
            raise _refused(added)
        params = {"selector": {**repo, "jobName": JOB}, "runConfigData": {"ops": {ASSET[0]: {"config": config}}},
                  "executionMetadata": {"tags": [{"key": k, "value": v} for k, v in
                                                 {**tags, "dagster/partition": clinic}.items()]}}
        launched = self._ask(LAUNCH, {"params": params})["launchRun"]
        if launched["__typename"] != "LaunchRunSuccess":
            raise _refused(launched)
        return launched["run"]["runId"]

    def state(self, run_id: str, clinic: str) -> RunState:
        """The run's state; when it succeeded, the export it materialized for ``clinic``'s partition."""
        run = self._ask(RUN, {"runId": run_id})["runOrError"]
        if run["__typename"] == "RunNotFoundError":
            return RunState("failed", error=f"the Dagster run {run_id} no longer exists")
        if run["__typename"] != "Run":
            raise _refused(run)
        out = RunState(STATES.get(run["status"], "running"), run.get("startTime"), run.get("endTime"))
        if out.state == "succeeded":
            ours = [m for m in run["assetMaterializations"] if m["assetKey"]["path"] == ASSET and m["partition"] == clinic]
            meta = {e["label"]: e.get("text", e.get("intValue")) for e in ours[-1]["metadataEntries"]} if ours else {}
            if not meta.get("export_id"):
                return RunState("failed", out.started, out.finished,
                                error=f"the Dagster run {run_id} succeeded without materializing {ASSET[0]} for the clinic")
            out.export_id, out.rows, out.bytes = meta["export_id"], meta.get("rows"), meta.get("bytes")
        elif out.state == "failed":
            out.error = self.failure(run_id, canceled=run["status"] == "CANCELED")
        return out

    def failure(self, run_id: str, *, canceled: bool) -> str:
        """Why the run failed, as a person reads it: the export's own refusal (a DrpError's problem), else the
        exception's type; never a traceback nor an unexpected exception's text."""
        if canceled:
            return f"the Dagster run {run_id} was canceled"
        logs = self._ask(FAILURE, {"runId": run_id})["logsForRun"]
        for event in logs.get("events", []):
            error = event.get("error")
            if event["__typename"] == "ExecutionStepFailureEvent" and error:
                return readable_error(error.get("cause") or error)
        return f"the Dagster run {run_id} failed before the export started (see the run in the Dagster UI)"


def readable_error(error: dict[str, Any]) -> str:
    """A serialized Python error as the job's reason (the worker records DrpError.problem the same way)."""
    name = error.get("className") or "an error"
    if name in _drp_error_names():  # the message is "module.Class: problem\n  fix: ..."
        message = str(error.get("message", ""))
        return message.split(f"{name}: ", 1)[-1].split("\n  fix: ")[0].strip()[:2000]
    return f"{name}: the export failed"


def _drp_error_names() -> set[str]:
    names, todo = set(), [DrpError]
    while todo:
        cls = todo.pop()
        names.add(cls.__name__)
        todo += cls.__subclasses__()
    return names


def _refused(answer: dict[str, Any]) -> DrpError:
    detail = answer.get("message") or "; ".join(e["message"] for e in answer.get("errors", [])) or answer["__typename"]
    return DrpError(f"Dagster refused the tenant_export run: {str(detail)[:500]}",
                    fix="check portal_dagster_location and that the code location defines tenant_export_job")
