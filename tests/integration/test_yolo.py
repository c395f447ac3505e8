"""The YOLO family (Model Garden's YOLOv4, tiny size) through the same contract as the others:
real TensorFlow on CPU, two workers on loopback, the GCS emulator."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.integration.conftest import (
    BUCKET,
    IMAGE,
    check_saved_model,
    download_checkpoint,
    finish,
    model_weights,
    preempt_and_resume,
    start_launcher,
    train_base,
    train_one_and_two_workers,
    write_spec,
)
from trainer import contract
from trainer.run.checkpoints import latest_step
from trainer.run.storage import Storage

pytestmark = pytest.mark.integration
FAMILY = ["--family", "yolo"]
NEW_CLASSES = 6  # the base model knows 4
PARTS = ("backbone", "decoder", "head")  # top-level, in a checkpoint


@pytest.fixture(scope="module")
def yolo_base(gcs: Storage, dataset: dict[str, str]) -> str:
    """A tiny YOLO trained from scratch on the 4-class records: the 'exported' model."""
    return train_base(f"gs://{BUCKET}/yolo-base", dataset, *FAMILY)


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
    from trainer.detection.families import of_checkpoint
    from trainer.run.checkpoints import variable_names

    for run_dir, family in ((yolo_base, "yolo"), (base_checkpoint, "retinanet")):
        assert of_checkpoint(variable_names(
            download_checkpoint(gcs, run_dir, tmp_path / family))) == family


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
    one = model_weights(gcs, single, tmp_path / "one", PARTS)
    two = model_weights(gcs, double, tmp_path / "two", PARTS)
    base = model_weights(gcs, yolo_base, tmp_path / "base", PARTS)
    assert one.keys() == two.keys() and len(one) > 30
    assert {name.split("/", 1)[0] for name in one} == {"backbone", "decoder", "head"}
    moved = max(float(np.abs(one[k] - base[k]).max()) for k in one)
    assert moved > 1e-3, "training did not change the weights"
    mismatched = {k: float(np.abs(two[k] - one[k]).max()) for k in one
                  if not np.allclose(two[k], one[k], rtol=1e-4, atol=2e-6)}
    assert not mismatched, sorted(mismatched.items(), key=lambda kv: -kv[1])[:40]


def test_sigterm_saves_exits_42_and_resumes_at_that_step(
        tmp_path: Path, gcs: Storage, dataset: dict[str, str], yolo_base: str) -> None:
    spec = write_spec(tmp_path / "spec.yaml", dataset, yolo_base,
                      model={"family": "yolo", "numClasses": NEW_CLASSES},
                      training={"steps": 16, "checkpointEvery": 16, "logEvery": 1})
    preempt_and_resume(spec, 16)
    assert latest_step(gcs, _run_dir(spec)) == 16
