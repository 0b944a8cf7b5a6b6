"""Build hook: the wheel carries GraphiQL's browser assets when the build machine can fetch them.

Everything else about the package is declared in pyproject.toml.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

FETCH = Path(__file__).resolve().parent / "scripts" / "fetch-graphiql"


class BuildWithGraphiQL(build_py):
    """``build_py`` that first runs ``scripts/fetch-graphiql``, before the package data
    (``app/static/**``) is collected; when the fetch cannot run (no npm, no network, no
    bash) the build still succeeds, and the served page says how to add the files."""

    def run(self) -> None:
        problem = fetch_graphiql()
        if problem:
            self.warn(f"GraphiQL assets not fetched ({problem}); building without them")
        super().run()


def fetch_graphiql() -> str | None:
    """Run the fetch with this interpreter (the build environment has Strawberry);
    return why it failed, or None."""
    if not FETCH.is_file():
        return f"{FETCH} is not in this source tree"
    env = {**os.environ, "PYTHON": sys.executable}
    try:
        # Our own script with a fixed argument list; bash from PATH, as its shebang asks.
        done = subprocess.run(  # noqa: S603
            ["bash", str(FETCH)],  # noqa: S607
            env=env,
            timeout=600,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    return f"{FETCH.name} exited with {done.returncode}" if done.returncode else None


setup(cmdclass={"build_py": BuildWithGraphiQL})
