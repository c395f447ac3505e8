"""The Kubernetes backend: jobs as Indexed Jobs on a cluster, through ``launcher.cluster``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from launcher.backends.base import Backend, JobStatus, Submission, Warn
from launcher.cluster import apply, jobs, preflight
from launcher.cluster.client import Kube, connect
from launcher.errors import LauncherError
from launcher.render import job_object
from launcher.runs import purge_plan, record_run_dir, records_summary, run_progress
from trainer.text import first_line


class KubernetesBackend(Backend):
    """Jobs on the cluster of a kubeconfig context (or in-cluster config, or a given client)."""

    def __init__(self, context: str | None = None, kube: Kube | None = None) -> None:
        self._context = context
        self._kube = kube

    @property
    def kube(self) -> Kube:
        """The API connection, made on first use (``render`` and ``validate`` never need it)."""
        if self._kube is None:
            self._kube = connect(self._context)
        return self._kube

    def _namespace(self, namespace: str | None) -> str:
        return namespace or self.kube.namespace

    def submit(self, spec: Any, objects: list[dict[str, Any]], replace: bool = False,
               dry_run: bool = False, checks: bool = True) -> Submission:
        """Check, then apply all or nothing. Once the Job exists, its run directory records
        which Job owns it (``job.json``, ``spec.yaml``): ``delete --purge`` deletes only a
        directory that does."""
        found = preflight.pre_submit_checks(self.kube, spec, objects) if checks else []
        errors = [c for c in found if c.level == "error"]
        if errors:
            raise apply.SubmitError("; ".join(c.message for c in errors))
        applied = apply.submit(self.kube, objects, replace=replace, dry_run=dry_run)
        if not dry_run:
            try:
                record_run_dir(spec, job_object(applied))
            except Exception as err:  # no credentials or no route to GCS from here
                found.append(preflight.Check(
                    "warning", f"run directory not recorded ({type(err).__name__}: "
                               f"{first_line(err, 160)}): "
                               "`delete --purge` will refuse to delete it"))
        return Submission(applied, found)

    def status(self, name: str, namespace: str | None = None) -> JobStatus:
        from launcher.cluster.status import status

        return status(self.kube, name, self._namespace(namespace), run_progress,
                      records_summary)

    def logs(self, name: str, namespace: str | None = None, index: int | None = None,
             tail: int | None = None) -> list[str]:
        return jobs.logs(self.kube, name, self._namespace(namespace), index, tail)

    def follow(self, name: str, namespace: str | None, write: Callable[[str], None],
               index: int | None = None) -> None:
        jobs.follow(self.kube, name, self._namespace(namespace), write, index)

    def delete(self, name: str, namespace: str | None = None, purge: bool = False) -> list[str]:
        """The job's objects; ``purge`` also removes its run directory, after checking, before
        anything is deleted, that the directory can be reached and belongs to this Job."""
        namespace = self._namespace(namespace)
        job = self.kube.get("Job", namespace, name)
        if job is None:
            raise LauncherError(f"job {namespace}/{name} not found")
        if not jobs.owned(job, name):
            raise LauncherError(jobs.foreign("Job", namespace, name))
        purger = purge_plan(job) if purge else None
        gone = apply.delete(self.kube, name, namespace)
        if purger is not None:
            gone.append(purger())
        return gone

    def list(self, namespace: str | None = None, warn: Warn | None = None
             ) -> list[dict[str, Any]]:
        return jobs.list_jobs(self.kube, namespace, warn)
