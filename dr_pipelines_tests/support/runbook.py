"""Run a runbook's ```bash blocks as written, section by section (## headings), in one bash -euo pipefail."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

RUNBOOKS = Path(__file__).resolve().parents[2] / "runbooks"


def sections(runbook: Path) -> dict[str, list[str]]:
    """Heading (without '## ') -> the bash blocks under it; the text before the first heading is ''."""
    parts = re.split(r"^## ", runbook.read_text(), flags=re.M)
    out = {"": re.findall(r"```bash\n(.*?)```", parts[0], flags=re.S)}
    for part in parts[1:]:
        heading, _, body = part.partition("\n")
        out[heading.strip()] = re.findall(r"```bash\n(.*?)```", body, flags=re.S)
    return out


def run_sections(runbook: Path, prefixes: list[str], env: dict[str, str], cwd: Path,
                 timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """The preamble's blocks, then those of each section whose heading starts with one of ``prefixes``, in order."""
    found = sections(runbook)
    blocks = list(found[""])
    for prefix in prefixes:
        heading = next(h for h in found if h and h.startswith(prefix))
        blocks += found[heading]
    script = "set -euo pipefail\n" + "\n".join(blocks)
    return subprocess.run(["bash", "-c", script], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
