"""What every `drp` command shares: settings, output (table or --json), progress bars."""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from dr_pipelines.core.health.report import human_size

if TYPE_CHECKING:  # settings (pydantic) load when a command reads them, not for --help or `drp key`
    from dr_pipelines.core.settings import Settings

# Piped output (logs, runbooks, tests) gets wide lines instead of rich's 80-column default.
out = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 160)
state: dict[str, Any] = {"config": None, "demo_noted": False}


def settings() -> Settings:
    from dr_pipelines.core.settings import load_settings

    return load_settings(config_file())


def _env_overrides() -> list[str]:
    from dr_pipelines.core.settings import FIELDS, env_name

    return [env_name(f) for f in FIELDS if env_name(f) in os.environ]


def config_file() -> Path | None:
    """--config / DRP_CONFIG; else, with no DRP_* setting either, the demo's settings file when a
    demo was started here (`drp demo up` writes it), so `drp status` in a second terminal sees the demo.
    """
    if state["config"] or _env_overrides():
        return state["config"]
    from dr_pipelines.demo.stack import cli_settings_file

    demo = cli_settings_file()
    if demo is not None and not state["demo_noted"]:
        state["demo_noted"] = True
        err.print(f"note: using the demo's settings from {demo} (set DRP_CONFIG or DRP_* to use others)")
    return demo


def settings_origin() -> str:
    """Where the effective settings came from, later wins (for `drp config show`)."""
    parts = ["defaults"]
    path = config_file()
    if path is not None:
        demo = state["config"] is None
        parts.append(f"{path}{' (the demo started in this checkout)' if demo else ''}")
    overrides = _env_overrides()
    if overrides:
        parts.append("environment " + ", ".join(overrides))
    return " < ".join(parts)


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


human_bytes = human_size  # one byte formatter, core's (health reports use it too)


def report_swept(work_dir: Path) -> None:
    """Sweep the throwaway clusters and staged plaintext of killed runs, and say what went (stderr)."""
    from dr_pipelines.core.pg.leases import sweep_leftovers

    for line in sweep_leftovers(Path(work_dir)):
        err.print(f"removed leftover {line}", highlight=False)


@contextmanager
def progress_bar(enabled: bool = True, *, unit: str = "bytes", one_bar: str | None = None) -> Iterator[Any]:
    """A callback(phase, done, total) drawing one bar per phase on stderr; silent when not a terminal.

    ``unit`` "bytes" shows sizes and speed; anything else ("rows") shows plain counts. A phase
    named "name (unit)", e.g. "restore (TOC entries)", always shows plain counts. With
    ``one_bar``, a single bar so named counts over all phases and says the current one
    ("export public.visits": files done of all files).
    """
    if not enabled or not err.is_terminal:
        yield None
        return
    from rich.progress import (  # here: a command run from a script or a test draws no bar and skips this
        BarColumn,
        DownloadColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        Task,
        TextColumn,
        TimeElapsedColumn,
        TransferSpeedColumn,
    )
    from rich.text import Text

    class _Amount(ProgressColumn):
        """Sizes and speed for a byte phase, "done/total" for a phase that counts something else."""

        def render(self, task: Task) -> Text:
            if task.fields.get("unit") == "bytes":
                return Text.assemble(DownloadColumn().render(task), " ", TransferSpeedColumn().render(task))
            return MofNCompleteColumn().render(task)

    bars = Progress(TextColumn("{task.description}"), BarColumn(), _Amount(), TimeElapsedColumn(), console=err,
                    transient=False)
    tasks: dict[str, Any] = {}
    if one_bar is not None:
        task = bars.add_task(one_bar, total=None, unit=unit)

        def update_one(phase: str, done: int, total: int | None) -> None:
            bars.update(task, completed=done, total=total, description=f"{one_bar} {phase}")

        with bars:
            yield update_one
        return

    def update(phase: str, done: int, total: int | None) -> None:
        if phase not in tasks:
            phase_unit = "counted" if re.search(r"\(.+\)$", phase) else unit
            tasks[phase] = bars.add_task(phase, total=total, unit=phase_unit)
        bars.update(tasks[phase], completed=done, total=total if total and total >= done else None)

    with bars:
        yield update
