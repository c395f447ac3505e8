"""Cluster operations on rendered jobs: submit (all or nothing), status with a one-line failure
explanation, logs of every worker, list, delete. Everything goes through ``launcher.kube``."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from launcher import contract
from launcher.errors import LauncherError
from launcher.kube import Kube, KubeError

MANAGED = f"{contract.LABEL_MANAGED_BY}={contract.MANAGER}"


class SubmitError(LauncherError):
    """Submission refused or failed; nothing this call created is left behind."""


@dataclass
class Check:
    """One pre-submit check: ``level`` is ok, warning or error."""

    level: str
    message: str


def pre_submit_checks(kube: Kube, spec: Any, objects: list[dict[str, Any]]) -> list[Check]:
    """What can be known before paying for GPUs. Errors block submission; warnings do not."""
    checks: list[Check] = []
    ns = spec.namespace
    if not kube.namespace_exists(ns):
        return [Check("error", f"namespace {ns!r} does not exist")]
    if spec.auth.service_account and kube.get("ServiceAccount", ns, spec.auth.service_account) \
            is None:
        checks.append(Check("error", f"auth.serviceAccount: ServiceAccount "
                                     f"{spec.auth.service_account!r} not found in {ns}"))
    if spec.auth.key_secret:
        secret = kube.get("Secret", ns, spec.auth.key_secret)
        if secret is None:
            checks.append(Check("error", f"auth.keySecret: Secret {spec.auth.key_secret!r} not "
                                         f"found in {ns}"))
        elif contract.KEY_SECRET_FILE not in (secret.get("data") or {}):
            checks.append(Check("error", f"auth.keySecret: Secret {spec.auth.key_secret!r} has "
                                         f"no {contract.KEY_SECRET_FILE!r} entry"))
    if spec.resources.gpus:
        offering = [n for n in kube.nodes()
                    if int(n.get("status", {}).get("allocatable", {}).get("nvidia.com/gpu", 0))]
        if not offering:
            checks.append(Check("warning", "no node offers nvidia.com/gpu now; the job waits "
                                           "for the autoscaler or fails to schedule"))
    checks.extend(storage_checks(spec))
    return checks


def storage_checks(spec: Any) -> list[Check]:
    """Inputs exist and the run directory is writable, when GCS can be reached from here."""
    try:
        from trainer.storage import Storage, StorageError
    except ImportError:
        return [Check("warning", "GCS not checked: install the [trainer] extra to check inputs")]
    storage = Storage()
    try:
        checks = []
        for label, uri in (("model.labelMap", spec.model.label_map),
                           ("model.pipelineConfig", spec.model.pipeline_config)):
            if uri and not storage.exists(uri):
                checks.append(Check("error", f"{label}: {uri} not found"))
        if spec.model.label_map and spec.model.num_classes and storage.exists(spec.model.label_map):
            from trainer.config import ConfigError, parse_label_map

            try:
                labels = parse_label_map(storage.read_text(spec.model.label_map),
                                         spec.model.label_map)
                if len(labels) != spec.model.num_classes:
                    checks.append(Check("error", f"model.numClasses: {spec.model.num_classes} "
                                                 f"but the label map has {len(labels)} classes"))
            except ConfigError as err:
                checks.append(Check("error", f"model.labelMap: {err}"))
        for i, pattern in enumerate(spec.data.train):
            if not storage.glob(pattern):
                checks.append(Check("error", f"data.train[{i}]: {pattern} matches no file"))
        probe = f"{spec.job_run_dir.rstrip('/')}/.launcher-write-check"
        storage.write_text(probe, "ok\n")
        storage.delete(probe)
        return checks
    except StorageError as err:
        return [Check("error", str(err))]
    except Exception as err:  # no credentials, no network: say so and let the user decide
        return [Check("warning", f"GCS not checked: {type(err).__name__}: "
                                 f"{str(err).splitlines()[0][:120]}")]


def _owner(job: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "batch/v1", "kind": "Job", "name": job["metadata"]["name"],
            "uid": job["metadata"]["uid"], "blockOwnerDeletion": True, "controller": False}


def submit(kube: Kube, objects: list[dict[str, Any]], replace: bool = False,
           dry_run: bool = False) -> list[dict[str, Any]]:
    """Apply the job's objects, Job first so the others can be owned by it. All or nothing:
    if any object fails, the ones this call created are deleted again."""
    job = next(o for o in objects if o["kind"] == "Job")
    name, ns = job["metadata"]["name"], job["metadata"]["namespace"]
    if kube.get("Job", ns, name) is not None:
        if not replace:
            raise SubmitError(f"job {ns}/{name} already exists; use --replace to delete it "
                              "and submit again")
        if not dry_run:
            delete(kube, name, ns, wait=True)
    ordered = [job] + [o for o in objects if o is not job]
    created: list[dict[str, Any]] = []
    applied: list[dict[str, Any]] = []
    try:
        for obj in ordered:
            if obj is not job:
                obj = {**obj, "metadata": {**obj["metadata"],
                                           "ownerReferences": [_owner(applied[0])]}}
            existed = kube.get(obj["kind"], ns, obj["metadata"]["name"]) is not None
            result = kube.apply(obj, dry_run=dry_run)
            applied.append(result)
            if not existed:
                created.append(result)
    except KubeError as err:
        if not dry_run:
            _rollback(kube, created)
        raise SubmitError(f"{obj['kind']}/{obj['metadata']['name']}: {err}; "
                          f"rolled back {len(created)} object(s) this call created") from None
    return applied


def _rollback(kube: Kube, created: list[dict[str, Any]]) -> None:
    for obj in reversed(created):
        meta = obj["metadata"]
        kube.delete(obj["kind"], meta["namespace"], meta["name"], propagation="Foreground")


def delete(kube: Kube, name: str, namespace: str, wait: bool = False,
           timeout: float = 120) -> list[str]:
    """Delete the Service and ServiceAccount, then the Job (foreground: its pods first).

    The Job owns the others, so garbage collection would remove them too, but only eventually;
    deleting them explicitly makes the result (and what is reported) certain."""
    gone = []
    for kind in ("Service", "ServiceAccount", "Job"):
        obj = kube.get(kind, namespace, name)
        if obj is None or obj["metadata"].get("labels", {}).get(contract.LABEL_MANAGED_BY) \
                != contract.MANAGER:
            continue
        if kube.delete(kind, namespace, name, propagation="Foreground"):
            gone.append(f"{kind}/{name}")
    deadline = time.monotonic() + timeout
    while wait and kube.get("Job", namespace, name) is not None:
        if time.monotonic() > deadline:
            raise LauncherError(f"job {namespace}/{name} still exists after {timeout:.0f}s")
        time.sleep(1)
    return gone


@dataclass
class WorkerState:
    """One completion index: its newest pod and how often it was replaced."""

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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def job_phase(job: dict[str, Any]) -> str:
    """Suspended, Pending, Running, Succeeded or Failed, from the Job's conditions and counts."""
    conditions = {c["type"]: c for c in job.get("status", {}).get("conditions", []) or []
                  if c.get("status") == "True"}
    if "Complete" in conditions or "SuccessCriteriaMet" in conditions:
        return "Succeeded"
    if "Failed" in conditions or "FailureTarget" in conditions:
        return "Failed"
    if "Suspended" in conditions or job.get("spec", {}).get("suspend"):
        return "Suspended"
    return "Running" if job.get("status", {}).get("active") else "Pending"


