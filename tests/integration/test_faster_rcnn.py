"""The Faster R-CNN family (Model Garden's two-stage detector, tiny size) through the same contract
as RetinaNet: real TensorFlow on CPU, two workers on loopback, the GCS emulator."""

from __future__ import annotations

import json
import re
import subprocess
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
    trainer_env,
    write_spec,
)
from trainer import contract
from trainer.run.checkpoints import latest_step
from trainer.run.storage import Storage

pytestmark = pytest.mark.integration
FAMILY = ["--family", "faster_rcnn"]
NEW_CLASSES = 6  # the base model knows 4
PARTS = ("backbone", "decoder", "rpn_head", "detection_head")  # top-level, in a checkpoint


@pytest.fixture(scope="module")
def frcnn_base(gcs: Storage, dataset: dict[str, str]) -> str:
    """A tiny Faster R-CNN trained from scratch on the 4-class records: the 'exported' model."""
    return train_base(f"gs://{BUCKET}/frcnn-base", dataset, *FAMILY)


def _spec(tmp_path: Path, dataset: dict[str, str], checkpoint: str, **training: object) -> Path:
    return write_spec(tmp_path / "spec.yaml", dataset, checkpoint,
                      model={"family": "faster_rcnn", "numClasses": NEW_CLASSES},
                      training={**training})


def _run_dir(spec_file: Path) -> str:
    return f"gs://{BUCKET}/runs-{spec_file.parent.name}/default/ft"


def test_two_workers_fine_tune_to_new_classes_evaluate_and_export(
        tmp_path: Path, gcs: Storage, dataset: dict[str, str], frcnn_base: str) -> None:
    spec = write_spec(tmp_path / "spec.yaml", dataset, frcnn_base,
                      model={"family": "faster_rcnn", "numClasses": NEW_CLASSES},
                      data={"train": [dataset["train"]], "eval": [dataset["eval"]]},
                      training={"export": True})
    code, out, err = finish(start_launcher("run-local", str(spec)), [])
    assert code == 0, out[-4000:] + err
    run_dir = _run_dir(spec)
    assert "fine-tuning (detection)" in out
    losses = {i: re.findall(rf"worker {i} step 8/8 loss (\S+) rpn_score \S+ rpn_box \S+ "
                            r"frcnn_cls \S+ frcnn_box \S+", out) for i in (0, 1)}
    assert losses[0] and losses[0] == losses[1]
    assert latest_step(gcs, run_dir) == 8
    config = json.loads(gcs.read_text(f"{run_dir}/{contract.RUN_TRAINER_CONFIG}"))
    assert config["family"] == "faster_rcnn" and config["sources"]["family"] == "flag"
    metrics = json.loads(gcs.read_text(f"{run_dir}/{contract.RUN_EVAL_METRICS}"))
    assert metrics["step"] == 8 and 0.0 <= metrics["eval"]["AP"] <= 1.0
    assert set(metrics["train"]) >= {"rpn_score_loss", "rpn_box_loss", "frcnn_cls_loss"}
    check_saved_model(gcs, f"{run_dir}/{contract.RUN_EXPORT}", tmp_path / "export")


def test_detection_fine_tune_restores_all_but_the_class_dependent_layers(
        gcs: Storage, frcnn_base: str, tmp_path: Path) -> None:
    """The new model (another class count) takes the base's backbone, FPN, RPN and the box
    head's shared layers; its classifier and box regressor keep their fresh values."""
    import tensorflow as tf

    from trainer.config import TrainConfig
    from trainer.detection.families.faster_rcnn import task as faster_rcnn
    from trainer.run.staging import restore

    prefix = download_checkpoint(gcs, frcnn_base, tmp_path)
    cfg = TrainConfig(run_dir="unused", train=["unused"], family="faster_rcnn",
                      model_size="tiny", image_size=IMAGE)
    task = faster_rcnn.build_task(cfg, NEW_CLASSES + 1, "unused")
    model = task.build_model()
    fresh = {v.name: v.numpy() for v in model.detection_head[0].weights}
    restore(tf.train.Checkpoint(**task.fine_tune_items(model, "detection")), prefix, "base")
    reader = tf.train.load_checkpoint(prefix)

    def stored(name: str) -> np.ndarray:
        return reader.get_tensor(f"{name}/.ATTRIBUTES/VARIABLE_VALUE")

    head = model.detection_head[0]
    assert np.array_equal(head._fcs[0].kernel.numpy(), stored("detection_head/0/_fcs/0/kernel"))
    assert np.array_equal(head._fc_norms[0].moving_mean.numpy(),
                          stored("detection_head/0/_fc_norms/0/moving_mean"))
    assert np.array_equal(model.rpn_head._convs[0].kernel.numpy(),
                          stored("rpn_head/_convs/0/kernel"))
    # A new class count: the classifier cannot come from the base, and keeps its fresh values.
    assert stored("detection_head/0/_classifier/kernel").shape != head._classifier.kernel.shape
    assert np.array_equal(head._classifier.kernel.numpy(), fresh[head._classifier.kernel.name])


