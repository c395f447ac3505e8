"""submit / status / logs / list / delete against a stand-in API server (tests/kube_standin.py:
no Kubernetes API server runs on these machines). Job and Pod objects are shaped as the real API
returns them and checked against the official schema."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from launcher import api, cluster
from launcher.cli import app
from launcher.kube import Kube
from launcher.spec import build_spec
from launcher.validate import schema_validate
from tests.conftest import BASE_SPEC
from tests.kube_standin import ApiState, StandInApiServer

NS = "ml"


@pytest.fixture
def server() -> Iterator[StandInApiServer]:
    state = ApiState()
    state.put("namespaces", {"apiVersion": "v1", "kind": "Namespace",
                             "metadata": {"name": NS}})
    with StandInApiServer(state) as srv:
        yield srv


@pytest.fixture
def kube(server: StandInApiServer) -> Kube:
    from kubernetes import client

    return Kube(client.ApiClient(client.Configuration(host=server.url)))


def _spec(**extra: Any) -> Any:
    raw = copy.deepcopy(BASE_SPEC)
    raw.update(namespace=NS, runDir="/tmp/launcher-test-runs", **extra)
    raw["model"]["labelMap"] = None
    raw["model"] = {k: v for k, v in raw["model"].items() if v is not None}
    raw["data"] = {"train": ["/nonexistent/train-*"]}
    return build_spec(raw)


def _submit(kube: Kube, **kwargs: Any) -> list[dict[str, Any]]:
    _, applied, _ = api.submit(_spec(**kwargs.pop("spec", {})), kube=kube, checks=False,
                               **kwargs)
    return applied


def _stored(server: StandInApiServer, resource: str) -> list[dict[str, Any]]:
    return [o for (res, _, _), o in server.state.objects.items() if res == resource]


def test_submit_applies_server_side_with_owner_references(server: StandInApiServer,
                                                          kube: Kube) -> None:
    applied = _submit(kube, spec={"auth": {
        "gcpServiceAccount": "t@p-1.iam.gserviceaccount.com"}})
    assert [o["kind"] for o in applied] == ["Job", "ServiceAccount", "Service"]
    patches = [c for c in server.state.calls if c.method == "PATCH"]
    assert all(c.content_type == "application/apply-patch+yaml" for c in patches)
    assert all(c.query["fieldManager"] == ["launcher"] and c.query["force"] == ["true"]
               for c in patches)
    job = _stored(server, "jobs")[0]
    service = _stored(server, "services")[0]
    owner = service["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["uid"]) == ("Job", "det",
                                                            job["metadata"]["uid"])
    for obj in (job, service):
        schema_validate({k: v for k, v in obj.items() if k != "status"}, "1.34")


def test_submit_refuses_to_overwrite_unless_replace(server: StandInApiServer,
                                                    kube: Kube) -> None:
    _submit(kube)
    uid = _stored(server, "jobs")[0]["metadata"]["uid"]
    with pytest.raises(cluster.SubmitError, match="already exists; use --replace"):
        _submit(kube)
    _submit(kube, replace=True)
    assert _stored(server, "jobs")[0]["metadata"]["uid"] != uid
    deletes = [c for c in server.state.calls if c.method == "DELETE"]
    assert deletes and deletes[0].body["propagationPolicy"] == "Foreground"


def test_all_or_nothing_when_the_second_object_fails(server: StandInApiServer,
                                                     kube: Kube) -> None:
    server.state.failures[("PATCH", "services")] = (422, "Invalid")
    with pytest.raises(cluster.SubmitError, match=r"Service/det: Invalid: .*rolled back 1"):
        _submit(kube)
    assert _stored(server, "jobs") == [] and _stored(server, "services") == []


def test_server_dry_run_persists_nothing(server: StandInApiServer, kube: Kube) -> None:
    applied = _submit(kube, dry_run=True)
    assert len(applied) == 2
    assert all(c.query.get("dryRun") == ["All"] for c in server.state.calls
               if c.method == "PATCH")
    assert _stored(server, "jobs") == []


def test_pre_submit_checks_num_classes_against_the_label_map(kube: Kube,
                                                              tmp_path: Path) -> None:
    label_map = tmp_path / "label_map.pbtxt"
    label_map.write_text("item { id: 1 name: 'a' }\nitem { id: 2 name: 'b' }\n")
    (tmp_path / "train-0.tfrecord").write_text("x")
    raw = {**copy.deepcopy(BASE_SPEC), "namespace": NS, "runDir": str(tmp_path / "runs")}
    raw["model"] = {"checkpoint": "/m/ckpt-0", "labelMap": str(label_map), "numClasses": 3}
    raw["data"] = {"train": [str(tmp_path / "train-*.tfrecord")]}
    checks = cluster.pre_submit_checks(kube, build_spec(raw), [])
    assert [c.message for c in checks if c.level == "error"] == [
        "model.numClasses: 3 but the label map has 2 classes"]


def test_pre_submit_checks(server: StandInApiServer, kube: Kube) -> None:
    spec = _spec(auth={"keySecret": "gcs-key"})
    spec_gpu = _spec(resources={"gpus": 1}, training={"globalBatchSize": 8, "steps": 10,
                                                      "checkpointEvery": 5})
    checks = cluster.pre_submit_checks(kube, spec, [])
    assert any("auth.keySecret: Secret 'gcs-key' not found" in c.message for c in checks)
    server.state.put("secrets", {"apiVersion": "v1", "kind": "Secret",
                                 "metadata": {"name": "gcs-key", "namespace": NS},
                                 "data": {"other": ""}})
    checks = cluster.pre_submit_checks(kube, spec, [])
    assert any("no 'key.json' entry" in c.message for c in checks)
    assert any(c.level == "error" and "data.train[0]" in c.message for c in checks)
    gpu = cluster.pre_submit_checks(kube, spec_gpu, [])
    assert any(c.level == "warning" and "nvidia.com/gpu" in c.message for c in gpu)
    other = build_spec({**copy.deepcopy(BASE_SPEC), "namespace": "nope"})
    assert cluster.pre_submit_checks(kube, other, [])[0].message == \
        "namespace 'nope' does not exist"
    with pytest.raises(cluster.SubmitError, match=r"has no 'key\.json' entry; data\.train"):
        api.submit(spec, kube=kube)
    assert _stored(server, "jobs") == []


def _job(server: StandInApiServer, conditions: list[dict[str, Any]] | None = None,
         **status: Any) -> dict[str, Any]:
    _submit(Kube(_client(server)))
    job = _stored(server, "jobs")[0]
    job["status"] = {"startTime": "2026-11-29T01:00:05Z", **status}
    if conditions:
        job["status"]["conditions"] = [
            {"type": c[0], "status": "True", "reason": c[1], "message": c[2],
             "lastProbeTime": "2026-11-29T01:10:00Z",
             "lastTransitionTime": "2026-11-29T01:10:00Z"} for c in conditions]
    schema_validate(job, "1.34")
    return job


def _client(server: StandInApiServer) -> Any:
    from kubernetes import client

    return client.ApiClient(client.Configuration(host=server.url))


def _pod(server: StandInApiServer, index: int, suffix: str, phase: str,
         terminated: dict[str, Any] | None = None, waiting: dict[str, Any] | None = None,
         conditions: list[dict[str, Any]] | None = None, created: str = "01:00:10") -> None:
    state: dict[str, Any] = {}
    if terminated:
        state = {"terminated": {"startedAt": "2026-11-29T01:00:20Z",
                                "finishedAt": "2026-11-29T01:05:00Z", **terminated}}
    elif waiting:
        state = {"waiting": waiting}
    else:
        state = {"running": {"startedAt": "2026-11-29T01:00:20Z"}}
    pod = {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": f"det-{index}-{suffix}", "namespace": NS,
                     "creationTimestamp": f"2026-11-29T{created}Z",
                     "labels": {"batch.kubernetes.io/job-name": "det",
                                "batch.kubernetes.io/job-completion-index": str(index)},
                     "annotations": {"batch.kubernetes.io/job-completion-index": str(index)}},
        "spec": {"containers": [{"name": "trainer", "image": "tf-finetune-trainer:gpu"}],
                 "restartPolicy": "Never", "hostname": f"det-{index}", "subdomain": "det"},
        "status": {"phase": phase, "conditions": conditions or [],
                   "containerStatuses": [{"name": "trainer", "image": "tf-finetune-trainer:gpu",
                                          "imageID": "", "ready": phase == "Running",
                                          "restartCount": 0, "state": state}]},
    }
    schema_validate(pod, "1.34")
    server.state.put("pods", pod)


def _condition(kind: str, status: str, reason: str, message: str = "") -> dict[str, Any]:
    return {"type": kind, "status": status, "reason": reason, "message": message,
            "lastTransitionTime": "2026-11-29T01:04:00Z"}


def test_status_explains_a_user_error(server: StandInApiServer, kube: Kube) -> None:
    _job(server, [("FailureTarget", "PodFailurePolicy", "Container trainer for pod ml/det-1-b "
                   "failed with exit code 1 matching FailJob rule at index 2"),
                  ("Failed", "PodFailurePolicy", "same")], failed=1, active=0)
    _pod(server, 0, "a", "Running")
    _pod(server, 1, "b", "Failed", terminated={
        "exitCode": 1, "reason": "Error",
        "message": "INFO trainer: staging\nERROR trainer: error: --train gs://b/x-*: matches "
                   "no file\n"})
    st = cluster.status(kube, "det", NS, progress=lambda run_dir: 7)
    assert (st.step, st.steps, st.run_dir) == (7, 100, "/tmp/launcher-test-runs/det")
    assert st.phase == "Failed"
    assert st.explanation == ("worker 1 stopped on a user error (exit 1): ERROR trainer: "
                              "error: --train gs://b/x-*: matches no file")
    assert [(w.index, w.phase, w.detail) for w in st.indexes] == [(0, "Running", ""),
                                                                  (1, "Failed", "exit 1")]


@pytest.mark.parametrize(("setup", "expected"), [
    ("oom", "worker 0 ran out of memory (OOMKilled, exit 137)"),
    ("preempted", "worker 1 was preempted or evicted (TerminationByKubelet)"),
    ("budget", "retry budget exhausted: index 1 failed more than 3 times"),
    ("image", "worker 0 cannot pull its image (ImagePullBackOff)"),
    ("gpus", "worker 0 cannot be scheduled: no node has the requested GPUs free"),
    ("deadline", "scheduling.activeDeadlineSeconds reached"),
])
def test_status_explanations(server: StandInApiServer, kube: Kube, setup: str,
                             expected: str) -> None:
    if setup == "oom":
        _job(server, active=1)
        _pod(server, 0, "a", "Failed", terminated={"exitCode": 137, "reason": "OOMKilled"})
    elif setup == "preempted":
        _job(server, active=2)
        _pod(server, 0, "a", "Running")
        _pod(server, 1, "a", "Failed", terminated={"exitCode": 143, "reason": "Error"},
             conditions=[_condition("DisruptionTarget", "True", "TerminationByKubelet",
                                    "node shutdown")])
        _pod(server, 1, "b", "Running", created="01:06:00")
    elif setup == "budget":
        _job(server, [("FailureTarget", "FailedIndexes", "Job has failed indexes"),
                      ("Failed", "FailedIndexes", "Job has failed indexes")],
             failedIndexes="1", failed=4)
        for i, suffix in enumerate("abcd"):
            _pod(server, 1, suffix, "Failed", terminated={"exitCode": 42, "reason": "Error"},
                 created=f"01:0{i}:00")
    elif setup == "image":
        _job(server, active=2)
        _pod(server, 0, "a", "Pending", waiting={"reason": "ImagePullBackOff",
                                                 "message": "Back-off pulling image"})
    elif setup == "gpus":
        _job(server, active=2)
        _pod(server, 0, "a", "Pending", waiting={"reason": "ContainerCreating"},
             conditions=[_condition("PodScheduled", "False", "Unschedulable",
                                    "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.")])
    else:
        _job(server, [("Failed", "DeadlineExceeded", "Job was active longer than specified")])
    st = cluster.status(kube, "det", NS)
    assert st.explanation.startswith(expected), st.explanation
    if setup == "preempted":
        assert [w.restarts for w in st.indexes] == [0, 1]


def test_logs_from_every_worker_with_prefixes(server: StandInApiServer, kube: Kube) -> None:
    _job(server, active=2)
    _pod(server, 0, "a", "Running")
    _pod(server, 1, "a", "Failed", terminated={"exitCode": 42, "reason": "Error"})
    _pod(server, 1, "b", "Running", created="01:06:00")
    server.state.logs.update({"det-0-a": "step 1\nstep 2\n", "det-1-a": "preempted\n",
                              "det-1-b": "resumed from step 2\n"})
    assert cluster.logs(kube, "det", NS) == ["[0] step 1", "[0] step 2", "[1] preempted",
                                             "[1] resumed from step 2"]
    assert cluster.logs(kube, "det", NS, index=1)[-1] == "[1] resumed from step 2"


def test_follow_streams_every_pod_until_the_job_ends(server: StandInApiServer,
                                                     kube: Kube) -> None:
    _job(server, [("Complete", "CompletionsReached", "done")], succeeded=2)
    _pod(server, 0, "a", "Succeeded", terminated={"exitCode": 0, "reason": "Completed"})
    _pod(server, 1, "a", "Succeeded", terminated={"exitCode": 0, "reason": "Completed"})
    server.state.logs.update({"det-0-a": "a\nb\n", "det-1-a": "c\n"})
    lines: list[str] = []
    cluster.follow(kube, "det", NS, lines.append, poll=0.1)
    assert sorted(lines) == ["[0] a", "[0] b", "[1] c"]
    assert lines.index("[0] a") < lines.index("[0] b")
    follows = [c for c in server.state.calls if c.path.endswith("/log")]
    assert all(c.query["follow"] == ["true"] for c in follows)


def test_delete_propagates_and_list_shows_managed_jobs(server: StandInApiServer,
                                                       kube: Kube) -> None:
    _job(server, active=2)
    _pod(server, 0, "a", "Running")
    server.state.objects[("pods", NS, "det-0-a")]["metadata"]["ownerReferences"] = [
        {"apiVersion": "batch/v1", "kind": "Job", "name": "det",
         "uid": _stored(server, "jobs")[0]["metadata"]["uid"]}]
    server.state.put("jobs", {"apiVersion": "batch/v1", "kind": "Job",
                              "metadata": {"name": "other", "namespace": NS}, "spec": {}})
    assert [r["name"] for r in cluster.list_jobs(kube, None)] == ["det"]
    assert cluster.delete(kube, "det", NS) == ["Service/det", "Job/det"]
    assert _stored(server, "pods") == [] and _stored(server, "services") == []
    assert _stored(server, "jobs")[0]["metadata"]["name"] == "other"
    job_delete = next(c for c in server.state.calls if c.method == "DELETE" and "jobs" in c.path)
    assert job_delete.body["propagationPolicy"] == "Foreground"


def test_cli_against_the_stand_in(server: StandInApiServer, tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "standin",
        "clusters": [{"name": "standin", "cluster": {"server": server.url}}],
        "users": [{"name": "me", "user": {"token": "t"}}],
        "contexts": [{"name": "standin", "context": {"cluster": "standin", "user": "me"}}]}))
    spec_file = tmp_path / "spec.yaml"
    raw = {**copy.deepcopy(BASE_SPEC), "namespace": NS, "runDir": str(tmp_path / "runs")}
    spec_file.write_text(yaml.safe_dump(raw))
    runner = CliRunner(env={"KUBECONFIG": str(kubeconfig)})
    result = runner.invoke(app, ["submit", str(spec_file), "--skip-checks",
                                 "--context", "standin"])
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines() == ["job/det applied", "service/det applied"]
    again = runner.invoke(app, ["submit", str(spec_file), "--skip-checks"])
    assert again.exit_code != 0 and "already exists" in again.stderr
    shown = runner.invoke(app, ["status", "det", "-n", NS, "-o", "json"])
    assert shown.exit_code == 0, shown.stderr
    assert json.loads(shown.stdout)["phase"] == "Pending"
    listed = runner.invoke(app, ["list"])
    assert "det" in listed.stdout
    gone = runner.invoke(app, ["delete", "det", "-n", NS])
    assert gone.stdout.splitlines() == ["deleted Service/det", "deleted Job/det"]
    missing = runner.invoke(app, ["status", "det", "-n", NS])
    assert missing.exit_code != 0 and missing.stderr.strip() == "error: job ml/det not found"
