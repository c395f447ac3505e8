"""Typed errors. The CLI turns each into one line on stderr and a non-zero exit."""

from __future__ import annotations


class LauncherError(Exception):
    """Base class of every error the launcher reports to the user."""

    exit_code = 1


class UsageError(LauncherError):
    """A command-line argument cannot be used as given (a path that cannot be written, ...)."""

    exit_code = 2


class SpecError(LauncherError):
    """The job spec (file, ``--set`` or flags) is invalid; ``field`` is its dotted path."""

    exit_code = 2

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}" if field else message)


class ManifestError(LauncherError):
    """A rendered object breaks the Kubernetes schema or a cross-field rule."""

    exit_code = 3

    def __init__(self, obj: str, message: str) -> None:
        self.obj = obj
        self.message = message
        super().__init__(f"{obj}: {message}")
