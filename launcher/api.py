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
