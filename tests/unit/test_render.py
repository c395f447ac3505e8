"""Rendering: every profile and worker count gives schema-valid objects that obey the contract."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import pytest
import yaml

from launcher.api import build_objects
from launcher.errors import SpecError
from launcher.render import RETRY_CODES, render, to_json, to_yaml
from launcher.spec import build_spec, image_warnings
from launcher.validate import validate_objects
from tests.conftest import BASE_SPEC
from trainer import contract
from trainer.config import from_args
from trainer.fields import value_in_args

PROFILES = ["gke", "kind", "generic"]


def _spec(profile: str, workers: int, **extra: Any) -> dict[str, Any]:
    raw = copy.deepcopy(BASE_SPEC)
    raw.update(profile=profile, workers=workers)
    raw["training"]["globalBatchSize"] = 8 * workers
    raw.update(extra)
    return raw


def _by_kind(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {o["kind"]: o for o in objects}


def _expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion of env values."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env[m[1]], value)


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("workers", [1, 2, 8])
def test_rendered_objects_are_schema_valid_and_tf_config_matches(profile: str,
                                                                 workers: int) -> None:
    _, objects = build_objects(build_spec(_spec(profile, workers)), "1.34")
    validate_objects(objects, "1.31", profile)  # the oldest supported schema accepts them too
    kinds = _by_kind(objects)
    job, service = kinds["Job"], kinds["Service"]
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["selector"] == {contract.JOB_NAME_LABEL: "det"}
    js = job["spec"]
    assert js["completionMode"] == "Indexed"
    assert js["completions"] == js["parallelism"] == workers
    pod = js["template"]["spec"]
    assert pod["subdomain"] == service["metadata"]["name"] == "det"
    # Only the job's own pods reach the workers' port.
    policy = kinds["NetworkPolicy"]["spec"]
    selector = {contract.LABEL_INSTANCE: "det", contract.LABEL_COMPONENT: "trainer"}
    assert selector.items() <= js["template"]["metadata"]["labels"].items()
    assert policy["podSelector"]["matchLabels"] == selector
    assert policy["ingress"] == [{"from": [{"podSelector": {"matchLabels": selector}}],
                                  "ports": [{"protocol": "TCP", "port": 2222}]}]
    # Disk is bounded: emptyDir size limits, and the pod asks for (and is limited to) their sum.
    volumes = {v["name"]: v for v in pod["volumes"]}
    scratch = {"gke": "100Gi", "kind": "5Gi", "generic": "20Gi"}[profile]
    assert volumes["scratch"]["emptyDir"]["sizeLimit"] == scratch
    assert volumes["tmp"]["emptyDir"]["sizeLimit"] == "1Gi"
    total = f"{int(scratch[:-2]) + 1}Gi"
    resources = pod["containers"][0]["resources"]
    assert resources["requests"]["ephemeral-storage"] == resources["limits"][
        "ephemeral-storage"] == total
    assert pod["restartPolicy"] == "Never"
    env = pod["containers"][0]["env"]
    assert env[0]["name"] == contract.ENV_INDEX
    assert env[0]["valueFrom"]["fieldRef"]["fieldPath"] == (
        f"metadata.annotations['{contract.INDEX_ANNOTATION}']")
    raw_tf_config = next(e["value"] for e in env if e["name"] == "TF_CONFIG")
    hosts = [f"det-{i}.det:2222" for i in range(workers)]
    for index in range(workers):
        tf_config = json.loads(_expand(raw_tf_config, {contract.ENV_INDEX: str(index)}))
        assert tf_config == {"cluster": {"worker": hosts},
                             "task": {"type": "worker", "index": index}}
        assert tf_config == contract.tf_config(contract.worker_hosts("det", workers), index)
    for obj in objects:
        labels = obj["metadata"]["labels"]
        assert labels[contract.LABEL_INSTANCE] == "det"
        assert labels[contract.LABEL_MANAGED_BY] == "launcher"
    gpu_limits = pod["containers"][0]["resources"]["limits"].get("nvidia.com/gpu")
    assert gpu_limits == (1 if profile == "gke" else None)


def test_exit_code_contract_in_pod_failure_policy(base_spec: dict[str, Any]) -> None:
    job = _by_kind(render(build_spec(base_spec)))["Job"]["spec"]
    rules = job["podFailurePolicy"]["rules"]
    assert rules[0] == {"action": "Ignore",
                        "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
    assert rules[1]["action"] == "Ignore"
    assert rules[1]["onExitCodes"]["values"] == [contract.EXIT_PEER_LOST]
    assert rules[2]["action"] == "FailJob"
    assert rules[2]["onExitCodes"]["operator"] == "NotIn"
    assert rules[2]["onExitCodes"]["values"] == RETRY_CODES
    assert contract.EXIT_USER_ERROR not in RETRY_CODES
    assert job["backoffLimitPerIndex"] == 3
    assert job["maxFailedIndexes"] == 0
    assert job["podReplacementPolicy"] == "Failed"


def test_pod_security_defaults(base_spec: dict[str, Any]) -> None:
    pod = _by_kind(render(build_spec(base_spec)))["Job"]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    sc = pod["containers"][0]["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}


def test_gke_profile_adds_accelerator_tolerations_and_shm(base_spec: dict[str, Any]) -> None:
    base_spec.update(profile="gke")
    pod = _by_kind(render(build_spec(base_spec)))["Job"]["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in \
        pod["tolerations"]
    shm = next(v for v in pod["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"]["medium"] == "Memory"


def test_kind_profile_has_no_gpu_fields(base_spec: dict[str, Any]) -> None:
    base_spec.update(profile="kind")
    pod = _by_kind(render(build_spec(base_spec)))["Job"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert "nvidia.com/gpu" not in json.dumps(container["resources"])
    assert "nodeSelector" not in pod and "tolerations" not in pod
    assert container["imagePullPolicy"] == "IfNotPresent"


def test_workload_identity_renders_service_account(base_spec: dict[str, Any]) -> None:
    base_spec["auth"] = {"gcpServiceAccount": "trainer@proj-1.iam.gserviceaccount.com"}
    _, objects = build_objects(build_spec(base_spec))
    assert [o["kind"] for o in objects] == ["ServiceAccount", "Service", "NetworkPolicy", "Job"]
    sa = objects[0]
    assert sa["metadata"]["annotations"]["iam.gke.io/gcp-service-account"] == \
        "trainer@proj-1.iam.gserviceaccount.com"
    assert objects[3]["spec"]["template"]["spec"]["serviceAccountName"] == sa["metadata"]["name"]


def test_key_secret_is_mounted_never_inlined(base_spec: dict[str, Any]) -> None:
    base_spec["auth"] = {"keySecret": "gcs-key"}
    _, objects = build_objects(build_spec(base_spec))
    pod = _by_kind(objects)["Job"]["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "gcp-key")
    assert volume["secret"]["secretName"] == "gcs-key"
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["GOOGLE_APPLICATION_CREDENTIALS"] == "/var/secrets/google/key.json"
    assert all(o["kind"] != "Secret" for o in objects)


def test_kueue_queue_label_and_suspend(base_spec: dict[str, Any]) -> None:
    base_spec["scheduling"] = {"queue": "team-a"}
    job = _by_kind(render(build_spec(base_spec)))["Job"]
    assert job["metadata"]["labels"][contract.KUEUE_QUEUE_LABEL] == "team-a"
    assert job["spec"]["suspend"] is True


@pytest.mark.parametrize("payload", [
    "x\nkind: Secret",
    "\"}, {\"name\": \"EVIL\", \"value\": \"1",
    "{{ spec.name }}",
    "---\napiVersion: v1\nkind: Secret",
    "'; rm -rf / #",
])
def test_free_text_values_cannot_inject_yaml(base_spec: dict[str, Any], payload: str) -> None:
    base_spec["env"] = {"NOTE": payload}
    base_spec["scheduling"] = {"nodeSelector": {"pool": "a"}}
    objects = render(build_spec(base_spec))
    assert [o["kind"] for o in objects] == ["Service", "NetworkPolicy", "Job"]
    env = _by_kind(objects)["Job"]["spec"]["template"]["spec"]["containers"][0]["env"]
    assert [e for e in env if e["name"] == "NOTE"] == [{"name": "NOTE", "value": payload}]
    assert not any(e["name"] == "EVIL" for e in env)


def test_custom_command_keeps_tf_config_and_contract(base_spec: dict[str, Any]) -> None:
    base_spec["command"] = ["python", "model_main_tf2.py"]
    base_spec["args"] = ["--pipeline_config_path=/cfg/pipeline.config", "--num_workers=2"]
    job = _by_kind(render(build_spec(base_spec)))["Job"]
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["python", "model_main_tf2.py"]
    assert container["args"][1] == "--num_workers=2"
    assert any(e["name"] == "TF_CONFIG" for e in container["env"])
    assert "podFailurePolicy" in job["spec"]


def test_trainer_args_carry_the_spec(base_spec: dict[str, Any]) -> None:
    container = _by_kind(render(build_spec(base_spec)))["Job"]["spec"]["template"]["spec"][
        "containers"][0]
    args = container["args"]
    assert value_in_args(args, "run_dir") == "gs://bucket-a/runs/default/det"
    assert value_in_args(args, "global_batch_size") == "8"
    assert [a.split("=")[0] for a in args].count("--train") == 1
    assert [a.split("=")[0] for a in args].count("--eval") == 1


def test_a_value_that_starts_with_a_dash_stays_a_value(base_spec: dict[str, Any]) -> None:
    """Every rendered argument is one ``--flag=value`` token: a path such as ``-runs`` can
    never be read as a flag (it once rendered as its own token, which argparse refused)."""
    base_spec.update(runDir="-runs")
    base_spec["model"]["checkpoint"] = "--ckpt/ckpt-0"
    base_spec["data"]["train"] = ["-train-*.tfrecord"]
    args = _by_kind(render(build_spec(base_spec)))["Job"]["spec"]["template"]["spec"][
        "containers"][0]["args"]
    assert all(arg.startswith("--") and "=" in arg for arg in args), args
    cfg = from_args(args, {})
    assert (cfg.run_dir, cfg.checkpoint, cfg.train) == (
        "-runs/default/det", "--ckpt/ckpt-0", ["-train-*.tfrecord"])


def test_yaml_and_json_outputs_round_trip(base_spec: dict[str, Any]) -> None:
    objects = render(build_spec(base_spec))
    assert list(yaml.safe_load_all(to_yaml(objects))) == objects
    assert json.loads(to_json(objects))["items"] == objects


def test_secret_env_renders_references(base_spec: dict[str, Any]) -> None:
    base_spec["secretEnv"] = {"WANDB_API_KEY": {"secret": "tracking", "key": "api-key"}}
    spec = build_spec(base_spec)
    _, objects = build_objects(spec)
    env = _by_kind(objects)["Job"]["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "WANDB_API_KEY", "valueFrom": {"secretKeyRef": {
        "name": "tracking", "key": "api-key"}}} in env
    for bad, field in [({"HOME": {"secret": "s", "key": "k"}}, "secretEnv"),
                       ({"X": {"secret": "Bad_Name", "key": "k"}}, "secretEnv.X.secret"),
                       ({"X": {"secret": "s", "key": "a/b"}}, "secretEnv.X.key")]:
        with pytest.raises(SpecError) as err:
            build_spec({**base_spec, "secretEnv": bad})
        assert err.value.field == field
    with pytest.raises(SpecError, match="is also set in env"):
        build_spec({**base_spec, "env": {"X": "1"},
                    "secretEnv": {"X": {"secret": "s", "key": "k"}}})


@pytest.mark.parametrize(("image", "warned"), [
    ("repo/trainer:latest", ":latest"), ("repo/trainer", "has no tag"),
    ("registry:5000/trainer", "has no tag"), ("repo/trainer:1.2", None),
    ("repo/trainer@sha256:" + "a" * 64, None),
])
def test_mutable_image_tags_warn(base_spec: dict[str, Any], image: str,
                                 warned: str | None) -> None:
    warnings = image_warnings(build_spec({**base_spec, "image": image}))
    if warned is None:
        assert warnings == []
    else:
        assert len(warnings) == 1 and warned in warnings[0]


def test_the_od_api_trainer_example_renders_with_the_contract() -> None:
    """docs/examples/od-api-trainer.yaml (docs/od-api.md): the OD API's own trainer, with
    TF_CONFIG, the run directory and the exit-code policy of every job."""
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "docs" / "examples" / "od-api-trainer.yaml"
    spec, objects = build_objects(build_spec(yaml.safe_load(path.read_text())), "1.34")
    validate_objects(objects, "1.31", spec.profile)
    job = _by_kind(objects)["Job"]
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["command"][-1].endswith("object_detection/model_main_tf2.py")
    assert "--num_workers=2" in container["args"] and spec.workers == 2
    assert "--model_dir=$(LAUNCHER_RUN_DIR)/od-api" in container["args"]
    names = {e["name"] for e in container["env"]}
    assert {contract.ENV_TF_CONFIG, contract.ENV_RUN_DIR} <= names
    rules = job["spec"]["podFailurePolicy"]["rules"]
    assert any(r["action"] == "Ignore" and r.get("onPodConditions") for r in rules)