def _index(pod: dict[str, Any]) -> int:
    annotations = pod["metadata"].get("annotations", {})
    labels = pod["metadata"].get("labels", {})
    return int(annotations.get(contract.INDEX_ANNOTATION,
                               labels.get(contract.INDEX_ANNOTATION, -1)))


def _terminated(pod: dict[str, Any]) -> dict[str, Any] | None:
    for cs in pod.get("status", {}).get("containerStatuses", []) or []:
        if cs.get("name") == contract.CONTAINER_NAME:
            return cs.get("state", {}).get("terminated") or \
                cs.get("lastState", {}).get("terminated")
    return None


def _waiting(pod: dict[str, Any]) -> dict[str, Any] | None:
    for cs in pod.get("status", {}).get("containerStatuses", []) or []:
        if cs.get("state", {}).get("waiting"):
            return cs["state"]["waiting"]
    return None


def _condition(pod: dict[str, Any], kind: str) -> dict[str, Any] | None:
    return next((c for c in pod.get("status", {}).get("conditions", []) or []
                 if c.get("type") == kind), None)


def _last_error(text: str) -> str:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    return (errors or lines or [""])[-1][:300]


def explain(job: dict[str, Any], pods: list[dict[str, Any]]) -> str:
    """One sentence on why the job failed or is stuck, from the evidence; empty if healthy."""
    failed = sorted((p for p in pods if p.get("status", {}).get("phase") == "Failed"),
                    key=lambda p: p["metadata"].get("creationTimestamp", ""))
    for pod in failed:
        term = _terminated(pod) or {}
        code = term.get("exitCode")
        index = _index(pod)
        if term.get("reason") == "OOMKilled":
            return (f"worker {index} ran out of memory (OOMKilled, exit {code}): raise "
                    "resources.memory or lower the batch size")
        if code == contract.EXIT_USER_ERROR:
            detail = _last_error(term.get("message", ""))
            return f"worker {index} stopped on a user error (exit 1)" + \
                (f": {detail}" if detail else "")
    conditions = {c["type"]: c for c in job.get("status", {}).get("conditions", []) or []
                  if c.get("status") == "True"}
    failure = conditions.get("Failed") or conditions.get("FailureTarget")
    if failure:
        reason = failure.get("reason", "")
        if reason == "DeadlineExceeded":
            return "scheduling.activeDeadlineSeconds reached before the job finished"
        if reason in ("BackoffLimitExceeded", "FailedIndexes", "MaxFailedIndexesExceeded"):
            indexes = job.get("status", {}).get("failedIndexes") or "?"
            return (f"retry budget exhausted: index {indexes} failed more than "
                    f"{job['spec'].get('backoffLimitPerIndex', '?')} times "
                    "(scheduling.retriesPerIndex)")
        return f"job failed: {reason}: {failure.get('message', '')}".strip()
    for pod in pods:
        waiting = _waiting(pod) or {}
        if waiting.get("reason") in ("ErrImagePull", "ImagePullBackOff", "InvalidImageName"):
            return (f"worker {_index(pod)} cannot pull its image ({waiting['reason']}): "
                    f"{waiting.get('message', '')}".strip())
        scheduled = _condition(pod, "PodScheduled")
        if scheduled and scheduled.get("status") == "False" and \
                scheduled.get("reason") == "Unschedulable":
            message = scheduled.get("message", "")
            if "nvidia.com/gpu" in message:
                return (f"worker {_index(pod)} cannot be scheduled: no node has the requested "
                        f"GPUs free ({message})")
            return f"worker {_index(pod)} cannot be scheduled: {message}"
    disrupted = [p for p in pods if (_condition(p, "DisruptionTarget") or {}).get("status")
                 == "True"]
    if disrupted:
        condition = _condition(disrupted[-1], "DisruptionTarget") or {}
        return (f"worker {_index(disrupted[-1])} was preempted or evicted "
                f"({condition.get('reason', 'DisruptionTarget')}); it is replaced without "
                "counting against the retries")
    return ""


