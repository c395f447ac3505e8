"""A pipeline.config reaches the model Model Garden builds: the FPN-lite config (MobileNetV2,
128-channel depthwise FPN and head, 2 scales per octave, focal gamma 2, ReLU6 and batch-norm
decay 0.997 everywhere, L2 4e-4, the 10/10/5/5 box coder) builds that network and those targets,
not Model Garden's defaults; the ResNet config keeps the backbone's own definition unless it
asks to override it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tests.unit.test_pipeline_rules import fpnlite, retinanet
from trainer.config import from_args

pytestmark = pytest.mark.integration
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")


def _task(text: str, tmp_path: Path, size: int):
    from trainer.detection.families.retinanet.task import build_task

    config = tmp_path / "pipeline.config"
    config.write_text(text)
    cfg = from_args(["--run-dir", "/r", "--family", "retinanet", "--pipeline-config",
                     str(config), "--checkpoint", "/c",
                     "--label-map", "/lm", "--train", "/t", "--eval", "/e"], {},
                    lambda uri: Path(uri).read_text())
    assert cfg.image_size == size
    return build_task(cfg, 91, "/t")


def _norms(layer):
    import tf_keras

    return {(sub.momentum, sub.epsilon) for sub in layer.submodules
            if isinstance(sub, tf_keras.layers.BatchNormalization)}


def test_fpnlite_config_builds_that_network(tmp_path: Path) -> None:
    import tensorflow as tf
    import tf_keras

    task = _task(fpnlite(share_tower=False), tmp_path, 384)
    model_config = task.task_config.model
    assert model_config.backbone.mobilenet.model_id == "MobileNetV2"
    assert (model_config.decoder.fpn.num_filters, model_config.decoder.fpn.use_separable_conv,
            model_config.head.num_filters, model_config.head.use_separable_conv,
            model_config.anchor.num_scales) == (128, True, 128, True, 2)
    assert (task.task_config.losses.focal_loss_gamma, task.task_config.losses.huber_loss_delta,
            task.task_config.losses.box_loss_weight) == (2.0, 1.0, 1.0)
    model = task.build_model()
    outputs = model(tf.zeros([1, 384, 384, 3]), training=False)
    separable = [layer for layer in model.submodules
                 if isinstance(layer, tf_keras.layers.SeparableConv2D)]
    assert separable, "the FPN and head should use depthwise-separable convolutions"
    # 2 scales x 3 aspect ratios per location, 91 classes, at the first level (stride 8).
    assert outputs["cls_outputs"]["3"].shape == (1, 48, 48, 6 * 91)
    # The config's batch norm in every part (override_base_feature_extractor_hyperparams),
    # ReLU6 in the FPN and head, and its L2 weight as Model Garden's regularisation losses.
    for part in (model.backbone, model.decoder, model.head):
        assert _norms(part) == {(0.997, 0.001)}, part.name
    assert model.head.get_config()["activation"] == "relu6"
    assert model.decoder.get_config()["activation"] == "relu6"
    assert model.losses, "the config's L2 weight should add regularisation losses"
    # Kernels drawn from the config's initializers (FPN: truncated normal 0.03; head: normal
    # 0.01), the same on every worker: seeded, so a second build draws the same values.
    import numpy as np

    def kernels(part):
        return [w.numpy() for w in part.weights if "kernel" in w.name.rsplit("/", 1)[-1]]

    fpn = np.concatenate([k.ravel() for k in kernels(model.decoder)])
    assert 0.02 < fpn.std() < 0.03 and np.abs(fpn).max() <= 0.06 + 1e-6  # truncated at 2 sd
    head = np.concatenate([k.ravel() for k in kernels(model.head)])
    assert 0.008 < head.std() < 0.012
    again = task.build_model()
    assert all(np.array_equal(a, b) for a, b in zip(kernels(model.decoder),
                                                    kernels(again.decoder), strict=True))


def test_resnet_backbone_keeps_its_own_definition_without_override(tmp_path: Path) -> None:
    text = retinanet(size="256").replace("override_base_feature_extractor_hyperparams: true", "")
    task = _task(text, tmp_path, 256)
    model = task.build_model()
    assert _norms(model.backbone) == {(0.99, 0.001)}  # Model Garden's ResNet-50
    assert model.backbone.get_config()["activation"] == "relu"
    assert _norms(model.decoder) == _norms(model.head) == {(0.997, 0.001)}


def _box_targets(path: Path, box_coder_weights: list[float] | None) -> Any:
    """Box targets of the first level for the one record in ``path``, through the trainer's
    own input pipeline (``trainer.detection.data``)."""
    import tensorflow as tf

    from trainer.config import TrainConfig
    from trainer.detection.data import build_dataset
    from trainer.detection.families.retinanet.task import build_task

    mg = {} if box_coder_weights is None else {
        "model.detection_generator.box_coder_weights": box_coder_weights}
    cfg = TrainConfig(run_dir=str(path.parent), train=[str(path)], model_size="tiny",
                      image_size=64, model_garden=mg)
    task = build_task(cfg, 5, str(path))
    params = task.task_config.validation_data
    params.input_path, params.global_batch_size, params.is_training = str(path), 1, False
    params.dtype = "float32"
    _, labels = next(iter(build_dataset(task, params, None)))
    return tf.reshape(labels["box_targets"]["3"], [-1, 4])


def test_box_coder_weights_reach_the_targets(tmp_path: Path) -> None:
    """The trainer's pipeline encodes box targets with the config's 10/10/5/5 scales, as the
    OD API does: centre targets 10x and size targets 5x Model Garden's unscaled ones."""
    import numpy as np
    import tensorflow as tf

    from trainer.detection import synthetic

    path = tmp_path / "one.tfrecord"
    pixels, boxes = synthetic.make_image(np.random.default_rng(0), 64, [1])
    with tf.io.TFRecordWriter(str(path)) as writer:
        writer.write(synthetic.tf_example(pixels, boxes, "1"))
    weights = [10.0, 10.0, 5.0, 5.0]
    plain, scaled = _box_targets(path, None), _box_targets(path, weights)
    matched = tf.reduce_any(tf.not_equal(plain, 0.0), axis=1)
    plain, scaled = tf.boolean_mask(plain, matched), tf.boolean_mask(scaled, matched)
    assert plain.shape[0] > 0
    assert tf.reduce_max(tf.abs(scaled - plain * tf.constant(weights))).numpy() < 1e-3


