"""The launcher's Python API: what the CLI does, callable from notebooks, pipelines and tests."""

from __future__ import annotations

import sys
from typing import Any, TextIO

from launcher.render import render
from launcher.spec import JobSpec, SpecSource, load_spec
from launcher.validate import DEFAULT_K8S_VERSION, validate_objects


def build_objects(source: SpecSource | JobSpec, k8s_version: str = DEFAULT_K8S_VERSION,
                  schema: bool = True) -> tuple[JobSpec, list[dict[str, Any]]]:
    """Load (if needed), render and validate a job; raise ``LauncherError`` on the first problem.

    ``schema=False`` skips the strict schema check (the slow part) but keeps the cross-field rules.
    """
    spec = source if isinstance(source, JobSpec) else load_spec(source)
    objects = render(spec)
    validate_objects(objects, k8s_version, spec.profile, schema=schema)
    return spec, objects


def job_object(objects: list[dict[str, Any]]) -> dict[str, Any]:
    """The Job among rendered objects."""
    return next(o for o in objects if o["kind"] == "Job")


def write_run_spec(spec: JobSpec) -> str:
    """Store the resolved spec as ``spec.yaml`` in the job's run directory; returns its URI."""
    from launcher import contract
    from launcher.spec import dump_spec

    uri = contract.run_path(spec.job_run_dir, contract.RUN_SPEC)
    # google-cloud-storage comes with the trainer extra, which running locally needs anyway.
    from trainer.storage import Storage

    Storage().write_text(uri, dump_spec(spec))
    return uri


def run_local(source: SpecSource | JobSpec, out: TextIO = sys.stdout,
              grace: float | None = None) -> JobSpec:
    """Run the job's rendered Job as local processes; raise ``LauncherError`` if it fails."""
    from launcher.local import run_local as run_processes

    spec, objects = build_objects(source, schema=False)
    write_run_spec(spec)
    run_processes(job_object(objects), retries=spec.scheduling.retries_per_index,
                  grace=spec.scheduling.termination_grace_period_seconds
                  if grace is None else grace, out=out)
    return spec


def run_progress(run_dir: str) -> int | None:
    """The newest published step in a run directory, when it can be read from here."""
    try:
        from trainer.checkpoints import latest_step
        from trainer.storage import Storage

        return latest_step(Storage(), run_dir)
    except Exception:  # no trainer extra, no credentials, no network: progress unknown
        return None


def submit(source: SpecSource | JobSpec, context: str | None = None, replace: bool = False,
           dry_run: bool = False, checks: bool = True, kube: Any = None
           ) -> tuple[JobSpec, list[dict[str, Any]], list[Any]]:
    """Render, validate, check and apply a job; returns the spec, applied objects and checks."""
    from launcher import cluster
    from launcher.kube import connect

    spec, objects = build_objects(source)
    kube = kube or connect(context)
    found = cluster.pre_submit_checks(kube, spec, objects) if checks else []
    errors = [c for c in found if c.level == "error"]
    if errors:
        raise cluster.SubmitError("; ".join(c.message for c in errors))
    applied = cluster.submit(kube, objects, replace=replace, dry_run=dry_run)
    return spec, applied, found


def status(name: str, namespace: str = "default", context: str | None = None,
           kube: Any = None) -> Any:
    """The job's ``JobStatus``."""
    from launcher import cluster
    from launcher.kube import connect

    return cluster.status(kube or connect(context), name, namespace, run_progress)


def list_jobs(namespace: str | None = None, context: str | None = None,
              kube: Any = None) -> list[dict[str, Any]]:
    """Jobs this tool manages (all namespaces when ``namespace`` is None)."""
    from launcher import cluster
    from launcher.kube import connect

    return cluster.list_jobs(kube or connect(context), namespace)


def delete(name: str, namespace: str = "default", context: str | None = None,
           purge: bool = False, kube: Any = None) -> list[str]:
    """Delete the job's objects; ``purge`` also removes its run directory."""
    from launcher import cluster
    from launcher.kube import connect

    kube = kube or connect(context)
    job = kube.get("Job", namespace, name)
    run_dir = (job or {}).get("metadata", {}).get("annotations", {}).get("launcher/run-dir")
    gone = cluster.delete(kube, name, namespace)
    if purge and run_dir:
        from trainer.storage import Storage

        storage = Storage()
        for uri in storage.list_prefix(run_dir):
            storage.delete(uri)
        gone.append(run_dir)
    return gone
