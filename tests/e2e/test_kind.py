"""End to end on a real kind cluster: build and side-load the CPU image, submit a 2-worker
fine-tune from the kind profile, follow it with status and logs, find its checkpoints in the
in-cluster GCS emulator, and delete it.

Needs `kind` and a Docker engine; skipped with that reason elsewhere (these CI machines have the
docker client but no engine). Takes ~10 minutes: cluster, image build, training.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from launcher import api, images, kind
from launcher.spec import build_spec


def _kind_available() -> bool:
    if shutil.which("kind") is None or shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "info"], capture_output=True).returncode == 0


pytestmark = [pytest.mark.e2e, pytest.mark.skipif(
    not _kind_available(), reason="needs kind and a running Docker engine (docker info)")]
CLUSTER = "launcher-e2e"
BUCKET = "e2e"


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    kind.up(CLUSTER)
    try:
        yield CLUSTER
    finally:
        kind.down(CLUSTER)


@pytest.fixture(scope="module")
def host_env() -> Iterator[dict[str, str]]:
    """This machine talks to the in-cluster emulator through the mapped NodePort."""
    previous = os.environ.get("STORAGE_EMULATOR_HOST")
    os.environ["STORAGE_EMULATOR_HOST"] = kind.HOST_EMULATOR
    try:
        yield {**os.environ, "GCE_METADATA_IP": "127.0.0.1:1", "TF_NUM_INTRAOP_THREADS": "2"}
    finally:
        if previous is None:
            os.environ.pop("STORAGE_EMULATOR_HOST", None)
        else:
            os.environ["STORAGE_EMULATOR_HOST"] = previous


def test_two_worker_job_on_kind(cluster: str, host_env: dict[str, str], tmp_path: Path) -> None:
    from trainer.run.checkpoints import latest_step
    from trainer.run.storage import Storage

    image = images.build("cpu")
    kind.load(image, cluster)
    kind.create_bucket(BUCKET)
    storage = Storage()
    subprocess.run([sys.executable, "-m", "trainer.detection.synthetic", str(tmp_path / "data")],
                   env=host_env, check=True)
    files = sorted((tmp_path / "data").rglob("*.*"))
    storage.upload_many([(f, f"gs://{BUCKET}/data/{f.relative_to(tmp_path / 'data')}")
                         for f in files])
    subprocess.run([sys.executable, "-m", "trainer", "--run-dir", f"gs://{BUCKET}/base",
                    "--train", f"gs://{BUCKET}/data/pretrain/train-*.tfrecord", "--label-map",
                    f"gs://{BUCKET}/data/pretrain/label_map.pbtxt", "--model-size", "tiny",
                    "--image-size", "64", "--steps", "6", "--checkpoint-every", "6",
                    "--global-batch-size", "8", "--no-export"], env=host_env, check=True)
    spec = build_spec({
        "name": "e2e-ft", "profile": "kind", "workers": 2, "runDir": f"gs://{BUCKET}/runs",
        "resources": {"cpu": "500m", "memory": "2Gi"},
        "model": {"checkpoint": f"gs://{BUCKET}/base", "size": "tiny", "imageSize": 64,
                  "labelMap": f"gs://{BUCKET}/data/finetune/label_map.pbtxt"},
        "data": {"train": [f"gs://{BUCKET}/data/finetune/train-*.tfrecord"]},
        "training": {"steps": 8, "globalBatchSize": 8, "checkpointEvery": 4, "export": False},
    })
    context = kind.context(cluster)
    _, applied, checks = api.submit(spec, context)
    assert [o["kind"] for o in applied] == ["Job", "Service", "NetworkPolicy"]
    assert not [c for c in checks if c.level == "error"], checks
    deadline = time.monotonic() + 900
    while (st := api.status("e2e-ft", "default", context)).phase not in ("Succeeded", "Failed"):
        assert time.monotonic() < deadline, "the job did not finish in 15 minutes"
        time.sleep(5)
    assert st.phase == "Succeeded", st.explanation
    assert st.step == 8 and latest_step(storage, f"gs://{BUCKET}/runs/default/e2e-ft") == 8
    lines = api.logs("e2e-ft", "default", context)
    assert any(line.startswith("[1] ") and "step 8/8" in line for line in lines)
    assert api.delete("e2e-ft", "default", context) == [
        "Service/e2e-ft", "NetworkPolicy/e2e-ft", "Job/e2e-ft"]
