"""A job's whole life on a real control plane: the launcher submits, the real Job controller
creates and replaces pods, the real scheduler binds them, the test plays the kubelet, and what
`status`, `list`, `logs` and `delete` print is checked at each point. Then the Job's
podFailurePolicy and per-index retries against docs/contract.md."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cluster.conftest import cli, conditions, job_of, wait_condition
from tests.cluster.controlplane import ControlPlane, wait_for

INDEX_FAILURES = "batch.kubernetes.io/job-index-failure-count"


def _status(ns: str) -> dict:
    result = cli("status", "det", "-n", ns, "-o", "json")
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def test_two_workers_preempted_replaced_and_done(plane: ControlPlane, ns: str, kubeconfig: Path,
                                                 spec_file: Path) -> None:
    submitted = cli("submit", str(spec_file))
    assert submitted.exit_code == 0, submitted.stderr
    # what the checkpoint (the spec's own model) restores, said before anything is created
    assert re.search(r"info: restore: detection: \d+ variables restored, \d+ new",
                     submitted.stderr), submitted.stderr
    assert submitted.stdout.splitlines() == ["job/det applied", "service/det applied",
                                             "networkpolicy/det applied"]
    pods = plane.wait_pods(ns, "det", 2)
    assert {p["spec"]["hostname"] for p in pods} == {"det-0", "det-1"}
    # Bound but not started: the Job counts them active, yet nothing runs.
    st = _status(ns)
    assert st["phase"] == "Pending" and st["explanation"] == ""

    names = {int(p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"]):
             p["metadata"]["name"] for p in pods}
    for index, pod in names.items():
        plane.run(ns, pod)
        plane.kubelet.write(ns, pod, f"worker {index} step 1\n")
    wait_for(lambda: _status(ns)["phase"] == "Running", "phase Running")
    listed = cli("list")
    assert listed.exit_code == 0, listed.stderr
    rows = [line.split()[:4] for line in listed.stdout.splitlines()]
    assert [ns, "det", "Running", "2"] in rows

    logs = cli("logs", "det")
    assert logs.exit_code == 0, logs.stderr
    assert sorted(logs.stdout.splitlines()) == ["[0] worker 0 step 1", "[1] worker 1 step 1"]

    # Worker 1 is preempted (exit 42): replaced, counted against its index's retries.
    plane.kubelet.write(ns, names[1], "preempted at step 3\n")
    plane.exit(ns, names[1], 42)
    st = wait_for(lambda: (s := _status(ns))["indexes"][1]["restarts"] == 1 and s, "replacement",
                  timeout=60)
    replacement = plane.wait_pods(ns, "det", 3)[-1]
    assert replacement["metadata"]["annotations"][INDEX_FAILURES] == "1"
    assert st["indexes"][1]["pod"] == replacement["metadata"]["name"]
    assert st["explanation"] == ""  # the replacement is on its way: nothing is wrong now

    # A process of its own: `logs -f` runs while the test plays the kubelet.
    follower = subprocess.Popen([sys.executable, "-m", "launcher", "logs", "det", "-f"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    plane.run(ns, replacement["metadata"]["name"])
    plane.kubelet.write(ns, replacement["metadata"]["name"], "resumed at step 3\n")
    wait_for(lambda: _status(ns)["indexes"][1]["phase"] == "Running", "replacement running")
    for pod in (names[0], replacement["metadata"]["name"]):
        plane.exit(ns, pod, 0)
    wait_condition(plane, ns, "Complete")
    out, err = follower.communicate(timeout=60)  # ends with the job, or the test fails
    assert follower.returncode == 0, err
    assert sorted(out.splitlines()) == [
        "[0] worker 0 step 1", "[1] preempted at step 3", "[1] resumed at step 3",
        "[1] worker 1 step 1"]

    st = _status(ns)
    assert (st["phase"], st["succeeded"], st["explanation"]) == ("Succeeded", 2, "")
    assert [w["restarts"] for w in st["indexes"]] == [0, 1]
    everything = cli("logs", "det", "--index", "1").stdout.splitlines()
    assert everything == ["[1] worker 1 step 1", "[1] preempted at step 3",
                          "[1] resumed at step 3"]
    assert cli("logs", "det", "--index", "1", "--tail", "1").stdout.splitlines() == [
        "[1] preempted at step 3", "[1] resumed at step 3"]

    gone = cli("delete", "det")
    assert gone.exit_code == 0, gone.stderr
    assert gone.stdout.splitlines() == ["deleted Service/det", "deleted NetworkPolicy/det",
                                        "deleted Job/det"]
    wait_for(lambda: plane.request("GET", f"/apis/batch/v1/namespaces/{ns}/jobs/det")[0] == 404,
             "Job gone")
    assert plane.pods(ns, "det") == []
    missing = cli("status", "det")
    assert missing.exit_code == 1 and missing.stderr.strip() == f"error: job {ns}/det not found"


@pytest.mark.parametrize(("code", "disruption", "counted"), [
    (43, "", False),                        # peer lost: Ignore
    (143, "TerminationByKubelet", False),  # DisruptionTarget: Ignore
    (137, "", True),                        # killed by a signal: counted
])
def test_pod_failure_policy_replaces_and_counts_as_the_contract_says(
        plane: ControlPlane, ns: str, kubeconfig: Path, spec_file: Path, code: int,
        disruption: str, counted: bool) -> None:
    assert cli("submit", str(spec_file), "--set", "workers=1", "--skip-checks").exit_code == 0
    first = plane.wait_pods(ns, "det", 1)[0]["metadata"]["name"]
    plane.run(ns, first)
    plane.exit(ns, first, code, disruption=disruption)
    replacement = plane.wait_pods(ns, "det", 2, timeout=60)[-1]
    assert replacement["metadata"]["annotations"][INDEX_FAILURES] == ("1" if counted else "0")
    assert "Failed" not in conditions(job_of(plane, ns))


def test_exit_1_fails_the_job_at_once_and_status_names_the_error(
        plane: ControlPlane, ns: str, kubeconfig: Path, spec_file: Path) -> None:
    assert cli("submit", str(spec_file), "--skip-checks").exit_code == 0
    pods = plane.wait_pods(ns, "det", 2)
    for pod in pods:
        plane.run(ns, pod["metadata"]["name"])
    bad = pods[1]["metadata"]["name"]
    plane.exit(ns, bad, 1, message="INFO staging\nerror: --train /x-*: matches no file\n")
    job = wait_condition(plane, ns, "Failed")
    assert conditions(job)["Failed"] == "PodFailurePolicy"
    # FailJob: no replacement; the Job controller stops the other worker.
    wait_for(lambda: [p["metadata"]["name"] for p in plane.pods(ns, "det")] == [bad],
             "only the failed pod left")
    index = pods[1]["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"]
    st = _status(ns)
    assert st["phase"] == "Failed"
    assert st["explanation"] == (f"worker {index} stopped on a user error (exit 1): "
                                 "error: --train /x-*: matches no file")
    shown = cli("status", "det")
    assert shown.stdout.splitlines()[-1] == f"why: {st['explanation']}"


def test_retry_budget_exhausted(plane: ControlPlane, ns: str, kubeconfig: Path,
                                spec_file: Path) -> None:
    assert cli("submit", str(spec_file), "--set", "workers=1", "--retries", "1",
               "--skip-checks").exit_code == 0
    for attempt in (1, 2):
        pod = plane.wait_pods(ns, "det", attempt, timeout=60)[-1]["metadata"]["name"]
        plane.run(ns, pod)
        plane.exit(ns, pod, 42)
    job = wait_condition(plane, ns, "Failed")
    assert job["status"]["failedIndexes"] == "0"
    st = _status(ns)
    assert st["explanation"] == ("retry budget exhausted: index 0 failed more than 1 times "
                                 "(scheduling.retriesPerIndex); its last pod was preempted or "
                                 "hit a retryable error (exit 42)")
