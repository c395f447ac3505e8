"""The YOLO family (Model Garden's YOLOv4, tiny size) through the same contract as the others:
real TensorFlow on CPU, two workers on loopback, the GCS emulator."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from launcher import contract
from tests.integration.conftest import (
    BUCKET,
    IMAGE,
    check_saved_model,
    finish,
    preempt_and_resume,
    start_launcher,
    train_one_and_two_workers,
    trainer_env,
    write_spec,
)
from trainer.checkpoints import latest_step
from trainer.storage import Storage

pytestmark = pytest.mark.integration
FAMILY = ["--family", "yolo"]
NEW_CLASSES = 6  # the base model knows 4


@pytest.fixture(scope="module")
def yolo_base(gcs: Storage, dataset: dict[str, str]) -> str:
    """A tiny YOLO trained from scratch on the 4-class records: the 'exported' model."""
    run_dir = f"gs://{BUCKET}/yolo-base"
    cmd = [sys.executable, "-m", "trainer", "--run-dir", run_dir, *FAMILY, "--train",
           dataset["train"], "--label-map", dataset["label_map"], "--model-size", "tiny",
           "--image-size", str(IMAGE), "--steps", "6", "--global-batch-size", "8",
           "--checkpoint-every", "6", "--no-export"]
    result = subprocess.run(cmd, env=trainer_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return run_dir


def _run_dir(spec_file: Path) -> str:
    return f"gs://{BUCKET}/runs-{spec_file.parent.name}/default/ft"


def test_two_workers_fine_tune_to_new_classes_evaluate_and_export(
        tmp_path: Path, gcs: Storage, dataset: dict[str, str], yolo_base: str) -> None:
    spec = write_spec(tmp_path / "spec.yaml", dataset, yolo_base,
                      model={"family": "yolo", "numClasses": NEW_CLASSES},
                      data={"train": [dataset["train"]], "eval": [dataset["eval"]]},
                      training={"export": True})
    code, out, err = finish(start_launcher("run-local", str(spec)), [])
    assert code == 0, out[-4000:] + err
    run_dir = _run_dir(spec)
    assert "fine-tuning (detection)" in out
    losses = {i: re.findall(rf"worker {i} step 8/8 loss (\S+) box \S+ conf \S+ class \S+", out)
              for i in (0, 1)}
    assert losses[0] and losses[0] == losses[1]
    config = json.loads(gcs.read_text(f"{run_dir}/{contract.RUN_TRAINER_CONFIG}"))
    assert config["family"] == "yolo"
    metrics = json.loads(gcs.read_text(f"{run_dir}/{contract.RUN_EVAL_METRICS}"))
    assert metrics["step"] == 8 and 0.0 <= metrics["eval"]["AP"] <= 1.0
    assert metrics["eval"]["loss/net/box"] > 0
    assert set(metrics["train"]) >= {"box_loss", "conf_loss", "class_loss"}
    check_saved_model(gcs, f"{run_dir}/{contract.RUN_EXPORT}", tmp_path / "export")


def test_checkpoints_tell_their_family(gcs: Storage, yolo_base: str, base_checkpoint: str,
                                       tmp_path: Path) -> None:
    """YOLO and RetinaNet both keep a ``head``; the family is read from inside it."""
    from trainer.checkpoints import family_of

    assert family_of(_download(gcs, yolo_base, tmp_path / "yolo")) == "yolo"
    assert family_of(_download(gcs, base_checkpoint, tmp_path / "retinanet")) == "retinanet"


def _download(gcs: Storage, run_dir: str, local: Path) -> str:
    step = latest_step(gcs, run_dir)
    for uri in gcs.glob(f"{run_dir}/checkpoints/ckpt-{step}.*"):
        gcs.download(uri, local / uri.rsplit("/", 1)[1])
    return str(local / f"ckpt-{step}")


def _equivalence_args(run_dir: str, dataset: dict[str, str], base: str) -> list[str]:
    return [sys.executable, "-m", "trainer", "--run-dir", run_dir, *FAMILY, "--train",
            dataset["train"], "--label-map", dataset["label_map"], "--checkpoint", base,
            "--fine-tune-type", "full", "--model-size", "tiny", "--image-size", str(IMAGE),
            "--steps", "3", "--global-batch-size", "8", "--checkpoint-every", "3",
            "--learning-rate", "0.01", "--deterministic-input", "--freeze-batchnorm",
            "--no-export"]


def test_two_workers_match_one_worker_with_the_same_global_batch(
        gcs: Storage, dataset: dict[str, str], yolo_base: str, tmp_path: Path) -> None:
    single, double = f"gs://{BUCKET}/yolo-equiv-1", f"gs://{BUCKET}/yolo-equiv-2"
    train_one_and_two_workers(lambda run: _equivalence_args(run, dataset, yolo_base), single,
                              double)
    one = _model_weights(gcs, single, tmp_path / "one")
    two = _model_weights(gcs, double, tmp_path / "two")
    base = _model_weights(gcs, yolo_base, tmp_path / "base")
    assert one.keys() == two.keys() and len(one) > 30
    assert {name.split("/", 1)[0] for name in one} == {"backbone", "decoder", "head"}
    moved = max(float(np.abs(one[k] - base[k]).max()) for k in one)
    assert moved > 1e-3, "training did not change the weights"
    mismatched = {k: float(np.abs(two[k] - one[k]).max()) for k in one
                  if not np.allclose(two[k], one[k], rtol=1e-4, atol=2e-6)}
    assert not mismatched, sorted(mismatched.items(), key=lambda kv: -kv[1])[:40]


def _model_weights(gcs: Storage, run_dir: str, local: Path) -> dict[str, np.ndarray]:
    import tensorflow as tf

    reader = tf.train.load_checkpoint(_download(gcs, run_dir, local))
    return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()
            if k.startswith(("backbone/", "decoder/", "head/")) and "OPTIMIZER_SLOT" not in k}


def test_sigterm_saves_exits_42_and_resumes_at_that_step(
        tmp_path: Path, gcs: Storage, dataset: dict[str, str], yolo_base: str) -> None:
    spec = write_spec(tmp_path / "spec.yaml", dataset, yolo_base,
                      model={"family": "yolo", "numClasses": NEW_CLASSES},
                      training={"steps": 16, "checkpointEvery": 16, "logEvery": 1})
    preempt_and_resume(spec, 16)
    assert latest_step(gcs, _run_dir(spec)) == 16
