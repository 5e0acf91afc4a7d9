"""The Dagster layer: one folder per area, each thin over dr_pipelines.core.

Every area folder has the same file split:

- ``definitions.py``: ``build(settings) -> dg.Definitions``, what ``dr_pipelines/definitions.py``
  merges; an area small enough keeps everything here;
- ``assets.py``, ``checks.py``, ``sensors.py``, ``schedules.py``, ``jobs.py``: only where the area
  has enough of that kind to deserve its own file (``backups/history.py`` reads Dagster's own run
  history, which only this layer can).

Machinery shared by several areas (the settings resource, default schedule/sensor status)
lives in ``lib/``. A definition computes nothing itself: it calls the core use case (backup,
verify, drill, export, retention, status) the CLI calls, and turns its result into metadata.
"""
