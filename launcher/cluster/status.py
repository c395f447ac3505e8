"""What a job is doing now and, when it is failed or stuck, why, in one sentence.

Only current evidence counts: the Job's own conditions (the pod a ``Failed`` condition names), the
newest pod of each completion index, and the Job's ``FailedCreate`` events. Pods that were already
replaced explain nothing about the present; they only show up as restarts.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from launcher.backends.base import JobStatus, WorkerState, steps_of
from launcher.cluster.client import Kube, KubeError
from launcher.errors import LauncherError
from trainer import contract

IMAGE_PULL = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName")
GPU = "nvidia.com/gpu"


def _true_conditions(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in obj.get("status", {}).get("conditions", []) or []
            if c.get("status") == "True"}


def job_phase(job: dict[str, Any]) -> str:
    """Suspended, Pending, Running, Succeeded or Failed. Running means a worker is running (its
    pod is ready), not merely that the Job has active pods: pending pods count as active."""
    conditions = _true_conditions(job)
    if "Complete" in conditions or "SuccessCriteriaMet" in conditions:
        return "Succeeded"
    if "Failed" in conditions or "FailureTarget" in conditions:
        return "Failed"
    if "Suspended" in conditions or job.get("spec", {}).get("suspend"):
        return "Suspended"
    return "Running" if job.get("status", {}).get("ready") else "Pending"


def pod_index(pod: dict[str, Any]) -> int:
    """The completion index of a Job's pod (-1 if it has none)."""
    annotations = pod["metadata"].get("annotations", {})
    labels = pod["metadata"].get("labels", {})
    return int(annotations.get(contract.INDEX_ANNOTATION,
                               labels.get(contract.INDEX_ANNOTATION, -1)))


def _created(pod: dict[str, Any]) -> tuple[str, str]:
    return pod["metadata"].get("creationTimestamp", ""), pod["metadata"]["name"]


def newest_per_index(pods: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """The newest pod of each completion index."""
    newest: dict[int, dict[str, Any]] = {}
    for pod in sorted(pods, key=_created):
        newest[pod_index(pod)] = pod
    return newest


def _container_status(pod: dict[str, Any]) -> dict[str, Any]:
    for cs in pod.get("status", {}).get("containerStatuses", []) or []:
        if cs.get("name") == contract.CONTAINER_NAME:
            return cs
    return {}


def _terminated(pod: dict[str, Any]) -> dict[str, Any]:
    cs = _container_status(pod)
    return cs.get("state", {}).get("terminated") or cs.get("lastState", {}).get("terminated") \
        or {}


def _waiting(pod: dict[str, Any]) -> dict[str, Any]:
    return _container_status(pod).get("state", {}).get("waiting") or {}


def _condition(pod: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in pod.get("status", {}).get("conditions", []) or []
                 if c.get("type") == kind), {})


def _last_error(text: str) -> str:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    return (errors or lines or [""])[-1][:300]


def _ended(pod: dict[str, Any]) -> str:
    """How a failed pod ended, as a clause: 'ran out of memory (OOMKilled, exit 137)'."""
    term = _terminated(pod)
    code = term.get("exitCode")
    disruption = _condition(pod, "DisruptionTarget")
    if disruption.get("status") == "True":
        return f"was preempted or evicted ({disruption.get('reason', 'DisruptionTarget')})"
    if term.get("reason") == "OOMKilled":
        return (f"ran out of memory (OOMKilled, exit {code}): raise resources.memory or lower "
                "the batch size")
    if code == contract.EXIT_USER_ERROR:
        detail = _last_error(term.get("message", ""))
        return "stopped on a user error (exit 1)" + (f": {detail}" if detail else "")
    if code == contract.EXIT_RETRYABLE:
        return "was preempted or hit a retryable error (exit 42)"
    if code == contract.EXIT_PEER_LOST:
        return "lost a peer (exit 43)"
    if code is not None:
        return f"exited with {code}" + (f" ({term['reason']})" if term.get("reason") else "")
    return f"failed ({pod.get('status', {}).get('reason') or 'no exit code'})"


_FAILED_POD = re.compile(r"for pod [\w.-]+/([\w.-]+)")


def _failure(job: dict[str, Any], pods: list[dict[str, Any]],
             newest: dict[int, dict[str, Any]]) -> str:
    conditions = _true_conditions(job)
    failure = conditions.get("Failed") or conditions.get("FailureTarget")
    if not failure:
        return ""
    reason, message = failure.get("reason", ""), failure.get("message", "")
    named = _FAILED_POD.search(message)
    pod = next((p for p in pods if named and p["metadata"]["name"] == named.group(1)), None)
    if pod is not None:
        return f"worker {pod_index(pod)} {_ended(pod)}"
    if reason == "DeadlineExceeded":
        return "scheduling.activeDeadlineSeconds reached before the job finished"
    if reason in ("BackoffLimitExceeded", "FailedIndexes", "MaxFailedIndexesExceeded"):
        failed = job.get("status", {}).get("failedIndexes") or "?"
        last = newest.get(int(failed.split(",")[0])) if failed.split(",")[0].isdigit() else None
        return (f"retry budget exhausted: index {failed} failed more than "
                f"{job['spec'].get('backoffLimitPerIndex', '?')} times "
                "(scheduling.retriesPerIndex)"
                + (f"; its last pod {_ended(last)}" if last is not None else ""))
    return f"job failed: {reason}: {message}".strip()


