"""The launcher's Python API: what the CLI does, callable from notebooks, pipelines and tests.

Every verb takes the backend that runs jobs (``launcher.backends``): by default the Kubernetes
cluster of the kubeconfig context; ``local=True``, the jobs ``run_local`` ran on this machine.
"""

from __future__ import annotations

from typing import Any, TextIO

from launcher.backends.base import Backend, JobStatus
from launcher.render import job_object, render
from launcher.spec import JobSpec, SpecSource, load_spec
from launcher.validate import DEFAULT_K8S_VERSION, validate_objects

__all__ = ["backend", "build_objects", "delete", "job_object", "list_jobs", "logs",
           "run_local", "status", "submit"]


def backend(context: str | None = None, local: bool = False, kube: Any = None) -> Backend:
    """The backend of a call: a Kubernetes cluster (``context``, or a given ``Kube``), or the
    local one."""
    if local:
        from launcher.backends.local import LocalBackend

        return LocalBackend()
    from launcher.backends.kubernetes import KubernetesBackend

    return KubernetesBackend(context, kube)


def build_objects(source: SpecSource | JobSpec, k8s_version: str = DEFAULT_K8S_VERSION,
                  schema: bool = True) -> tuple[JobSpec, list[dict[str, Any]]]:
    """Load (if needed), render and validate a job; raise ``LauncherError`` on the first problem.

    ``schema=False`` skips the strict schema check (the slow part) but keeps the cross-field rules.
    """
    spec = source if isinstance(source, JobSpec) else load_spec(source)
    objects = render(spec)
    validate_objects(objects, k8s_version, spec.profile, schema=schema)
    return spec, objects


def run_local(source: SpecSource | JobSpec, out: TextIO | None = None,
              grace: float | None = None) -> JobSpec:
    """Run the job's rendered Job as local processes to its end (the local backend); raise
    ``LauncherError`` if it fails."""
    from launcher.backends.local import LocalBackend

    spec, objects = build_objects(source, schema=False)
    LocalBackend(out=out, grace=grace).submit(spec, objects)
    return spec


def submit(source: SpecSource | JobSpec, context: str | None = None, replace: bool = False,
           dry_run: bool = False, checks: bool = True, kube: Any = None
           ) -> tuple[JobSpec, list[dict[str, Any]], list[Any]]:
    """Render, validate, check and apply a job on the cluster; returns the spec, applied
    objects and checks (warnings included)."""
    spec, objects = build_objects(source)
    done = backend(context, kube=kube).submit(spec, objects, replace=replace, dry_run=dry_run,
                                              checks=checks)
    return spec, done.objects, done.checks


def status(name: str, namespace: str | None = None, context: str | None = None,
           kube: Any = None, local: bool = False) -> JobStatus:
    """The job's ``JobStatus`` (namespace: the context's by default)."""
    return backend(context, local, kube).status(name, namespace)


def logs(name: str, namespace: str | None = None, context: str | None = None,
         index: int | None = None, tail: int | None = None, kube: Any = None,
         local: bool = False) -> list[str]:
    """Every worker's log lines, prefixed with its index."""
    return backend(context, local, kube).logs(name, namespace, index, tail)


def list_jobs(namespace: str | None = None, context: str | None = None, kube: Any = None,
              warn: Any = None, local: bool = False) -> list[dict[str, Any]]:
    """Jobs this tool manages (all readable namespaces when ``namespace`` is None)."""
    return backend(context, local, kube).list(namespace, warn)


def delete(name: str, namespace: str | None = None, context: str | None = None,
           purge: bool = False, kube: Any = None, local: bool = False) -> list[str]:
    """Delete the job's objects; ``purge`` also removes its run directory, after checking,
    before anything is deleted, that the directory can be reached and belongs to this job."""
    return backend(context, local, kube).delete(name, namespace, purge)
