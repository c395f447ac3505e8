"""submit / status / logs / list / delete on a real control plane: ownership, RBAC, purging,
failure explanations and server dry runs, each as a user meets them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cluster.conftest import cli, job_of, wait_condition
from tests.cluster.controlplane import ControlPlane, wait_for
from trainer import contract


def _one_error_line(result: Any, expected: str) -> None:
    assert result.exit_code != 0
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert expected in lines[0], lines[0]


def _service(ns: str, name: str = "det") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": ns, "labels": {"app": "web"}},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}}


def _foreign_job(ns: str, run_dir: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": "det", "namespace": ns, "labels": labels or {"team": "web"},
                         "annotations": {contract.RUN_DIR_ANNOTATION: run_dir}},
            "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [
                {"name": "main", "image": "busybox"}]}}}}


# --- ownership ----------------------------------------------------------------------------------

def test_submit_never_takes_over_a_service_it_did_not_create(
        plane: ControlPlane, ns: str, kubeconfig: Path, spec_file: Path) -> None:
    before = plane.must("POST", f"/api/v1/namespaces/{ns}/services", _service(ns))
    result = cli("submit", str(spec_file), "--skip-checks")
    _one_error_line(result, f"Service {ns}/det exists and was not created by launcher")
    after = plane.must("GET", f"/api/v1/namespaces/{ns}/services/det")
    assert after["spec"]["selector"] == {"app": "web"}
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    assert "ownerReferences" not in after["metadata"]
    # Nothing half-done: the Job was not created either.
    assert plane.request("GET", f"/apis/batch/v1/namespaces/{ns}/jobs/det")[0] == 404


def test_submit_never_rewrites_a_foreign_service_account(
        plane: ControlPlane, ns: str, kubeconfig: Path, spec_file: Path) -> None:
    annotation = "iam.gke.io/gcp-service-account"
    plane.must("POST", f"/api/v1/namespaces/{ns}/serviceaccounts", {
        "apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": "det", "namespace": ns,
                     "annotations": {annotation: "web@p.iam.gserviceaccount.com"}}})
    result = cli("submit", str(spec_file), "--skip-checks",
                 "--gcp-service-account", "trainer@p.iam.gserviceaccount.com")
    _one_error_line(result, f"ServiceAccount {ns}/det exists and was not created by launcher")
    sa = plane.must("GET", f"/api/v1/namespaces/{ns}/serviceaccounts/det")
    assert sa["metadata"]["annotations"][annotation] == "web@p.iam.gserviceaccount.com"


def test_replace_and_delete_refuse_a_job_this_tool_did_not_create(
        plane: ControlPlane, ns: str, kubeconfig: Path, spec_file: Path, tmp_path: Path) -> None:
    plane.must("POST", f"/apis/batch/v1/namespaces/{ns}/jobs", _foreign_job(ns, str(tmp_path)))
    replaced = cli("submit", str(spec_file), "--skip-checks", "--replace")
    _one_error_line(replaced, f"Job {ns}/det exists and was not created by launcher")
    deleted = cli("delete", "det")
    _one_error_line(deleted, f"Job {ns}/det exists and was not created by launcher")
    assert job_of(plane, ns)["metadata"]["labels"] == {"team": "web"}


def test_delete_leaves_a_foreign_service_of_the_same_name(
        plane: ControlPlane, ns: str, kubeconfig: Path, spec_file: Path) -> None:
    assert cli("submit", str(spec_file), "--skip-checks").exit_code == 0
    plane.must("DELETE", f"/api/v1/namespaces/{ns}/services/det")
    plane.must("POST", f"/api/v1/namespaces/{ns}/services", _service(ns))
    gone = cli("delete", "det")
    assert gone.exit_code == 0, gone.stderr
    assert gone.stdout.splitlines() == ["deleted NetworkPolicy/det", "deleted Job/det"]
    assert plane.request("GET", f"/api/v1/namespaces/{ns}/services/det")[0] == 200


# --- connection and permissions -----------------------------------------------------------------

def test_an_unreachable_api_server_is_one_line(tmp_path: Path, spec_file: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.cluster.controlplane import free_port

    port = free_port()  # nothing listens here
    config = tmp_path / "unreachable.yaml"
    config.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "x",
        "clusters": [{"name": "x", "cluster": {"server": f"https://127.0.0.1:{port}",
                                               "insecure-skip-tls-verify": True}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "x", "context": {"cluster": "x", "user": "u"}}]}))
    monkeypatch.setenv("KUBECONFIG", str(config))
    for args in (["status", "det"], ["submit", str(spec_file), "--skip-checks"], ["list"],
                 ["logs", "det"], ["delete", "det"]):
        result = cli(*args)
        _one_error_line(result, f"cannot reach the API server https://127.0.0.1:{port}")
        assert "refused" in result.stderr.lower(), result.stderr


def test_a_user_with_the_edit_role_in_one_namespace_can_submit_and_list(
        plane: ControlPlane, ns: str, spec_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plane.must("POST", f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings", {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": "alice-edit", "namespace": ns},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                    "name": "edit"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User",
                      "name": "alice"}]})
    monkeypatch.setenv("KUBECONFIG", str(plane.kubeconfig("edit-token", namespace=ns,
                                                          name=f"{ns}-alice")))
    submitted = cli("submit", str(spec_file), "--gpus", "1")
    assert submitted.exit_code == 0, submitted.stderr
    assert "warning: GPU capacity (nodes) not checked: this user may not read it" in \
        submitted.stderr
    listed = cli("list")
    assert listed.exit_code == 0, listed.stderr
    assert listed.stderr.strip() == (f"warning: this user may not list jobs in all namespaces: "
                                     f"showing namespace '{ns}' (the context's); use -n for "
                                     "another")
    assert [line.split()[:2] for line in listed.stdout.splitlines()[1:]] == [[ns, "det"]]
    status = cli("status", "det")
    assert status.exit_code == 0, status.stderr
    other = cli("status", "det", "-n", "default")
    _one_error_line(other, "Forbidden")


# --- run directories and purge ------------------------------------------------------------------

def test_run_directories_are_per_namespace_and_purge_only_its_own(
        plane: ControlPlane, ns: str, kubeconfig: Path, spec_file: Path, runs: Path) -> None:
    other = f"{ns}-b"
    plane.create_namespace(other)
    try:
        for namespace in (ns, other):
            result = cli("submit", str(spec_file), "-n", namespace, "--skip-checks")
            assert result.exit_code == 0, result.stderr
        mine, theirs = runs / ns / "det", runs / other / "det"
        assert job_of(plane, ns)["metadata"]["annotations"][contract.RUN_DIR_ANNOTATION] == \
            str(mine)
        record = json.loads((mine / contract.RUN_JOB_RECORD).read_text())
        assert record == {"namespace": ns, "name": "det",
                          "uid": job_of(plane, ns)["metadata"]["uid"]}
        (mine / "checkpoints").mkdir()
        (mine / "checkpoints" / "LATEST").write_text("4\n")
        (theirs / "checkpoints").mkdir()
        (theirs / "checkpoints" / "LATEST").write_text("9\n")
        purged = cli("delete", "det", "--purge", "--yes")
        assert purged.exit_code == 0, purged.stderr
        assert purged.stdout.splitlines() == ["deleted Service/det", "deleted NetworkPolicy/det",
                                              "deleted Job/det",
                                              f"deleted {mine}"]
        assert not mine.exists()
        assert (theirs / "checkpoints" / "LATEST").read_text() == "9\n"
    finally:
        plane.request("DELETE", f"/api/v1/namespaces/{other}")


def test_purge_trusts_no_annotation_of_a_foreign_job(
        plane: ControlPlane, ns: str, kubeconfig: Path, tmp_path: Path) -> None:
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "data.txt").write_text("keep")
    plane.must("POST", f"/apis/batch/v1/namespaces/{ns}/jobs",
               _foreign_job(ns, str(precious)))
    result = cli("delete", "det", "--purge", "--yes")
    _one_error_line(result, "was not created by launcher")
    assert (precious / "data.txt").read_text() == "keep"
    assert plane.request("GET", f"/apis/batch/v1/namespaces/{ns}/jobs/det")[0] == 200


def test_purge_refuses_a_run_directory_that_is_not_this_jobs(
        plane: ControlPlane, ns: str, kubeconfig: Path, spec_file: Path, runs: Path) -> None:
    assert cli("submit", str(spec_file), "--skip-checks").exit_code == 0
    run_dir = runs / ns / "det"
    # An earlier job of that name owns the directory now (another uid).
    record = json.loads((run_dir / contract.RUN_JOB_RECORD).read_text())
    (run_dir / contract.RUN_JOB_RECORD).write_text(json.dumps({**record, "uid": "other"}))
    result = cli("delete", "det", "--purge", "--yes")
    _one_error_line(result, "does not belong to this job")
    assert "nothing was deleted" in result.stderr
    assert (run_dir / contract.RUN_SPEC).exists()
    assert plane.request("GET", f"/apis/batch/v1/namespaces/{ns}/jobs/det")[0] == 200


def test_purge_without_storage_credentials_deletes_nothing(
        plane: ControlPlane, ns: str, kubeconfig: Path, spec_file: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", "/nonexistent/key.json")
    submitted = cli("submit", str(spec_file), "--skip-checks", "--run-dir", "gs://bucket/runs")
    assert submitted.exit_code == 0, submitted.stderr
    assert "warning: run directory not recorded (DefaultCredentialsError" in submitted.stderr
    result = cli("delete", "det", "--purge", "--yes")
    _one_error_line(result, f"--purge: gs://bucket/runs/{ns}/det cannot be checked "
                            "(DefaultCredentialsError")
    assert "nothing was deleted" in result.stderr
    assert plane.request("GET", f"/apis/batch/v1/namespaces/{ns}/jobs/det")[0] == 200


# --- status explanations ------------------------------------------------------------------------

def _index_pods(plane: ControlPlane, ns: str, count: int) -> dict[int, str]:
    pods = plane.wait_pods(ns, "det", count)
    return {int(p["metadata"]["annotations"][contract.INDEX_ANNOTATION]): p["metadata"]["name"]
            for p in pods}


def _why(ns: str) -> str:
    result = cli("status", "det", "-o", "json")
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)["explanation"]


def test_status_explains_the_current_failure_not_an_old_oom(
        plane: ControlPlane, ns: str, kubeconfig: Path, spec_file: Path) -> None:
    assert cli("submit", str(spec_file), "--set", "workers=1", "--skip-checks").exit_code == 0
    first = _index_pods(plane, ns, 1)[0]
    plane.run(ns, first)
    plane.exit(ns, first, 137, reason="OOMKilled")
    second = plane.wait_pods(ns, "det", 2, timeout=60)[-1]["metadata"]["name"]
    assert _why(ns) == ""  # replaced: the OOM is history (a restart), not the present
    plane.wait(ns, second, "ImagePullBackOff", "Back-off pulling image \"trainer:test\"")
    assert _why(ns) == ('worker 0 cannot pull its image (ImagePullBackOff): Back-off pulling '
                        'image "trainer:test"')
    plane.run(ns, second)
    plane.exit(ns, second, 1, message="error: --label-map x: not found")
    wait_condition(plane, ns, "Failed")
    assert _why(ns) == "worker 0 stopped on a user error (exit 1): error: --label-map x: not found"


def test_a_healthy_job_shows_no_old_eviction(plane: ControlPlane, ns: str, kubeconfig: Path,
                                             spec_file: Path) -> None:
    assert cli("submit", str(spec_file), "--set", "workers=1", "--skip-checks").exit_code == 0
    first = _index_pods(plane, ns, 1)[0]
    plane.run(ns, first)
    plane.exit(ns, first, 143, disruption="EvictionByEvictionAPI")
    replacement = plane.wait_pods(ns, "det", 2, timeout=60)[-1]["metadata"]["name"]
    plane.run(ns, replacement)
    wait_for(lambda: job_of(plane, ns)["status"].get("ready") == 1, "the Job to count it ready")
    shown = cli("status", "det")
    assert shown.exit_code == 0, shown.stderr
    assert "why:" not in shown.stdout
    assert shown.stdout.splitlines()[0] == f"{ns}/det: Running  0/1 done"
    assert shown.stdout.splitlines()[2].split()[:4] == ["0", replacement, "Running", "1"]


@pytest.mark.parametrize(("args", "expected"), [
    (["--set", "auth.serviceAccount=missing-sa"],
     'pods cannot be created: Error creating: pods "det-0-'),
    (["--set", "scheduling.priorityClass=missing-priority"],
     "pods cannot be created: Error creating: pods \"det-0-"),
])
def test_status_shows_why_pods_cannot_be_created(
        plane: ControlPlane, ns: str, kubeconfig: Path, spec_file: Path, args: list[str],
        expected: str) -> None:
    result = cli("submit", str(spec_file), "--set", "workers=1", "--skip-checks", *args)
    assert result.exit_code == 0, result.stderr
    why = wait_for(lambda: _why(ns), "an explanation")
    assert why.startswith(expected), why
    assert args[1].split("=")[1] in why
    assert cli("status", "det").stdout.splitlines()[0] == f"{ns}/det: Pending  0/1 done"


def test_an_unschedulable_gpu_job_is_pending_and_says_why(
        plane: ControlPlane, ns: str, kubeconfig: Path, spec_file: Path) -> None:
    result = cli("submit", str(spec_file), "--profile", "gke", "--gpus", "4", "--skip-checks",
                 "--run-dir", "gs://bucket/runs", "--checkpoint", "gs://bucket/ckpt/ckpt-0",
                 "--train", "gs://bucket/data/train-*")
    assert result.exit_code == 0, result.stderr
    plane.wait_pods(ns, "det", 2, scheduled=False)
    why = wait_for(lambda: _why(ns), "an explanation")
    assert why.startswith("worker 0 cannot be scheduled: no node offers 4 free nvidia.com/gpu "
                          "with cloud.google.com/gke-accelerator=nvidia-l4 (0/3 nodes are "
                          "available"), why
    shown = cli("status", "det")
    assert shown.stdout.splitlines()[0] == f"{ns}/det: Pending  0/2 done"


# --- checks before submitting -------------------------------------------------------------------

LOCALQUEUE_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": "localqueues.kueue.x-k8s.io"},
    "spec": {"group": "kueue.x-k8s.io", "scope": "Namespaced",
             "names": {"plural": "localqueues", "singular": "localqueue", "kind": "LocalQueue"},
             "versions": [{"name": "v1beta1", "served": True, "storage": True, "schema": {
                 "openAPIV3Schema": {"type": "object",
                                     "x-kubernetes-preserve-unknown-fields": True}}}]}}


def test_priority_class_and_queue_are_checked_before_submitting(
        plane: ControlPlane, ns: str, kubeconfig: Path, spec_file: Path) -> None:
    result = cli("submit", str(spec_file), "--set", "scheduling.priorityClass=nope")
    _one_error_line(result, "scheduling.priorityClass: PriorityClass 'nope' does not exist")
    crd = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
    if plane.request("GET", f"{crd}/localqueues.kueue.x-k8s.io")[0] == 404:
        result = cli("submit", str(spec_file), "--queue", "team-a")
        _one_error_line(result, "scheduling.queue: Kueue is not installed on this cluster")
        plane.must("POST", crd, LOCALQUEUE_CRD)
    path = f"/apis/kueue.x-k8s.io/v1beta1/namespaces/{ns}/localqueues"
    wait_for(lambda: plane.request("GET", path)[0] == 200, "the LocalQueue API")
    result = cli("submit", str(spec_file), "--queue", "team-a")
    _one_error_line(result, f"scheduling.queue: LocalQueue 'team-a' not found in {ns}")
    assert plane.request("GET", f"/apis/batch/v1/namespaces/{ns}/jobs/det")[0] == 404
    plane.must("POST", path, {"apiVersion": "kueue.x-k8s.io/v1beta1", "kind": "LocalQueue",
                              "metadata": {"name": "team-a", "namespace": ns},
                              "spec": {"clusterQueue": "cq"}})
    result = cli("submit", str(spec_file), "--queue", "team-a")
    assert result.exit_code == 0, result.stderr
    assert job_of(plane, ns)["spec"]["suspend"] is True


def test_server_dry_run_of_replace_simulates_the_delete(
        plane: ControlPlane, ns: str, kubeconfig: Path, spec_file: Path) -> None:
    assert cli("submit", str(spec_file), "--skip-checks").exit_code == 0
    before = job_of(plane, ns)
    # Changes the pod template, immutable in a Job: only a delete and create can do it.
    result = cli("submit", str(spec_file), "--skip-checks", "--replace", "--dry-run=server",
                 "--set", "training.steps=500", "--image", "trainer:v2")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines() == ["job/det applied (server dry run)",
                                          "service/det applied (server dry run)",
                                          "networkpolicy/det applied (server dry run)"]
    after = job_of(plane, ns)
    assert after["metadata"]["uid"] == before["metadata"]["uid"]
    assert after["spec"]["template"] == before["spec"]["template"]
    assert "deletionTimestamp" not in after["metadata"]


def test_all_or_nothing_when_a_later_object_is_refused(
        plane: ControlPlane, ns: str, kubeconfig: Path, spec_file: Path) -> None:
    plane.must("POST", f"/api/v1/namespaces/{ns}/resourcequotas", {
        "apiVersion": "v1", "kind": "ResourceQuota",
        "metadata": {"name": "no-services", "namespace": ns}, "spec": {"hard": {"services": "0"}}})
    wait_for(lambda: plane.must("GET", f"/api/v1/namespaces/{ns}/resourcequotas/no-services")
             .get("status", {}).get("hard"), "the quota to be in force")
    result = cli("submit", str(spec_file), "--skip-checks")
    _one_error_line(result, "Service/det: Forbidden: ")
    assert "rolled back 1 object(s) this call created" in result.stderr
    wait_for(lambda: plane.request("GET", f"/apis/batch/v1/namespaces/{ns}/jobs/det")[0] == 404,
             "the Job to be rolled back")


def test_submit_twice_and_server_dry_run(plane: ControlPlane, ns: str, kubeconfig: Path,
                                         spec_file: Path) -> None:
    dry = cli("submit", str(spec_file), "--dry-run=server")
    assert dry.exit_code == 0, dry.stderr
    assert dry.stdout.splitlines() == ["job/det applied (server dry run)",
                                       "service/det applied (server dry run)",
                                       "networkpolicy/det applied (server dry run)"]
    assert plane.request("GET", f"/apis/batch/v1/namespaces/{ns}/jobs/det")[0] == 404
    assert plane.request("GET", f"/api/v1/namespaces/{ns}/services/det")[0] == 404
    assert cli("submit", str(spec_file)).exit_code == 0
    uid = job_of(plane, ns)["metadata"]["uid"]
    service = plane.must("GET", f"/api/v1/namespaces/{ns}/services/det")
    assert service["metadata"]["ownerReferences"][0]["uid"] == uid
    again = cli("submit", str(spec_file), "--skip-checks")
    _one_error_line(again, f"job {ns}/det already exists; use --replace")
    replaced = cli("submit", str(spec_file), "--skip-checks", "--replace")
    assert replaced.exit_code == 0, replaced.stderr
    assert job_of(plane, ns)["metadata"]["uid"] != uid


def test_pre_submit_checks_name_the_field(plane: ControlPlane, ns: str, kubeconfig: Path,
                                          spec_file: Path, tmp_path: Path) -> None:
    label_map = tmp_path / "label_map.pbtxt"
    label_map.write_text("item { id: 1 name: 'a' }\nitem { id: 2 name: 'b' }\n")
    result = cli("submit", str(spec_file), "--key-secret", "gcs-key", "--label-map",
                 str(label_map), "--set", "model.numClasses=1")
    _one_error_line(result, "auth.keySecret: Secret 'gcs-key' not found in " + ns)
    assert "trainer: num_classes 1 (flag) is smaller than the label map's largest id 2" in \
        result.stderr
    result = cli("submit", str(spec_file), "--train", "/nonexistent/x-*")
    _one_error_line(result, "data.train[0]: /nonexistent/x-* matches no file")
    plane.must("POST", f"/api/v1/namespaces/{ns}/secrets", {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "gcs-key", "namespace": ns},
        "data": {"other": ""}})
    result = cli("submit", str(spec_file), "--key-secret", "gcs-key")
    _one_error_line(result, "auth.keySecret: Secret 'gcs-key' has no 'key.json' entry")
    result = cli("submit", str(spec_file), "-n", "nope")
    _one_error_line(result, "namespace 'nope' does not exist")
    assert plane.request("GET", f"/apis/batch/v1/namespaces/{ns}/jobs/det")[0] == 404


def test_secret_env_is_checked_before_submitting(plane: ControlPlane, ns: str,
                                                 kubeconfig: Path, spec_file: Path) -> None:
    ref = "secretEnv.API_KEY={secret: tracking, key: api-key}"
    result = cli("submit", str(spec_file), "--set", ref)
    _one_error_line(result, f"secretEnv.API_KEY: Secret 'tracking' not found in {ns}")
    plane.must("POST", f"/api/v1/namespaces/{ns}/secrets", {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "tracking", "namespace": ns},
        "data": {"other": "eA=="}})
    result = cli("submit", str(spec_file), "--set", ref)
    _one_error_line(result, "secretEnv.API_KEY: Secret 'tracking' has no 'api-key' entry")
    plane.must("PATCH", f"/api/v1/namespaces/{ns}/secrets/tracking",
               {"data": {"api-key": "c2VjcmV0LXZhbHVl"}},
               content_type="application/merge-patch+json")
    result = cli("submit", str(spec_file), "--set", ref)
    assert result.exit_code == 0, result.stderr
    job = json.dumps(job_of(plane, ns))
    assert "secret-value" not in job and "c2VjcmV0LXZhbHVl" not in job
    assert "secret-value" not in (Path(spec_file).parent / "runs" / ns / "det" /
                                  contract.RUN_SPEC).read_text()