def status(kube: Kube, name: str, namespace: str,
           progress: Callable[[str], int | None] | None = None) -> JobStatus:
    """Phase, per-index pods, restarts, failed indexes, explanation and training progress."""
    job = kube.get("Job", namespace, name)
    if job is None:
        raise LauncherError(f"job {namespace}/{name} not found")
    pods = kube.list("Pod", namespace, f"{contract.JOB_NAME_LABEL}={name}")
    workers = int(job["spec"].get("completions", 1))
    indexes = []
    for index in range(workers):
        mine = sorted((p for p in pods if _index(p) == index),
                      key=lambda p: p["metadata"].get("creationTimestamp", ""))
        if not mine:
            indexes.append(WorkerState(index, "-", "NotCreated", 0))
            continue
        newest = mine[-1]
        term = _terminated(newest) or {}
        detail = f"exit {term['exitCode']}" if "exitCode" in term else \
            (_waiting(newest) or {}).get("reason", "")
        indexes.append(WorkerState(index, newest["metadata"]["name"],
                                   newest.get("status", {}).get("phase", "Unknown"),
                                   len(mine) - 1, detail))
    run_dir = job["metadata"].get("annotations", {}).get("launcher/run-dir")
    args = job["spec"]["template"]["spec"]["containers"][0].get("args", [])
    steps = int(args[args.index("--steps") + 1]) if "--steps" in args[:-1] else None
    st = job.get("status", {})
    return JobStatus(
        name=name, namespace=namespace, phase=job_phase(job), workers=workers,
        succeeded=int(st.get("succeeded", 0)), failed_indexes=st.get("failedIndexes", ""),
        indexes=indexes, explanation=explain(job, pods),
        step=progress(run_dir) if progress and run_dir else None, steps=steps, run_dir=run_dir)


