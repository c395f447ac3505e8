"""A job's run directory, as the launcher sees it: the spec and the owning Job recorded there,
training progress read from it, and a purge that deletes only a directory provably the job's."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from launcher.errors import LauncherError
from launcher.spec import JobSpec, dump_spec
from trainer import contract
from trainer.text import first_line


def _storage() -> Any:
    # google-cloud-storage comes with the trainer extra, which running locally needs anyway.
    from trainer.run.storage import Storage

    return Storage()


def write_run_spec(spec: JobSpec, storage: Any = None) -> str:
    """Store the resolved spec as ``spec.yaml`` in the job's run directory; returns its URI."""
    uri = contract.run_path(spec.job_run_dir, contract.RUN_SPEC)
    (storage or _storage()).write_text(uri, dump_spec(spec))
    return uri


def record_run_dir(spec: JobSpec, job: dict[str, Any]) -> None:
    """Write ``spec.yaml`` and ``job.json`` (namespace, name, uid of the owning Job) into the
    job's run directory."""
    meta = job["metadata"]
    storage = _storage()
    write_run_spec(spec, storage)
    storage.write_text(contract.run_path(spec.job_run_dir, contract.RUN_JOB_RECORD), json.dumps(
        {"namespace": meta["namespace"], "name": meta["name"], "uid": meta["uid"]}) + "\n")


def run_progress(run_dir: str) -> int | None:
    """The newest published step in a run directory, when it can be read from here."""
    try:
        from trainer.run.checkpoints import latest_step
        from trainer.run.storage import Storage

        return latest_step(Storage(), run_dir)
    except Exception:  # no trainer extra, no credentials, no network: progress unknown
        return None


def records_summary(run_dir: str) -> str | None:
    """What the workers' scans of the records found (``records/``), in one line: usable of
    all, what was skipped for which reason, what was clipped; None when unknown here."""
    try:
        storage = _storage()
        reports = {uri.rsplit("/", 1)[-1]: json.loads(storage.read_text(uri))
                   for uri in storage.list_prefix(contract.run_path(run_dir,
                                                                    contract.RUN_RECORDS))
                   if uri.endswith(".json")}
    except Exception:  # no trainer extra, no credentials, no network, a damaged file
        return None
    parts = []
    for kind, prefix in (("train", "train-"), ("eval", "eval")):
        found = [r for name, r in reports.items() if name.startswith(prefix)]
        if found:
            parts.append(f"{kind} {_counts(found)}")
    return "; ".join(parts) or None


def _counts(reports: list[dict[str, Any]]) -> str:
    records = sum(r.get("records", 0) for r in reports)
    usable = sum(r.get("usable", 0) for r in reports)
    skipped: dict[str, int] = {}
    for report in reports:
        for reason, count in (report.get("skipped") or {}).items():
            skipped[reason] = skipped.get(reason, 0) + count
    text = f"{usable:,} of {records:,} usable"
    if skipped:
        text += " (skipped: " + ", ".join(f"{count:,} {reason}" for reason, count in
                                          sorted(skipped.items(), key=lambda kv: -kv[1])) + ")"
    clipped = sum(r.get("clipped", 0) for r in reports)
    if clipped:
        text += f", {clipped:,} with boxes clipped"
    return text


def purge_plan(job: dict[str, Any]) -> Callable[[], str]:
    """Check that the Job's run directory can be purged; return the function that purges it.

    Raises ``LauncherError`` (and nothing has been deleted) when storage cannot be reached or
    the directory is not this Job's: it must be ``<runDir>/<namespace>/<name>`` and hold a
    ``job.json`` naming this Job's namespace, name and uid, and a ``spec.yaml`` of that job."""
    import yaml

    meta = job["metadata"]
    ns, name, uid = meta["namespace"], meta["name"], meta["uid"]
    run_dir = (meta.get("annotations") or {}).get(contract.RUN_DIR_ANNOTATION, "")
    refuse = f"--purge: {run_dir or 'no run directory'}"
    if not run_dir.rstrip("/").endswith(f"/{ns}/{name}"):
        raise LauncherError(f"{refuse} is not a run directory of {ns}/{name} "
                            "(<runDir>/<namespace>/<job>); nothing was deleted")
    try:
        storage = _storage()
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
