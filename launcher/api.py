"""The launcher's Python API: what the CLI does, callable from notebooks, pipelines and tests."""

from __future__ import annotations

import sys
from typing import Any, TextIO

from launcher.render import render
from launcher.spec import JobSpec, SpecSource, load_spec
from launcher.validate import DEFAULT_K8S_VERSION, validate_objects
from trainer.text import first_line


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


def write_run_spec(spec: JobSpec, storage: Any = None) -> str:
    """Store the resolved spec as ``spec.yaml`` in the job's run directory; returns its URI."""
    from launcher.spec import dump_spec
    from trainer import contract

    uri = contract.run_path(spec.job_run_dir, contract.RUN_SPEC)
    # google-cloud-storage comes with the trainer extra, which running locally needs anyway.
    from trainer.run.storage import Storage

    (storage or Storage()).write_text(uri, dump_spec(spec))
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
        from trainer.run.checkpoints import latest_step
        from trainer.run.storage import Storage

        return latest_step(Storage(), run_dir)
    except Exception:  # no trainer extra, no credentials, no network: progress unknown
        return None


def submit(source: SpecSource | JobSpec, context: str | None = None, replace: bool = False,
           dry_run: bool = False, checks: bool = True, kube: Any = None
           ) -> tuple[JobSpec, list[dict[str, Any]], list[Any]]:
    """Render, validate, check and apply a job; returns the spec, applied objects and checks
    (warnings included). Once the Job exists, its run directory records which Job owns it
    (``job.json``, ``spec.yaml``): ``delete --purge`` deletes only a directory that does."""
    from launcher import cluster
    from launcher.kube import connect

    spec, objects = build_objects(source)
    kube = kube or connect(context)
    found = cluster.pre_submit_checks(kube, spec, objects) if checks else []
    errors = [c for c in found if c.level == "error"]
    if errors:
        raise cluster.SubmitError("; ".join(c.message for c in errors))
    applied = cluster.submit(kube, objects, replace=replace, dry_run=dry_run)
    if not dry_run:
        try:
            record_run_dir(spec, job_object(applied))
        except Exception as err:  # no credentials or no route to GCS from here
            found.append(cluster.Check(
                "warning", f"run directory not recorded ({type(err).__name__}: "
                           f"{first_line(err, 160)}): "
                           "`delete --purge` will refuse to delete it"))
    return spec, applied, found


def record_run_dir(spec: JobSpec, job: dict[str, Any]) -> None:
    """Write ``spec.yaml`` and ``job.json`` (namespace, name, uid) into the job's run
    directory."""
    import json

    from trainer import contract
    from trainer.run.storage import Storage

    meta = job["metadata"]
    storage = Storage()
    write_run_spec(spec, storage)
    storage.write_text(contract.run_path(spec.job_run_dir, contract.RUN_JOB_RECORD), json.dumps(
        {"namespace": meta["namespace"], "name": meta["name"], "uid": meta["uid"]}) + "\n")


def _kube(context: str | None, kube: Any) -> Any:
    from launcher.kube import connect

    return kube or connect(context)


def status(name: str, namespace: str | None = None, context: str | None = None,
           kube: Any = None) -> Any:
    """The job's ``JobStatus`` (namespace: the context's by default)."""
    from launcher.status import status as job_status

    kube = _kube(context, kube)
    return job_status(kube, name, namespace or kube.namespace, run_progress)


def list_jobs(namespace: str | None = None, context: str | None = None, kube: Any = None,
              warn: Any = None) -> list[dict[str, Any]]:
    """Jobs this tool manages (all readable namespaces when ``namespace`` is None)."""
    from launcher import cluster

    return cluster.list_jobs(_kube(context, kube), namespace, warn)


def delete(name: str, namespace: str | None = None, context: str | None = None,
           purge: bool = False, kube: Any = None) -> list[str]:
    """Delete the job's objects; ``purge`` also removes its run directory, after checking,
    before anything is deleted, that the directory can be reached and belongs to this Job."""
    from launcher import cluster
    from launcher.errors import LauncherError

    kube = _kube(context, kube)
    namespace = namespace or kube.namespace
    job = kube.get("Job", namespace, name)
    if job is None:
        raise LauncherError(f"job {namespace}/{name} not found")
    if not cluster.owned(job, name):
        raise LauncherError(cluster.foreign("Job", namespace, name))
    purger = purge_plan(job) if purge else None
    gone = cluster.delete(kube, name, namespace)
    if purger is not None:
        gone.append(purger())
    return gone


def purge_plan(job: dict[str, Any]) -> Any:
    """Check that the Job's run directory can be purged; return the function that purges it.

    Raises ``LauncherError`` (and nothing has been deleted) when storage cannot be reached or
    the directory is not this Job's: it must be ``<runDir>/<namespace>/<name>`` and hold a
    ``job.json`` naming this Job's namespace, name and uid, and a ``spec.yaml`` of that job."""
    import json

    import yaml

    from launcher.errors import LauncherError
    from trainer import contract

    meta = job["metadata"]
    ns, name, uid = meta["namespace"], meta["name"], meta["uid"]
    run_dir = (meta.get("annotations") or {}).get(contract.RUN_DIR_ANNOTATION, "")
    refuse = f"--purge: {run_dir or 'no run directory'}"
    if not run_dir.rstrip("/").endswith(f"/{ns}/{name}"):
        raise LauncherError(f"{refuse} is not a run directory of {ns}/{name} "
                            "(<runDir>/<namespace>/<job>); nothing was deleted")
    try:
        from trainer.run.storage import Storage

        storage = Storage()
        record = json.loads(storage.read_text(contract.run_path(run_dir,
                                                                contract.RUN_JOB_RECORD)))
        spec = yaml.safe_load(storage.read_text(contract.run_path(run_dir, contract.RUN_SPEC)))
    except ImportError:
        raise LauncherError(f"{refuse}: install the [trainer] extra to reach storage; nothing "
                            "was deleted") from None
    except Exception as err:
        raise LauncherError(f"{refuse} cannot be checked ({type(err).__name__}: "
                            f"{first_line(err)}); "
                            "nothing was deleted") from None
    expected = {"namespace": ns, "name": name, "uid": uid}
    if not isinstance(record, dict) or {k: record.get(k) for k in expected} != expected or \
            not isinstance(spec, dict) or (spec.get("namespace"), spec.get("name")) != (ns, name):
        raise LauncherError(f"{refuse} does not belong to this job ({contract.RUN_JOB_RECORD} "
                            f"names another job or uid); nothing was deleted")

    def purge() -> str:
        for uri in storage.list_prefix(run_dir.rstrip("/") + "/"):
            storage.delete(uri)
        if not run_dir.startswith("gs://"):
            import shutil

            shutil.rmtree(run_dir, ignore_errors=True)  # the emptied directories
        return run_dir

    return purge
