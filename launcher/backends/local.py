"""The local backend: a job's rendered Job run as processes on this machine (``processes``), to
its end, in the foreground (``launcher run-local``).

Each job keeps a record and its workers' output in a state directory (``$LAUNCHER_STATE_DIR``,
else ``$XDG_STATE_HOME/tf-finetune-launcher``, else ``~/.local/state/tf-finetune-launcher``), under
``local/<namespace>/<name>/``: so ``status``, ``logs``, ``list`` and ``delete`` with ``--local``
work afterwards, and from another terminal while it runs. Like a Job's uid, a run's uid is
written to its run directory's ``job.json``, so that ``delete --purge`` deletes only that run's.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

from launcher.backends import processes
from launcher.backends.base import (
    Backend,
    JobStatus,
    Submission,
    Warn,
    WorkerState,
    run_dir_of,
    steps_of,
)
from launcher.errors import LauncherError, UsageError
from launcher.render import job_object
from launcher.runs import purge_plan, record_run_dir, records_summary, run_progress

RECORD = "job.json"
LOG = "workers.log"
DEFAULT_NAMESPACE = "default"


def state_dir(env: dict[str, str] | None = None) -> Path:
    """Where local jobs are recorded."""
    env = dict(os.environ) if env is None else env
    if env.get("LAUNCHER_STATE_DIR"):
        return Path(env["LAUNCHER_STATE_DIR"])
    base = env.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "tf-finetune-launcher"


class _Tee:
    """Worker output to the terminal and to the job's log file."""

    def __init__(self, out: TextIO, log: TextIO) -> None:
        self.out, self.log = out, log

    def write(self, text: str) -> int:
        self.log.write(text)
        self.log.flush()
        return self.out.write(text)

    def flush(self) -> None:
        self.out.flush()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class LocalBackend(Backend):
    """Jobs as processes on 127.0.0.1, recorded under ``root`` (``state_dir()``)."""

    def __init__(self, root: Path | None = None, out: TextIO | None = None,
                 grace: float | None = None) -> None:
        self.root = (root or state_dir()) / "local"
        self.out = out or sys.stdout
        self.grace = grace

    def _dir(self, name: str, namespace: str | None) -> Path:
        return self.root / (namespace or DEFAULT_NAMESPACE) / name

    def _record(self, name: str, namespace: str | None) -> dict[str, Any]:
        path = self._dir(name, namespace) / RECORD
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise LauncherError(f"local job {namespace or DEFAULT_NAMESPACE}/{name} not found "
                                f"(in {self.root})") from None
        if record.get("phase") == "Running" and not _alive(int(record.get("pid", 0))):
            record["phase"] = "Failed"
            record["error"] = (f"the launcher (pid {record.get('pid')}) ended without recording "
                               "how the run ended")
        return record

    def _write(self, record: dict[str, Any]) -> None:
        meta = record["job"]["metadata"]
        path = self._dir(meta["name"], meta["namespace"]) / RECORD
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        tmp.replace(path)

    def submit(self, spec: Any, objects: list[dict[str, Any]], replace: bool = False,
               dry_run: bool = False, checks: bool = True) -> Submission:
        """Run the Job to its end; raises ``LocalRunError`` if it fails. A job of the same
        name that ran before is replaced (its run directory is kept: the run resumes)."""
        if dry_run:
            raise UsageError("--dry-run: the local backend has no dry run (use `launcher "
                             "render`)")
        job = job_object(objects)
        meta = job["metadata"]
        try:
            previous = self._record(meta["name"], meta["namespace"])
        except LauncherError:
            previous = None
        if previous is not None and previous["phase"] == "Running":
            raise LauncherError(f"local job {meta['namespace']}/{meta['name']} is running "
                                f"(launcher pid {previous['pid']})")
        job = {**job, "metadata": {**meta, "uid": str(uuid.uuid4()),
                                   "creationTimestamp": _now()}}
        record = {"job": job, "phase": "Running", "pid": os.getpid(), "attempts": 0,
                  "codes": {}, "error": ""}
        directory = self._dir(meta["name"], meta["namespace"])
        directory.mkdir(parents=True, exist_ok=True)
        self._write(record)
        record_run_dir(spec, job)

        groups: list[processes.Group] = []  # one per attempt: the newest has the exit codes

        def started(group: processes.Group) -> None:
            groups.append(group)
            record["attempts"] = len(groups)
            self._write(record)

        grace = spec.scheduling.termination_grace_period_seconds if self.grace is None \
            else self.grace
        with (directory / LOG).open("w", encoding="utf-8") as log:
            try:
                processes.run_local(job, retries=spec.scheduling.retries_per_index,
                                    grace=grace, out=_Tee(self.out, log), on_start=started)
                record["phase"] = "Succeeded"
            except BaseException as err:  # Ctrl-C included: the record says how it ended
                record["phase"], record["error"] = "Failed", str(err) or type(err).__name__
                raise
            finally:
                if groups:
                    record["codes"] = {str(i): c for i, c in groups[-1].attempt.codes.items()}
                record["ended"] = _now()
                self._write(record)
        return Submission([job])

    def status(self, name: str, namespace: str | None = None) -> JobStatus:
        record = self._record(name, namespace)
        job = record["job"]
        workers = int(job["spec"].get("completions", 1))
        codes = record.get("codes", {})
        restarts = max(int(record.get("attempts", 1)) - 1, 0)
        indexes = []
        for index in range(workers):
            code = codes.get(str(index))
            phase = record["phase"] if code is None else (
                "Succeeded" if code == 0 else "Failed")
            indexes.append(WorkerState(index, "local", phase, restarts,
                                       "" if code is None else f"exit {code}"))
        run_dir = run_dir_of(job)
        return JobStatus(
            name=name, namespace=namespace or DEFAULT_NAMESPACE, phase=record["phase"],
            workers=workers, succeeded=sum(1 for c in codes.values() if c == 0),
            failed_indexes=",".join(i for i, c in codes.items() if c not in (0, None)),
            indexes=indexes, explanation=record.get("error", ""),
            step=run_progress(run_dir) if run_dir else None, steps=steps_of(job),
            run_dir=run_dir, records=records_summary(run_dir) if run_dir else None)

    def _lines(self, name: str, namespace: str | None) -> list[str]:
        self._record(name, namespace)  # not found: says so
        path = self._dir(name, namespace) / LOG
        return path.read_text(encoding="utf-8").splitlines() if path.exists() else []

    def logs(self, name: str, namespace: str | None = None, index: int | None = None,
             tail: int | None = None) -> list[str]:
        lines = [line for line in self._lines(name, namespace)
                 if index is None or line.startswith(f"[{index}] ")]
        if tail is None:
            return lines
        # The last ``tail`` lines of each worker (as for each pod on Kubernetes), in order.
        left: dict[str, int] = {}
        kept = []
        for line in reversed(lines):
            worker = line.split(" ", 1)[0]
            left[worker] = left.get(worker, tail) - 1
            if left[worker] >= 0:
                kept.append(line)
        return kept[::-1]

    def follow(self, name: str, namespace: str | None, write: Callable[[str], None],
               index: int | None = None, poll: float = 0.5) -> None:
        seen = 0
        while True:
            running = self._record(name, namespace)["phase"] == "Running"
            lines = self.logs(name, namespace, index)
            for line in lines[seen:]:
                write(line)
            seen = len(lines)
            if not running:
                return
            time.sleep(poll)

    def delete(self, name: str, namespace: str | None = None, purge: bool = False) -> list[str]:
        """The job's record and log; ``purge``: its run directory too, once it is checked to
        be this run's (``job.json`` names its uid), before anything is deleted."""
        record = self._record(name, namespace)
        if record["phase"] == "Running":
            raise LauncherError(f"local job {namespace or DEFAULT_NAMESPACE}/{name} is running "
                                f"(launcher pid {record['pid']}): stop it first (Ctrl-C)")
        purger = purge_plan(record["job"]) if purge else None
        directory = self._dir(name, namespace)
        for path in directory.iterdir():
            path.unlink()
        directory.rmdir()
        gone = [f"local job {namespace or DEFAULT_NAMESPACE}/{name}"]
        if purger is not None:
            gone.append(purger())
        return gone

    def list(self, namespace: str | None = None, warn: Warn | None = None
             ) -> list[dict[str, Any]]:
        rows = []
        for path in sorted(self.root.glob(f"{namespace or '*'}/*/{RECORD}")):
            record = self._record(path.parent.name, path.parent.parent.name)
            meta = record["job"]["metadata"]
            rows.append({"name": meta["name"], "namespace": meta["namespace"],
                         "phase": record["phase"],
                         "workers": record["job"]["spec"].get("completions", 1),
                         "created": meta.get("creationTimestamp", ""),
                         "runDir": run_dir_of(record["job"]) or ""})
        return rows


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