def test_a_retinanet_checkpoint_gives_a_faster_rcnn_its_backbone_only(
        gcs: Storage, dataset: dict[str, str], base_checkpoint: str) -> None:
    cmd = [sys.executable, "-m", "trainer", "--run-dir", f"gs://{BUCKET}/frcnn-cross",
           *FAMILY, "--train", dataset["train"], "--label-map", dataset["label_map"],
           "--model-size", "tiny", "--image-size", str(IMAGE), "--steps", "1",
           "--global-batch-size", "8", "--checkpoint", base_checkpoint, "--no-export"]
    result = subprocess.run(cmd, env=trainer_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 1
    assert ("a retinanet checkpoint, and fine-tune type detection restores parts only a "
            "faster_rcnn has") in result.stdout
    result = subprocess.run([*cmd, "--fine-tune-type", "classification"], env=trainer_env(),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "a retinanet checkpoint: restoring its backbone into a faster_rcnn" in result.stdout


def _equivalence_args(run_dir: str, dataset: dict[str, str], base: str) -> list[str]:
    return [sys.executable, "-m", "trainer", "--run-dir", run_dir, *FAMILY, "--train",
            dataset["train"], "--label-map", dataset["label_map"], "--checkpoint", base,
            "--fine-tune-type", "full", "--model-size", "tiny", "--image-size", str(IMAGE),
            "--steps", "3", "--global-batch-size", "8", "--checkpoint-every", "3",
            "--learning-rate", "0.05", "--deterministic-input", "--freeze-batchnorm",
            "--no-export"]


def test_two_workers_match_one_worker_with_the_same_global_batch(
        gcs: Storage, dataset: dict[str, str], frcnn_base: str, tmp_path: Path) -> None:
    single, double = f"gs://{BUCKET}/frcnn-equiv-1", f"gs://{BUCKET}/frcnn-equiv-2"
    train_one_and_two_workers(lambda run: _equivalence_args(run, dataset, frcnn_base), single,
                              double)
    one = model_weights(gcs, single, tmp_path / "one", PARTS)
    two = model_weights(gcs, double, tmp_path / "two", PARTS)
    base = model_weights(gcs, frcnn_base, tmp_path / "base", PARTS)
    assert one.keys() == two.keys() and len(one) > 50
    parts = {name.split("/", 1)[0] for name in one}
    assert parts == {"backbone", "decoder", "rpn_head", "detection_head"}
    moved = {k: float(np.abs(one[k] - base[k]).max()) for k in one}
    assert all(moved[k] > 1e-4 for k in one if "_classifier" in k), moved
    mismatched = {k: float(np.abs(two[k] - one[k]).max()) for k in one
                  if not np.allclose(two[k], one[k], rtol=1e-4, atol=2e-6)}
    assert not mismatched, sorted(mismatched.items(), key=lambda kv: -kv[1])[:40]


def test_sigterm_saves_exits_42_and_resumes_at_that_step(
        tmp_path: Path, gcs: Storage, dataset: dict[str, str], frcnn_base: str) -> None:
    spec = _spec(tmp_path, dataset, frcnn_base, steps=16, checkpointEvery=16, logEvery=1)
    preempt_and_resume(spec, 16)
    assert latest_step(gcs, _run_dir(spec)) == 16


@pytest.mark.parametrize(("backbone", "size", "expected"), [
    ("resnet50", "tiny", ("resnet", 18)), ("resnet50", "standard", ("resnet", 50)),
    ("mobilenetv2", "standard", ("mobilenet", "MobileNetV2"))])
def test_each_backbone_builds_a_faster_rcnn(backbone: str, size: str,
                                            expected: tuple[str, object]) -> None:
    """The backbones the spec offers, in the family's network (a forward pass in inference)."""
    import tensorflow as tf

    from trainer.config import TrainConfig
    from trainer.detection.families.faster_rcnn import task as faster_rcnn

    cfg = TrainConfig(run_dir="unused", train=["unused"], family="faster_rcnn",
                      backbone=backbone, model_size=size, image_size=IMAGE)
    task = faster_rcnn.build_task(cfg, NEW_CLASSES + 1, "unused")
    kind = task.task_config.model.backbone.type
    model_id = getattr(task.task_config.model.backbone, kind).model_id
    assert (kind, model_id) == expected
    model = task.build_model()
    outputs = model(tf.zeros([1, IMAGE, IMAGE, 3]),
                    image_shape=tf.constant([[IMAGE, IMAGE]], tf.float32),
                    anchor_boxes=_anchor_boxes(task), training=False)
    assert outputs["detection_boxes"].shape[0] == 1
    assert model.detection_head[0]._classifier.units == NEW_CLASSES + 1


def _anchor_boxes(task: object) -> dict[str, object]:
    import tensorflow as tf
    from official.vision.ops import anchor

    model = task.task_config.model  # type: ignore[attr-defined]
    boxes = anchor.build_anchor_generator(
        min_level=model.min_level, max_level=model.max_level,
        num_scales=model.anchor.num_scales, aspect_ratios=model.anchor.aspect_ratios,
        anchor_size=model.anchor.anchor_size)(image_size=(IMAGE, IMAGE))
    return {level: tf.expand_dims(value, 0) for level, value in boxes.items()}
