"""What the cluster can tell before paying for GPUs: the namespace, the ServiceAccount and Secrets
the spec names, the PriorityClass, the Kueue queue and GPU capacity, then the trainer's inputs
(``launcher.inputs``). A check the user has no permission for (RBAC) is a warning."""

from __future__ import annotations

from typing import Any

from launcher.cluster.client import Kube, KubeError
from launcher.inputs import Check, refused, storage_checks
from trainer import contract

KUEUE_GROUP = "/apis/kueue.x-k8s.io"


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
    # the restore check builds the model: not worth it once something cheaper has refused
    checks.extend(storage_checks(spec, restore=not refused(checks)))
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
