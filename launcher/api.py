"""The launcher's Python API: what the CLI does, callable from notebooks, pipelines and tests."""

from __future__ import annotations

from typing import Any

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
