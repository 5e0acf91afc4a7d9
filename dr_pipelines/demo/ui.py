"""Ask a running Dagster webserver, through GraphQL, what it serves: the demo's proof of life."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from dr_pipelines.core.errors import DrpError
from dr_pipelines.core.graphql import graphql

LOCATION = "dr_pipelines"  # the code location the demo serves

LOCATIONS_QUERY = """
{
  workspaceOrError {
    __typename
    ... on Workspace {
      locationEntries {
        name
        locationOrLoadError {
          __typename
          ... on RepositoryLocation {
            repositories {
              name
              assetNodes { assetKey { path } }
              schedules { name scheduleState { status } }
              sensors { name sensorState { status } }
            }
          }
          ... on PythonError { message }
        }
      }
    }
    ... on PythonError { message }
  }
}
"""


@dataclass
class LocationInfo:
    name: str
    assets: list[str] = field(default_factory=list)
    schedules: dict[str, str] = field(default_factory=dict)
    sensors: dict[str, str] = field(default_factory=dict)
    error: str | None = None


def code_locations(url: str, timeout: float = 10) -> list[LocationInfo]:
    """Every code location the webserver loaded, with its assets, schedules and sensors."""
    data = graphql(url, LOCATIONS_QUERY, timeout=timeout, fix="start it with `drp demo up`")["workspaceOrError"]
    if data["__typename"] != "Workspace":
        raise DrpError(f"Dagster workspace failed to load: {data.get('message')}", fix="check the webserver log")
    out = []
    for entry in data["locationEntries"]:
        loc = entry["locationOrLoadError"] or {}
        info = LocationInfo(name=entry["name"])
        if loc.get("__typename") == "PythonError":
            info.error = loc["message"]
        for repo in loc.get("repositories", []):
            info.assets += ["/".join(a["assetKey"]["path"]) for a in repo["assetNodes"]]
            info.schedules.update({s["name"]: s["scheduleState"]["status"] for s in repo["schedules"]})
            info.sensors.update({s["name"]: s["sensorState"]["status"] for s in repo["sensors"]})
        out.append(info)
    return out


def wait_until_served(url: str, *, alive: Callable[[], bool], waiting: Callable[[float], None],
                      interval: float = 0.5, report_every: float = 5.0) -> LocationInfo | None:
    """Poll the UI's GraphQL API until it serves LOCATION (loaded, or failed with its error).

    `dagster dev` takes seconds to bind and load the location; the URL is announced only after
    this returns. None if the UI process died first (alive() turned false).
    """
    start = last_report = time.monotonic()
    while alive():
        try:
            ours = [loc for loc in code_locations(url, timeout=2) if loc.name == LOCATION]
            if ours and (ours[0].assets or ours[0].error):
                return ours[0]
        except DrpError:
            pass  # not listening yet, or still loading the workspace
        now = time.monotonic()
        if now - last_report >= report_every:
            waiting(now - start)
            last_report = now
        time.sleep(interval)
    return None