def test_a_zoo_config_trains_evaluates_and_exports(gcs, dataset: dict[str, str],
                                                   tmp_path: Path) -> None:
    """The FPN-lite zoo config (its shared tower off, paths filled in, as a user would) drives
    a real run: ReLU6, batch-norm decay 0.997, L2, the 10/10/5/5 box coder, smooth-L1 weights
    and the NMS settings all in play; the loss is finite, eval and export work."""
    import json
    import math
    import re
    import subprocess
    import sys

    from tests.integration.conftest import BUCKET, trainer_env
    from trainer import contract

    text = fpnlite(share_tower=False)
    for placeholder, value in (("PATH_TO_BE_CONFIGURED/resnet50.ckpt-1", ""),
                               ("PATH_TO_BE_CONFIGURED/label_map.txt", dataset["label_map"]),
                               ("PATH_TO_BE_CONFIGURED/train2017-?????-of-00256.tfrecord",
                                dataset["train"]),
                               ("PATH_TO_BE_CONFIGURED/val2017-?????-of-00032.tfrecord",
                                dataset["eval"])):
        text = text.replace(placeholder, value)
    text = text.replace('fine_tune_checkpoint: ""\n', "")
    text = text.replace("num_classes: 90", "num_classes: 4")  # the data's label map
    # A 2-step run: the schedule as the user would shorten it (else refused, see the unit tests).
    text = text.replace("total_steps: 25000", "total_steps: 2").replace(
        "warmup_steps: 2000", "warmup_steps: 1").replace("num_steps: 25000", "num_steps: 2")
    config = tmp_path / "pipeline.config"
    config.write_text(text)
    run_dir = f"gs://{BUCKET}/zoo-config-run"
    result = subprocess.run(
        [sys.executable, "-m", "trainer", "--run-dir", run_dir, "--family", "retinanet",
         "--pipeline-config", str(config), "--model-size", "tiny", "--image-size", "128",
         "--global-batch-size", "2", "--checkpoint-every", "2", "--log-every", "1"],
        env=trainer_env(), capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    losses = [float(x) for x in re.findall(r"step \d+/2 loss (\S+)", result.stdout)]
    assert losses and all(math.isfinite(x) for x in losses)
    assert "pipeline.config model.ssd.post_processing.batch_non_max_suppression" in result.stdout
    recorded = json.loads(gcs.read_text(f"{run_dir}/{contract.RUN_TRAINER_CONFIG}"))
    assert recorded["layer_hyperparams"]["head"]["activation"] == "relu6"
    assert recorded["model_garden"]["model.detection_generator.nms_iou_threshold"] == 0.6
    metrics = json.loads(gcs.read_text(f"{run_dir}/{contract.RUN_EVAL_METRICS}"))
    assert 0.0 <= metrics["eval"]["AP"] <= 1.0
    assert any(u.endswith("/saved_model.pb")
               for u in gcs.list_prefix(f"{run_dir}/{contract.RUN_EXPORT}"))
