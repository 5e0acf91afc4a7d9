"""The progress callback every long core operation takes: backup, restore, export, retention.

``progress(phase, done, total)``: `done` of `total` (None when unknown) in `phase`. A phase
counts bytes unless named "name (unit)", e.g. "restore (TOC entries)", which counts units;
a caller may declare another default unit (export counts files, retention rows). The CLI
draws it (cli/common.progress_bar); Dagster ops log it. Core never draws anything.
"""

from __future__ import annotations

from collections.abc import Callable

Progress = Callable[[str, int, int | None], None]
