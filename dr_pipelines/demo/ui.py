"""Ask a running Dagster webserver, through GraphQL, what it serves: the demo's proof of life."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass, field

from dr_pipelines.core.errors import DrpError

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


def graphql(url: str, query: str, timeout: float = 10) -> dict:
    body = json.dumps({"query": query}).encode()
    req = urllib.request.Request(url.rstrip("/") + "/graphql", data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            payload = json.loads(resp.read())
    except (urllib.error.URLError, OSError) as exc:
        raise DrpError(f"Dagster UI at {url} is not answering ({type(exc).__name__})", fix="start it with `drp demo up`") from None
    if payload.get("errors"):
        raise DrpError(f"Dagster GraphQL error: {payload['errors'][0].get('message')}", fix="check the webserver log")
    return payload["data"]


def code_locations(url: str) -> list[LocationInfo]:
    """Every code location the webserver loaded, with its assets, schedules and sensors."""
    data = graphql(url, LOCATIONS_QUERY)["workspaceOrError"]
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