def _scheduling(pod: dict[str, Any]) -> str:
    """Why the scheduler cannot place a pod, in the user's terms."""
    message = _condition(pod, "PodScheduled").get("message", "")
    requests = pod["spec"]["containers"][0].get("resources", {}).get("requests", {})
    selector = pod["spec"].get("nodeSelector") or {}
    where = ", ".join(f"{k}={v}" for k, v in selector.items())
    summary = message.split(". ")[0]
    if GPU in requests:
        return (f"no node offers {requests[GPU]} free {GPU}" + (f" with {where}" if where else "")
                + f" ({summary}); the job waits for GPUs to free up or for a node to be added")
    return f"no node fits it ({summary})"


def _stuck(job: dict[str, Any], newest: dict[int, dict[str, Any]],
           events: list[dict[str, Any]]) -> str:
    workers = int(job["spec"].get("completions", 1))
    failed_create = sorted((e for e in events if e.get("reason") == "FailedCreate"),
                           key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")
    if len(newest) < workers and failed_create:
        return f"pods cannot be created: {failed_create[-1].get('message', '')}"[:500]
    for index, pod in sorted(newest.items()):
        phase = pod.get("status", {}).get("phase")
        waiting = _waiting(pod)
        if waiting.get("reason") in IMAGE_PULL:
            return (f"worker {index} cannot pull its image ({waiting['reason']}): "
                    f"{waiting.get('message', '')}").strip()
        scheduled = _condition(pod, "PodScheduled")
        if scheduled.get("status") == "False" and scheduled.get("reason") == "Unschedulable":
            return f"worker {index} cannot be scheduled: {_scheduling(pod)}"
        if phase == "Failed":
            return f"worker {index} {_ended(pod)}; it is being replaced"
    return ""


def explain(job: dict[str, Any], pods: list[dict[str, Any]],
            events: list[dict[str, Any]] | None = None) -> str:
    """One sentence on why the job failed or is stuck; empty while it is healthy or done."""
    newest = newest_per_index(pods)
    if job_phase(job) == "Succeeded":
        return ""
    return _failure(job, pods, newest) or _stuck(job, newest, events or [])


def _events(kube: Kube, job: dict[str, Any]) -> list[dict[str, Any]]:
    meta = job["metadata"]
    try:
        return kube.list("Event", meta["namespace"],
                         fields=f"involvedObject.kind=Job,involvedObject.uid={meta['uid']}")
    except KubeError as err:
        if err.forbidden:  # a user who may read jobs but not events: explain without them
            return []
        raise


def status(kube: Kube, name: str, namespace: str,
           progress: Callable[[str], int | None] | None = None,
           records: Callable[[str], str | None] | None = None) -> JobStatus:
    """Phase, per-index pods, restarts, failed indexes, explanation and training progress."""
    job = kube.get("Job", namespace, name)
    if job is None:
        raise LauncherError(f"job {namespace}/{name} not found")
    pods = owned_pods(kube.list("Pod", namespace, f"{contract.JOB_NAME_LABEL}={name}"), job)
    workers = int(job["spec"].get("completions", 1))
    newest = newest_per_index(pods)
    indexes = []
    for index in range(workers):
        pod = newest.get(index)
        if pod is None:
            indexes.append(WorkerState(index, "-", "NotCreated", 0))
            continue
        term = _terminated(pod)
        detail = f"exit {term['exitCode']}" if "exitCode" in term else _waiting(pod).get(
            "reason", "")
        restarts = sum(1 for p in pods if pod_index(p) == index) - 1
        indexes.append(WorkerState(index, pod["metadata"]["name"],
                                   pod.get("status", {}).get("phase", "Unknown"), restarts,
                                   detail))
    run_dir = job["metadata"].get("annotations", {}).get(contract.RUN_DIR_ANNOTATION)
    st = job.get("status", {})
    return JobStatus(
        name=name, namespace=namespace, phase=job_phase(job), workers=workers,
        succeeded=int(st.get("succeeded", 0)), failed_indexes=st.get("failedIndexes", ""),
        indexes=indexes, explanation=explain(job, pods, _events(kube, job)),
        step=progress(run_dir) if progress and run_dir else None, steps=steps_of(job),
        run_dir=run_dir, records=records(run_dir) if records and run_dir else None)


def owned_pods(pods: list[dict[str, Any]], job: dict[str, Any]) -> list[dict[str, Any]]:
    """The pods of this Job object, not of an earlier Job of the same name."""
    uid = job["metadata"]["uid"]
    return [p for p in pods
            if any(ref.get("uid") == uid for ref in p["metadata"].get("ownerReferences", []))]
