"""Node for the tests that run real JavaScript clients: the tools, and a folder's packages
installed exactly as its lock file says."""

from __future__ import annotations

import fcntl
import shutil
import subprocess
from pathlib import Path

import pytest


def tool(name: str) -> str:
    """The path of ``name`` (node, npm); a missing one fails the test, never skips it."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is required for the JavaScript client tests")
    return path


def npm_ci(folder: Path) -> None:
    """``npm ci`` in ``folder`` unless its ``node_modules`` is already the locked tree (one
    test process at a time: the suite runs in several with pytest-xdist)."""
    with open(folder / ".npm-ci.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (folder / "node_modules" / ".package-lock.json").is_file():
            return
        done = subprocess.run(  # noqa: S603
            [tool("npm"), "ci", "--no-audit", "--no-fund"],
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
    assert done.returncode == 0, f"npm ci in {folder} failed:\n{done.stdout}\n{done.stderr}"
