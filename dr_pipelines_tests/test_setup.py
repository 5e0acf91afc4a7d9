"""scripts/demo and scripts/test install from the lock (requirements/*.txt), and refuse a stale one.

Run on copies of the scripts, pyproject.toml and requirements/ in a temporary folder, so a pin can be
changed without touching the checkout; nothing here installs anything.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dr_pipelines_tests.conftest import REPO_ROOT

STALE = "the dependencies in pyproject.toml changed since requirements/test.txt was locked"
# Should a check wrongly let an install start, it fails at once instead of downloading.
NO_INSTALL = {"DRP_INSTALLER": "pip", "PIP_NO_INDEX": "1"}


def copy_of_repo(tmp_path: Path) -> Path:
    root = tmp_path / "clone"
    shutil.copytree(REPO_ROOT / "scripts", root / "scripts")
    shutil.copytree(REPO_ROOT / "requirements", root / "requirements")
    shutil.copy(REPO_ROOT / "pyproject.toml", root / "pyproject.toml")
    return root


def run_bash(root: Path, script: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-c", f"source scripts/_common.sh && {script}"], cwd=root, capture_output=True,
                          text=True, timeout=60, env={**os.environ, **NO_INSTALL, "PY": sys.executable, **env})


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def test_the_committed_lock_matches_pyproject(tmp_path: Path) -> None:
    root = copy_of_repo(tmp_path)
    result = run_bash(root, 'check_lock "$REPO_ROOT/requirements/test.txt" && '
                            'check_lock "$REPO_ROOT/requirements/runtime.txt" && echo fresh')
    assert (result.returncode, result.stdout) == (0, "fresh\n"), result.stderr

    edit(root / "pyproject.toml", "# Our own code talks", "# A comment changed; our own code talks")
    assert run_bash(root, 'check_lock "$REPO_ROOT/requirements/test.txt"').returncode == 0  # comments do not count


def test_a_pin_changed_without_refreshing_the_lock_is_refused(tmp_path: Path) -> None:
    root = copy_of_repo(tmp_path)
    edit(root / "pyproject.toml", '"boto3>=1.34"', '"boto3>=1.35"')
    result = run_bash(root, 'check_lock "$REPO_ROOT/requirements/test.txt"')
    assert result.returncode == 1
    assert STALE in result.stderr
    assert "Refresh the lock with: scripts/lock" in result.stderr


@pytest.mark.parametrize("script", ["scripts/test", "scripts/demo"])
def test_the_entry_scripts_refuse_a_stale_lock_before_installing(tmp_path: Path, script: str) -> None:
    root = copy_of_repo(tmp_path)
    edit(root / "pyproject.toml", '"pytest>=8"', '"pytest>=8.1"')  # an extra's pin counts too
    venv = tmp_path / "venv"
    result = subprocess.run([str(root / script), "--version"], cwd=root, capture_output=True, text=True, timeout=60,
                            env={**os.environ, **NO_INSTALL, "DRP_VENV": str(venv)})
    assert result.returncode == 1
    assert f"error: {STALE}" in result.stderr and "scripts/lock" in result.stderr
    assert not venv.exists()  # refused before making or touching a venv


def test_an_up_to_date_venv_is_reused_with_one_line(tmp_path: Path) -> None:
    root = copy_of_repo(tmp_path)
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(sys.executable)
    lock, pyproject = root / "requirements" / "test.txt", root / "pyproject.toml"
    key = hashlib.sha256(lock.read_bytes() + pyproject.read_bytes()).hexdigest()[:16]
    stamp = venv / f".drp-installed-{key}-test"
    stamp.touch()

    result = run_bash(root, "ensure_venv test", DRP_VENV=str(venv))
    assert result.returncode == 0, result.stderr
    assert result.stderr == f"{venv} is up to date with requirements/test.txt (lock {key}): reusing it\n"
    assert sorted(p.name for p in venv.iterdir()) == sorted(["bin", stamp.name])  # nothing installed
