"""One interface for where jobs run: a Kubernetes cluster (``kubernetes.py``) or processes on
this machine (``local.py``). ``launcher.api`` and the CLI pick one; every verb of the CLI is a
method here (as kubeflow/sdk's ``backends/base.py`` does for its trainer client)."""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from trainer import contract, fields


@dataclass
class WorkerState:
    """One completion index: its newest pod (or process) and how often it was replaced."""

    index: int
    pod: str
    phase: str
    restarts: int
    detail: str = ""


@dataclass
class JobStatus:
    """What ``launcher status`` shows."""

    name: str
    namespace: str
    phase: str
    workers: int
    succeeded: int
    failed_indexes: str
    indexes: list[WorkerState] = field(default_factory=list)
    explanation: str = ""
    step: int | None = None
    steps: int | None = None
    run_dir: str | None = None
    records: str | None = None  # what the workers' scans of the records found, one line

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Submission:
    """What a submit did: the objects applied (or the Job that ran) and the checks it made."""

    objects: list[dict[str, Any]]
    checks: list[Any] = field(default_factory=list)


def steps_of(job: dict[str, Any]) -> int | None:
    """The training steps a rendered Job asks for (its trainer's ``--steps``), if it says."""
    containers = job["spec"]["template"]["spec"]["containers"]
    text = fields.value_in_args(containers[0].get("args") or [], "steps")
    return int(text) if text and text.isdigit() else None


def run_dir_of(job: dict[str, Any]) -> str | None:
    """The run directory a rendered Job writes to (its annotation)."""
    return (job["metadata"].get("annotations") or {}).get(contract.RUN_DIR_ANNOTATION)


Warn = Callable[[str], None]


class Backend(abc.ABC):
    """Where jobs run. A job is named by ``namespace`` and ``name`` as on Kubernetes; a
    ``namespace`` of None is the backend's default."""

    @abc.abstractmethod
    def submit(self, spec: Any, objects: list[dict[str, Any]], replace: bool = False,
               dry_run: bool = False, checks: bool = True) -> Submission:
        """Start the job whose rendered objects these are (the local backend runs it to its
        end)."""

    @abc.abstractmethod
    def status(self, name: str, namespace: str | None = None) -> JobStatus:
        """Phase, workers, progress and, when it failed, why."""

    @abc.abstractmethod
    def logs(self, name: str, namespace: str | None = None, index: int | None = None,
             tail: int | None = None) -> list[str]:
        """Every worker's log lines, prefixed ``[index]``."""

    @abc.abstractmethod
    def follow(self, name: str, namespace: str | None, write: Callable[[str], None],
               index: int | None = None) -> None:
        """Stream the workers' logs until the job ends."""

    @abc.abstractmethod
    def delete(self, name: str, namespace: str | None = None, purge: bool = False) -> list[str]:
        """Delete what the job consists of (``purge``: its run directory too, when it is
        provably this job's); what was deleted."""

    @abc.abstractmethod
    def list(self, namespace: str | None = None, warn: Warn | None = None
             ) -> list[dict[str, Any]]:
        """The jobs this backend knows: name, namespace, phase, workers, created, runDir."""
