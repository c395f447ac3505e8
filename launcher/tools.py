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


def source_root() -> Path:
    """The checkout this launcher runs from (images/ and manifests/ live there)."""
    root = Path(__file__).resolve().parent.parent
    if not (root / "images" / "Dockerfile").is_file():
        raise LauncherError("images/Dockerfile not found: run from a source checkout")
    return root
