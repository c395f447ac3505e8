"""Spec validation through the CLI: bad input gives one clear line naming the field, a non-zero exit
and no output; good input renders, validates and writes files."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from launcher import __version__
from launcher.cli import app
from launcher.reference import example_spec_text
from launcher.spec import JobSpec, build_spec
from tests.conftest import BASE_SPEC
from trainer.fields import value_in_args

runner = CliRunner()


def _with(path: str, value: Any) -> dict[str, Any]:
    raw = copy.deepcopy(BASE_SPEC)
    node = raw
    keys = path.split(".")
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    node[keys[-1]] = value
    return raw


def _without(path: str) -> dict[str, Any]:
    raw = copy.deepcopy(BASE_SPEC)
    node = raw
    keys = path.split(".")
    for key in keys[:-1]:
        node = node[key]
    del node[keys[-1]]
    return raw


# (spec mapping, field the error must name, words the message must contain)
BAD_SPECS: list[tuple[str, dict[str, Any], str, str]] = [
    ("uppercase name", _with("name", "Det"), "name", "DNS-1035"),
    ("name starts with digit", _with("name", "1det"), "name", "start with a letter"),
    ("name with underscore", _with("name", "my_job"), "name", "DNS-1035"),
    ("name too long", _with("name", "a" * 62), "name", "limit is 63"),
    ("name too long with 8 workers", {**_with("name", "a" * 61), "workers": 12}, "name",
     "too long"),
    ("zero workers", _with("workers", 0), "workers", ">= 1"),
    ("negative workers", _with("workers", -2), "workers", ">= 1"),
    ("workers as string", _with("workers", "two"), "workers", "expected int"),
    ("workers as float", _with("workers", 2.5), "workers", "expected int"),
    ("gpus on kind", {**_with("resources.gpus", 1), "profile": "kind"}, "resources.gpus",
     "CPU only"),
    ("accelerator on kind", {**_with("resources.accelerator", "nvidia-l4"), "profile": "kind"},
     "resources.accelerator", "no accelerators"),
    ("negative gpus", _with("resources.gpus", -1), "resources.gpus", ">= 0"),
    ("bad quantity", _with("resources.memory", "lots"), "resources.memory", "quantity"),
    ("gs uri missing slash", _with("model.checkpoint", "gs:/bucket/ckpt"), "model.checkpoint",
     "gs://bucket/path"),
    ("s3 uri", _with("data.train", ["s3://bucket/train.tfrecord"]), "data.train[0]",
     "gs://bucket/path"),
    ("bad bucket", _with("runDir", "gs://Bad_Bucket!/runs"), "runDir", "bucket"),
    ("empty gs bucket", _with("model.labelMap", "gs:///label_map.pbtxt"), "model.labelMap",
     "bucket"),
    ("local path on gke", {**_with("runDir", "/tmp/runs"), "profile": "gke"}, "runDir",
     "cannot read local paths"),
    ("unknown top-level field", _with("wrokers", 2), "wrokers", "unknown field"),
    ("unknown nested field", _with("training.stpes", 2), "training.stpes", "unknown field"),
    ("missing checkpoint", _without("model.checkpoint"), "model.checkpoint", "is required"),
    ("missing run dir", _without("runDir"), "runDir", "is required"),
    ("empty train list", _with("data.train", []), "data.train", "is required"),
    ("batch not divisible", {**_with("training.globalBatchSize", 7), "workers": 2},
     "training.globalBatchSize", "not divisible"),
    ("batch not divisible by gpus", {**_with("training.globalBatchSize", 6), "workers": 2,
                                     "profile": "gke", "resources": {"gpus": 4}},
     "training.globalBatchSize", "8 replicas"),
    ("bad fine tune type", _with("model.fineTuneType", "everything"), "model.fineTuneType",
     "invalid enum"),
    ("bad profile", _with("profile", "eks"), "profile", "not one of"),
    ("yaml injection in name", _with("name", "det\nkind: Secret"), "name",
     "control characters"),
    ("yaml injection in image", _with("image", "busybox\n---\nkind: Secret"), "image",
     "control characters"),
    ("yaml injection in checkpoint", _with("model.checkpoint", "gs://b-1/x\"\nevil: 1"),
     "model.checkpoint", "control characters"),
    ("injection in node selector", _with("scheduling.nodeSelector", {"pool": "a\nb: c"}),
     "scheduling.nodeSelector", "label value"),
    ("bad image reference", _with("image", "UPPER CASE:tag"), "image", "image reference"),
    ("reserved env var", _with("env", {"TF_CONFIG": "{}"}), "env", "set by the launcher"),
    ("bad env name", _with("env", {"1BAD": "x"}), "env", "environment variable name"),
    ("two auth methods", _with("auth", {"serviceAccount": "a", "keySecret": "b"}), "auth",
     "at most one"),
    ("bad gcp service account", _with("auth.gcpServiceAccount", "someone@gmail.com"),
     "auth.gcpServiceAccount", "iam.gserviceaccount.com"),
    ("bad namespace", _with("namespace", "Prod"), "namespace", "DNS-1123"),
    ("port out of range", _with("port", 80), "port", ">= 1024"),
    ("checkpoint interval beyond steps", _with("training.checkpointEvery", 1000),
     "training.checkpointEvery", "larger than training.steps"),
    ("bad toleration effect", _with("scheduling.tolerations", [{"key": "a", "effect": "Never"}]),
     "scheduling.tolerations[0].effect", "invalid enum"),
    ("spec is a list", [1, 2], "spec", "mapping"),  # type: ignore[list-item]
]


@pytest.mark.parametrize(("raw", "field", "words"), [c[1:] for c in BAD_SPECS],
                         ids=[c[0] for c in BAD_SPECS])
def test_bad_spec_gives_one_clear_line_and_no_output(tmp_path: Path, raw: Any, field: str,
                                                     words: str) -> None:
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(raw))
    out_dir = tmp_path / "out"
    for command in (["render", str(spec_file), "--output-dir", str(out_dir)],
                    ["render", str(spec_file)], ["validate", str(spec_file)]):
        result = runner.invoke(app, command)
        assert result.exit_code != 0, result.stdout
        assert result.stdout == ""
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith(f"error: {field}: "), lines[0]
        assert words in lines[0], lines[0]
    assert not out_dir.exists()


def test_at_least_25_bad_specs() -> None:
    assert len(BAD_SPECS) >= 25


def test_invalid_yaml_file_names_the_line(tmp_path: Path) -> None:
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text("name: det\nworkers: [1,\n")
    result = runner.invoke(app, ["render", str(spec_file)])
    assert result.exit_code != 0
    assert "is not valid YAML at line" in result.stderr


def test_flags_and_set_override_the_file(tmp_path: Path) -> None:
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(BASE_SPEC))
    result = runner.invoke(app, ["render", str(spec_file), "-o", "json", "--workers", "4",
                                 "--set", "training.globalBatchSize=16", "-n", "ml",
                                 "--train", "gs://bucket-a/a-*.tfrecord",
                                 "--train", "gs://bucket-a/b-*.tfrecord"])
    assert result.exit_code == 0, result.stderr
    items = json.loads(result.stdout)["items"]
    job = next(o for o in items if o["kind"] == "Job")
    assert job["spec"]["completions"] == 4
    assert job["metadata"]["namespace"] == "ml"
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert value_in_args(args, "global_batch_size") == "16"
    assert [a for a in args if a.startswith("--train=")] == [
        "--train=gs://bucket-a/a-*.tfrecord", "--train=gs://bucket-a/b-*.tfrecord"]


def test_render_output_dir_writes_one_file_per_object(tmp_path: Path) -> None:
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(BASE_SPEC))
    result = runner.invoke(app, ["render", str(spec_file), "--output-dir", str(tmp_path / "o"),
                                 "--validate"])
    assert result.exit_code == 0, result.stderr
    files = sorted(p.name for p in (tmp_path / "o").iterdir())
    assert files == ["00-service-det.yaml", "01-networkpolicy-det.yaml", "02-job-det.yaml"]


def test_validate_reports_ok(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # No GCS from here: the inputs cannot be read, which is a warning, not a failure.
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "no-key.json"))
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(BASE_SPEC))
    result = runner.invoke(app, ["validate", str(spec_file), "--k8s-version", "1.31"])
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith("ok: det (2 workers")
    assert result.stderr.startswith("warning: inputs not checked: DefaultCredentialsError")


@pytest.mark.parametrize("version", ["1.20", "abc", "1.99"])
def test_unsupported_k8s_version(tmp_path: Path, version: str) -> None:
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(BASE_SPEC))
    result = runner.invoke(app, ["validate", str(spec_file), "--k8s-version", version])
    assert result.exit_code != 0
    assert result.stderr.startswith("error: --k8s-version: ")


@pytest.mark.parametrize("profile", ["gke", "kind", "generic"])
def test_example_spec_is_valid_and_documents_every_field(profile: str) -> None:
    text = example_spec_text()
    raw = yaml.safe_load(text)
    raw["profile"] = profile
    if profile != "gke":
        raw["resources"] = {}
    spec = build_spec(raw)
    assert isinstance(spec, JobSpec)
    for struct in _structs(JobSpec):
        for name in struct.__struct_encode_fields__:
            assert f"{name}:" in text, f"{struct.__name__}.{name} is not documented"


def _structs(root: type) -> list[type]:
    from launcher.spec import model as spec_module

    return [root] + [getattr(spec_module, n) for n in ("Resources", "ModelSpec", "DataSpec",
                                                       "Training", "Scheduling", "Auth")]


def test_spec_init_writes_file_and_refuses_overwrite(tmp_path: Path) -> None:
    target = tmp_path / "job.yaml"
    assert runner.invoke(app, ["spec", "init", str(target)]).exit_code == 0
    assert target.read_text() == example_spec_text()
    again = runner.invoke(app, ["spec", "init", str(target)])
    assert again.exit_code != 0 and "--force" in again.stderr


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.stdout.strip() == f"launcher {__version__}"


def test_cli_never_imports_tensorflow(tmp_path: Path) -> None:
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(BASE_SPEC))
    code = (
        "import sys\n"
        "from launcher.cli import app\n"
        f"try:\n    app(['validate', {str(spec_file)!r}])\nexcept SystemExit:\n    pass\n"
        "assert 'tensorflow' not in sys.modules, 'tensorflow imported'\n"
        "assert 'kubernetes.client' not in sys.modules\n"
        "print('clean')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().endswith("clean")
