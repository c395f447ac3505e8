"""Kubernetes: the API client (``client``), the checks before a submit (``preflight``), creating
and deleting a job's objects (``apply``), listing jobs and reading their logs (``jobs``), and a
job's status with the reasons it failed (``status``)."""
