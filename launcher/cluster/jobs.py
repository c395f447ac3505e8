"""Reading the jobs this tool manages: which objects are ours, the list of jobs, a job's worker
pods, and their logs (replaced pods included, or followed as they are written)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from launcher.cluster.client import Kube, KubeError
from launcher.cluster.status import job_phase, owned_pods, pod_index
from launcher.errors import LauncherError
from trainer import contract

MANAGED = f"{contract.LABEL_MANAGED_BY}={contract.MANAGER}"


def owned(obj: dict[str, Any], job_name: str) -> bool:
    """Whether this tool created ``obj`` for the job ``job_name``."""
    labels = obj.get("metadata", {}).get("labels") or {}
    return labels.get(contract.LABEL_MANAGED_BY) == contract.MANAGER and \
        labels.get(contract.LABEL_INSTANCE) == job_name


def foreign(kind: str, namespace: str, name: str) -> str:
    """The refusal for an object of the same name that this tool did not create."""
    return (f"{kind} {namespace}/{name} exists and was not created by launcher for this job "
            f"(no {contract.LABEL_MANAGED_BY}={contract.MANAGER}, "
            f"{contract.LABEL_INSTANCE}={name} labels): not touching it; choose another job name")


def list_jobs(kube: Kube, namespace: str | None,
              warn: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Jobs this tool manages: name, namespace, phase, workers, creation time, run directory.

    Without ``namespace``: every namespace, or, for a user who may not list Jobs cluster-wide,
    every namespace where they may (``warn`` says which were left out)."""
    try:
        jobs = kube.list("Job", namespace, MANAGED)
    except KubeError as err:
        if namespace is not None or not err.forbidden:
            raise
        jobs = _readable_jobs(kube, warn or (lambda _: None))
    rows = []
    for job in jobs:
        meta = job["metadata"]
        rows.append({"name": meta["name"], "namespace": meta["namespace"],
                     "phase": job_phase(job), "workers": job["spec"].get("completions", 1),
                     "created": meta.get("creationTimestamp", ""),
                     "runDir": meta.get("annotations", {}).get(contract.RUN_DIR_ANNOTATION, "")})
    return sorted(rows, key=lambda r: (r["namespace"], r["name"]))


def _readable_jobs(kube: Kube, warn: Callable[[str], None]) -> list[dict[str, Any]]:
    try:
        namespaces = [n["metadata"]["name"]
                      for n in kube.request("GET", "/api/v1/namespaces").get("items", [])]
    except KubeError as err:
        if not err.forbidden:
            raise
        warn(f"this user may not list jobs in all namespaces: showing namespace "
             f"{kube.namespace!r} (the context's); use -n for another")
        return kube.list("Job", kube.namespace, MANAGED)
    jobs, hidden = [], []
    for ns in namespaces:
        try:
            jobs += kube.list("Job", ns, MANAGED)
        except KubeError as err:
            if not err.forbidden:
                raise
            hidden.append(ns)
    if hidden:
        warn(f"this user may not list jobs in {len(hidden)} namespace(s): "
             f"{', '.join(hidden[:10])}{' ...' if len(hidden) > 10 else ''}")
    return jobs


def worker_pods(kube: Kube, name: str, namespace: str, index: int | None = None
                ) -> list[dict[str, Any]]:
    """The pods of the job ``name`` (this Job object's, not an earlier one's), oldest first,
    optionally one index only. Raises if the job does not exist."""
    job = kube.get("Job", namespace, name)
    if job is None:
        raise LauncherError(f"job {namespace}/{name} not found")
    pods = owned_pods(kube.list("Pod", namespace, f"{contract.JOB_NAME_LABEL}={name}"), job)
    pods = [p for p in pods if index is None or pod_index(p) == index]
    return sorted(pods, key=lambda p: (p["metadata"].get("creationTimestamp", ""), pod_index(p),
                                       p["metadata"]["name"]))


def _started(pod: dict[str, Any]) -> bool:
    """Whether a container ran, so that the kubelet has a log to give."""
    return bool(pod["spec"].get("nodeName")) and \
        pod.get("status", {}).get("phase") != "Pending"


def logs(kube: Kube, name: str, namespace: str, index: int | None = None,
         tail: int | None = None) -> list[str]:
    """Every worker's log lines, prefixed ``[index]``, replaced pods included (oldest first)."""
    lines = []
    for pod in worker_pods(kube, name, namespace, index):
        if not _started(pod):
            continue
        prefix = f"[{pod_index(pod)}]"
        text = kube.logs(namespace, pod["metadata"]["name"], tail)
        lines += [f"{prefix} {line}" for line in text.splitlines()]
    return lines


def follow(kube: Kube, name: str, namespace: str, write: Callable[[str], None],
           index: int | None = None, poll: float = 2.0) -> None:
    """Stream every worker's log as written, picking up replacement pods, until the job ends.
    Raises the first error a stream met once every stream has ended."""
    started: set[str] = set()
    threads: list[threading.Thread] = []
    errors: list[LauncherError] = []
    lock = threading.Lock()

    def pump(pod: dict[str, Any]) -> None:
        prefix = f"[{pod_index(pod)}]"
        try:
            for line in kube.follow_logs(namespace, pod["metadata"]["name"]):
                with lock:
                    write(f"{prefix} {line}")
        except LauncherError as err:
            errors.append(LauncherError(f"{pod['metadata']['name']}: {err}"))

    while True:
        for pod in worker_pods(kube, name, namespace, index):
            pod_name = pod["metadata"]["name"]
            if pod_name in started or not _started(pod):
                continue
            started.add(pod_name)
            thread = threading.Thread(target=pump, args=(pod,), daemon=True)
            thread.start()
            threads.append(thread)
        job = kube.get("Job", namespace, name)
        if job is None or job_phase(job) in ("Succeeded", "Failed"):
            break
        time.sleep(poll)
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
