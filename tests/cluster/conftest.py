"""Fixtures for tests on a real control plane: one per test session, a fresh namespace per test."""

from __future__ import annotations

import copy
import itertools
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner, Result

from launcher.cli import app
from launcher.cluster.client import Kube, connect
from tests.cluster.controlplane import ADMIN_TOKEN, ControlPlane, control_plane, missing_assets
from tests.conftest import BASE_SPEC

_names = itertools.count()
# The spec's model: a checkpoint of it must exist, since submit checks what it restores.
MODEL = {"numClasses": 3, "size": "tiny"}
_WRITE_CHECKPOINT = """
import sys
from pathlib import Path
import tensorflow as tf
from trainer.config import from_args
from trainer.restore_plan import build_model
cfg = from_args(sys.argv[2:], {}, lambda uri: Path(uri).read_text())
_, model = build_model(cfg, cfg.num_classes)
tf.train.Checkpoint(**model.checkpoint_items).write(sys.argv[1])
"""


@pytest.fixture(scope="session")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    reason = missing_assets()
    if reason:
        pytest.skip(reason)
    yield from control_plane(tmp_path_factory.mktemp("control-plane"))


@pytest.fixture(autouse=True)
def no_metadata_server(monkeypatch: pytest.MonkeyPatch) -> None:
    """google-auth probes the GCE metadata server when a gs:// run directory has no other
    credentials: point it at a closed local port so the probe fails at once."""
    monkeypatch.setenv("GCE_METADATA_HOST", "127.0.0.1:9")
    monkeypatch.setenv("GCE_METADATA_IP", "127.0.0.1:9")


@pytest.fixture
def ns(plane: ControlPlane) -> Iterator[str]:
    """A namespace of this test's own, deleted afterwards (its pods free the fake nodes)."""
    name = f"t{next(_names)}"
    plane.create_namespace(name)
    yield name
    plane.request("DELETE", f"/api/v1/namespaces/{name}")


@pytest.fixture
def kubeconfig(plane: ControlPlane, ns: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The admin's kubeconfig, its context's namespace this test's, as ``KUBECONFIG``."""
    path = plane.kubeconfig(ADMIN_TOKEN, namespace=ns, name=ns)
    monkeypatch.setenv("KUBECONFIG", str(path))
    return path


@pytest.fixture
def kube(kubeconfig: Path) -> Kube:
    return connect()


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    return tmp_path / "runs"


@pytest.fixture(scope="session")
def model_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> str:
    """An (untrained) checkpoint of the spec's model, written by the trainer's own model code."""
    from launcher.render import trainer_args
    from launcher.spec import build_spec

    prefix = str(tmp_path_factory.mktemp("model") / "ckpt-0")
    raw = copy.deepcopy(BASE_SPEC)
    raw["model"] = {"checkpoint": prefix, **MODEL}
    args = trainer_args(build_spec(raw))
    subprocess.run([sys.executable, "-c", _WRITE_CHECKPOINT, prefix, *args], check=True,
                   env={**os.environ, "TF_USE_LEGACY_KERAS": "1"}, timeout=600)
    return prefix


@pytest.fixture
def spec_file(tmp_path: Path, ns: str, runs: Path, model_checkpoint: str) -> Path:
    """A valid 2-worker spec in this test's namespace, with local inputs that exist."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "train-0.tfrecord").write_bytes(b"x")
    raw = copy.deepcopy(BASE_SPEC)
    raw.update(namespace=ns, runDir=str(runs), image="trainer:test")
    raw["model"] = {"checkpoint": model_checkpoint, **MODEL}
    raw["data"] = {"train": [str(data / "train-*.tfrecord")]}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def cli(*args: str, env: dict[str, str] | None = None, stdin: str | None = None) -> Result:
    """Run the CLI in-process, stdout and stderr kept apart."""
    return CliRunner(env=env).invoke(app, list(args), input=stdin)


def job_of(plane: ControlPlane, ns: str, name: str = "det") -> dict[str, Any]:
    return plane.must("GET", f"/apis/batch/v1/namespaces/{ns}/jobs/{name}")


def conditions(job: dict[str, Any]) -> dict[str, str]:
    return {c["type"]: c.get("reason", "") for c in job.get("status", {}).get("conditions", [])
            if c["status"] == "True"}


def wait_condition(plane: ControlPlane, ns: str, kind: str, name: str = "det",
                   timeout: float = 60) -> dict[str, Any]:
    """The Job once its ``kind`` condition (Complete, Failed, ...) is true."""
    from tests.cluster.controlplane import wait_for

    def met() -> dict[str, Any] | None:
        job = job_of(plane, ns, name)
        return job if kind in conditions(job) else None

    return wait_for(met, f"{ns}/{name} {kind}", timeout)
