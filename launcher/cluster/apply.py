"""Creating and deleting a job's objects: server-side apply, Job first so that it owns the others,
all or nothing (rolled back on failure), ``--replace``, server dry runs.

This tool only ever changes objects it created for the job at hand: every object it would modify
or delete must carry ``app.kubernetes.io/managed-by: launcher`` and the job's
``app.kubernetes.io/instance``; anything else of the same name is refused in one line.
"""

from __future__ import annotations

import time
from typing import Any

from launcher.cluster.client import Kube, KubeError
from launcher.cluster.jobs import foreign, owned
from launcher.errors import LauncherError

# What a job consists of, in delete order (the Job last, foreground: its pods first).
OWNED_KINDS = ("Service", "NetworkPolicy", "ServiceAccount", "Job")


class SubmitError(LauncherError):
    """Submission refused or failed; nothing this call created is left behind."""


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
