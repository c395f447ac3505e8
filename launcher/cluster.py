"""Cluster operations on rendered jobs: pre-submit checks, submit (all or nothing), delete, list
and logs of every worker. Everything goes through ``launcher.kube``; status lives in
``launcher.status``.

This tool only ever changes objects it created for the job at hand: every object it would modify
or delete must carry ``app.kubernetes.io/managed-by: launcher`` and the job's
``app.kubernetes.io/instance``; anything else of the same name is refused in one line.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from launcher.errors import LauncherError
from launcher.kube import Kube, KubeError
from launcher.status import job_phase, owned_pods, pod_index
from trainer import contract
from trainer.text import first_line

MANAGED = f"{contract.LABEL_MANAGED_BY}={contract.MANAGER}"
# What a job consists of, in delete order (the Job last, foreground: its pods first).
OWNED_KINDS = ("Service", "NetworkPolicy", "ServiceAccount", "Job")
KUEUE_GROUP = "/apis/kueue.x-k8s.io"


class SubmitError(LauncherError):
    """Submission refused or failed; nothing this call created is left behind."""


@dataclass
class Check:
    """One pre-submit check: ``level`` is ok, warning or error."""

    level: str
    message: str


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


def _forbidden(what: str) -> Check:
    return Check("warning", f"{what} not checked: this user may not read it")


def pre_submit_checks(kube: Kube, spec: Any, objects: list[dict[str, Any]]) -> list[Check]:
    """What can be known before paying for GPUs. Errors block submission; warnings do not.
    A check the user has no permission for (RBAC) is a warning, never a failure."""
    checks: list[Check] = []
    ns = spec.namespace
    try:
        if not kube.namespace_exists(ns):
            return [Check("error", f"namespace {ns!r} does not exist")]
    except KubeError as err:
        if not err.forbidden:
            raise
        checks.append(_forbidden(f"namespace {ns!r}"))
    lookups = [("auth.serviceAccount", "ServiceAccount", spec.auth.service_account, None),
               ("auth.keySecret", "Secret", spec.auth.key_secret, contract.KEY_SECRET_FILE)]
    lookups += [(f"secretEnv.{env}", "Secret", ref.secret, ref.key)
                for env, ref in spec.secret_env.items()]
    for field_name, kind, name, key in lookups:
        if not name:
            continue
        try:
            obj = kube.get(kind, ns, name)
        except KubeError as err:
            if not err.forbidden:
                raise
            checks.append(_forbidden(f"{field_name}: {kind} {name!r}"))
            continue
        if obj is None:
            checks.append(Check("error", f"{field_name}: {kind} {name!r} not found in {ns}"))
        elif key is not None and key not in (obj.get("data") or {}):
            checks.append(Check("error", f"{field_name}: Secret {name!r} has no {key!r} entry"))
    checks.extend(_scheduling_checks(kube, spec))
    checks.extend(storage_checks(spec))
    return checks


def _scheduling_checks(kube: Kube, spec: Any) -> list[Check]:
    """PriorityClass, Kueue queue and GPU nodes: without them pods are never created, the Job
    stays suspended forever, or pods never schedule."""
    checks: list[Check] = []
    sched = spec.scheduling
    try:
        if sched.priority_class and kube.get_path(
                f"/apis/scheduling.k8s.io/v1/priorityclasses/{sched.priority_class}") is None:
            checks.append(Check("error", f"scheduling.priorityClass: PriorityClass "
                                         f"{sched.priority_class!r} does not exist"))
    except KubeError as err:
        if not err.forbidden:
            raise
        checks.append(_forbidden(f"scheduling.priorityClass {sched.priority_class!r}"))
    if sched.queue:
        checks.extend(_queue_checks(kube, spec.namespace, sched.queue))
    if spec.resources.gpus:
        try:
            offering = [n for n in kube.nodes()
                        if int(n.get("status", {}).get("allocatable", {}).get(
                            "nvidia.com/gpu", 0))]
            if not offering:
                checks.append(Check("warning", "no node offers nvidia.com/gpu now; the job "
                                               "waits for the autoscaler or fails to schedule"))
        except KubeError as err:
            if not err.forbidden:
                raise
            checks.append(_forbidden("GPU capacity (nodes)"))
    return checks


def _queue_checks(kube: Kube, namespace: str, queue: str) -> list[Check]:
    group = kube.get_path(KUEUE_GROUP)
    if group is None:
        return [Check("error", "scheduling.queue: Kueue is not installed on this cluster (no "
                               "kueue.x-k8s.io API); the job would stay suspended forever")]
    version = group.get("preferredVersion", {}).get("groupVersion", "kueue.x-k8s.io/v1beta1")
    try:
        found = kube.get_path(f"/apis/{version}/namespaces/{namespace}/localqueues/{queue}")
    except KubeError as err:
        if not err.forbidden:
            raise
        return [_forbidden(f"scheduling.queue: LocalQueue {queue!r}")]
    if found is None:
        return [Check("error", f"scheduling.queue: LocalQueue {queue!r} not found in "
                               f"{namespace}; the job would stay suspended forever")]
    return []


def storage_checks(spec: Any) -> list[Check]:
    """``input_checks`` and that the run directory is writable."""
    return input_checks(spec, probe_write=True)


def input_checks(spec: Any, probe_write: bool = False) -> list[Check]:
    """What the trainer will refuse, found here: its own reading of the rendered flags, the
    pipeline.config and the label map; then that every TFRecord glob matches (and, with
    ``probe_write``, that the run directory is writable), when storage can be reached."""
    if spec.command is not None:
        return []  # a trainer of the user's own
    try:
        from trainer.config import (
            ConfigError,
            from_args,
            parse_label_map,
            resolve_keras_classes,
            resolve_num_classes,
        )
        from trainer.run.storage import Storage, StorageError
    except ImportError:
        return [Check("warning", "inputs not checked: install the [trainer] extra to check "
                                 "them")]
    from launcher.render import trainer_args

    storage = Storage()
    try:
        cfg = from_args(trainer_args(spec), {contract.ENV_RUN_DIR: spec.job_run_dir},
                        storage.read_text)
        labels = parse_label_map(storage.read_text(cfg.label_map), cfg.label_map) \
            if cfg.label_map else None
        if cfg.task == "keras":
            resolve_keras_classes(cfg, labels)
            problem = _keras_model_problem(storage, cfg.checkpoint or "")
            if problem:
                return [Check("error", f"model.checkpoint: {problem}")]
        else:
            resolve_num_classes(cfg, labels)
        checks = [Check("warning", f"model.pipelineConfig {line}") for line in cfg.differences]
        checks += [Check("error", f"data.train[{i}]: {pattern} matches no file")
                   for i, pattern in enumerate(cfg.train) if not storage.glob(pattern)]
        if probe_write:
            probe = f"{spec.job_run_dir.rstrip('/')}/.launcher-write-check"
            storage.write_text(probe, "ok\n")
            storage.delete(probe)
        return checks
    except (ConfigError, StorageError) as err:
        return [Check("error", f"trainer: {err}")]
    except Exception as err:  # no credentials, no network: say so and let the user decide
        return [Check("warning", f"inputs not checked: {type(err).__name__}: "
                                 f"{first_line(err, 120)}")]


def _keras_model_problem(storage: Any, uri: str) -> str | None:
    """What the trainer would refuse about a Keras model file, found without TensorFlow: a
    missing file, an unknown format, a Keras 3 file (local files only: no download here)."""
    from trainer.config import ConfigError
    from trainer.keras.model import FORMATS, check_file

    is_file = uri.lower().endswith(tuple(FORMATS))
    if is_file and not storage.glob(uri):
        return f"{uri} not found"
    if not is_file:
        names = {item.rsplit("/", 1)[-1] for item in storage.list_prefix(uri)}
        if not names:
            return f"{uri} not found"
        if "saved_model.pb" not in names:
            return (f"{uri}: neither a .h5 or .keras file nor a SavedModel directory "
                    "(no saved_model.pb)")
    if uri.startswith("gs://"):
        return None
    try:
        check_file(Path(uri), uri)
    except ConfigError as err:
        return str(err).removeprefix("--checkpoint ")
    return None


def _owner(job: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "batch/v1", "kind": "Job", "name": job["metadata"]["name"],
            "uid": job["metadata"]["uid"], "blockOwnerDeletion": True, "controller": False}


def _check_ownership(kube: Kube, objects: list[dict[str, Any]], replace: bool) -> bool:
    """Refuse before any write if an object of the same name is not ours; True if the Job
    exists (and is ours)."""
    job = next(o for o in objects if o["kind"] == "Job")
    name, ns = job["metadata"]["name"], job["metadata"]["namespace"]
    existing_job = kube.get("Job", ns, name)
    if existing_job is not None and not owned(existing_job, name):
        raise SubmitError(foreign("Job", ns, name))
    if existing_job is not None and not replace:
        raise SubmitError(f"job {ns}/{name} already exists; use --replace to delete it and "
                          "submit again")
    for obj in objects:
        if obj is job:
            continue
        existing = kube.get(obj["kind"], ns, obj["metadata"]["name"])
        if existing is not None and not owned(existing, name):
            raise SubmitError(foreign(obj["kind"], ns, obj["metadata"]["name"]))
    return existing_job is not None


def submit(kube: Kube, objects: list[dict[str, Any]], replace: bool = False,
           dry_run: bool = False) -> list[dict[str, Any]]:
    """Apply the job's objects, Job first so the others can be owned by it. All or nothing:
    if any object fails, the ones this call created are deleted again. Objects of the same name
    that this tool did not create for this job are never modified: the call is refused first.

    A server dry run of ``replace`` simulates the delete: the existing objects are deleted in
    dry-run mode and the new Job is validated as a create (under a generated name, since the
    old one still holds its name), so immutable-field changes do not fail it."""
    job = next(o for o in objects if o["kind"] == "Job")
    name, ns = job["metadata"]["name"], job["metadata"]["namespace"]
    exists = _check_ownership(kube, objects, replace)
    if exists and dry_run:
        for kind in OWNED_KINDS:
            if kube.get(kind, ns, name) is not None:
                kube.delete(kind, ns, name, dry_run=True)
    elif exists:
        delete(kube, name, ns, wait=True)
    ordered = [job] + [o for o in objects if o is not job]
    created: list[dict[str, Any]] = []
    applied: list[dict[str, Any]] = []
    obj = job
    try:
        for obj in ordered:
            if obj is not job:
                obj = {**obj, "metadata": {**obj["metadata"],
                                           "ownerReferences": [_owner(applied[0])]}}
            if obj is job and exists and dry_run:
                result = _dry_run_create(kube, job)
            else:
                existed = kube.get(obj["kind"], ns, obj["metadata"]["name"]) is not None
                result = kube.apply(obj, dry_run=dry_run)
                if not existed:
                    created.append(result)
            applied.append(result)
    except KubeError as err:
        if not dry_run:
            _rollback(kube, created)
        raise SubmitError(f"{obj['kind']}/{obj['metadata']['name']}: {err}; "
                          f"rolled back {len(created)} object(s) this call created") from None
    return applied


def _dry_run_create(kube: Kube, job: dict[str, Any]) -> dict[str, Any]:
    name = job["metadata"]["name"]
    # generateName adds 5 characters: keep the length the real name has (pod hostnames).
    prefix = name[:-5] if len(name) > 5 else name
    meta = {k: v for k, v in job["metadata"].items() if k != "name"}
    result = kube.create({**job, "metadata": {**meta, "generateName": prefix}}, dry_run=True)
    result["metadata"]["name"] = name
    return result


def _rollback(kube: Kube, created: list[dict[str, Any]]) -> None:
    for obj in reversed(created):
        meta = obj["metadata"]
        kube.delete(obj["kind"], meta["namespace"], meta["name"], propagation="Foreground")


def delete(kube: Kube, name: str, namespace: str, wait: bool = False,
           timeout: float = 120) -> list[str]:
    """Delete the Service, NetworkPolicy and ServiceAccount, then the Job (foreground: its
    pods first).
    Refuses a Job of that name that this tool did not create; skips anything not ours.

    The Job owns the others, so garbage collection would remove them too, but only eventually;
    deleting them explicitly makes the result (and what is reported) certain."""
    job = kube.get("Job", namespace, name)
    if job is not None and not owned(job, name):
        raise LauncherError(foreign("Job", namespace, name))
    gone = []
    for kind in OWNED_KINDS:
        obj = job if kind == "Job" else kube.get(kind, namespace, name)
        if obj is None or not owned(obj, name):
            continue
        if kube.delete(kind, namespace, name, propagation="Foreground"):
            gone.append(f"{kind}/{name}")
    deadline = time.monotonic() + timeout
    while wait and kube.get("Job", namespace, name) is not None:
        if time.monotonic() > deadline:
            raise LauncherError(f"job {namespace}/{name} still exists after {timeout:.0f}s")
        time.sleep(1)
    return gone


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
