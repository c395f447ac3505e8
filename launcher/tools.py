"""Running external tools (docker, kind): one place that finds them and reports failures."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

from launcher.errors import LauncherError

Runner = Callable[[Sequence[str]], int]


def run_tool(argv: Sequence[str]) -> int:
    """Run a command with inherited stdio; returns its exit code."""
    return subprocess.run(list(argv), check=False).returncode


def require(tool: str) -> str:
    """The tool's path, or a one-line error saying it is missing."""
    path = shutil.which(tool)
    if path is None:
        raise LauncherError(f"{tool}: not found on PATH")
    return path


def checked(argv: Sequence[str], runner: Runner = run_tool) -> None:
    """Run ``argv``; a non-zero exit becomes a ``LauncherError`` naming the command."""
    code = runner(argv)
    if code != 0:
        raise LauncherError(f"{' '.join(argv[:3])} ... failed with exit code {code}")


def source_root(cwd: Path | None = None) -> Path:
    """The checkout to build from (images/ and trainer/ live there): the one this launcher runs
    from (an editable install), else the current directory or the nearest one above it that
    holds ``images/Dockerfile`` and ``trainer/`` (a ``pip install .`` from a checkout)."""
    here = (cwd or Path.cwd()).resolve()
    for root in (Path(__file__).resolve().parent.parent, here, *here.parents):
        if (root / "images" / "Dockerfile").is_file() and (root / "trainer").is_dir():
            return root
    raise LauncherError(f"images/Dockerfile not found in {here} or above: run from a source "
                        "checkout of this project")