def list_jobs(kube: Kube, namespace: str | None) -> list[dict[str, Any]]:
    """Jobs this tool manages: name, namespace, phase, workers, creation time."""
    rows = []
    for job in kube.list("Job", namespace, MANAGED):
        meta = job["metadata"]
        rows.append({"name": meta["name"], "namespace": meta["namespace"],
                     "phase": job_phase(job), "workers": job["spec"].get("completions", 1),
                     "created": meta.get("creationTimestamp", ""),
                     "runDir": meta.get("annotations", {}).get("launcher/run-dir", "")})
    return rows


def worker_pods(kube: Kube, name: str, namespace: str, index: int | None = None
                ) -> list[dict[str, Any]]:
    """The job's pods, oldest first, optionally one index only."""
    pods = kube.list("Pod", namespace, f"{contract.JOB_NAME_LABEL}={name}")
    pods = [p for p in pods if index is None or _index(p) == index]
    return sorted(pods, key=lambda p: (p["metadata"].get("creationTimestamp", ""), _index(p)))


def logs(kube: Kube, name: str, namespace: str, index: int | None = None,
         tail: int | None = None) -> list[str]:
    """Every worker's log lines, prefixed ``[index]``, replaced pods included (oldest first)."""
    lines = []
    for pod in worker_pods(kube, name, namespace, index):
        if pod.get("status", {}).get("phase") == "Pending":
            continue
        prefix = f"[{_index(pod)}]"
        text = kube.logs(namespace, pod["metadata"]["name"], tail)
        lines += [f"{prefix} {line}" for line in text.splitlines()]
    return lines


def follow(kube: Kube, name: str, namespace: str, write: Callable[[str], None],
           index: int | None = None, poll: float = 2.0) -> None:
    """Stream every worker's log as written, picking up replacement pods, until the job ends."""
    started: set[str] = set()
    threads: list[threading.Thread] = []
    lock = threading.Lock()

    def pump(pod: dict[str, Any]) -> None:
        prefix = f"[{_index(pod)}]"
        for line in kube.follow_logs(namespace, pod["metadata"]["name"]):
            with lock:
                write(f"{prefix} {line}")

    while True:
        for pod in worker_pods(kube, name, namespace, index):
            pod_name = pod["metadata"]["name"]
            if pod_name in started or pod.get("status", {}).get("phase") == "Pending":
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
