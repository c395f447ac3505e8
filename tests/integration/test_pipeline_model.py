"""A pipeline.config's RetinaNet structure reaches the model Model Garden builds: the FPN-lite
config (MobileNetV2, 128-channel depthwise FPN and head, 2 scales per octave, focal gamma 2)
builds that network, not Model Garden's defaults."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.unit.test_pipeline_rules import fpnlite
from trainer.config import from_args

pytestmark = pytest.mark.integration
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")


def test_fpnlite_config_builds_a_depthwise_128_channel_retinanet(tmp_path: Path) -> None:
    import tensorflow as tf
    import tf_keras

    from trainer.model import GlobalBatchRetinaNetTask, task_config

    config = tmp_path / "pipeline.config"
    config.write_text(fpnlite())
    cfg = from_args(["--run-dir", "/r", "--pipeline-config", str(config), "--checkpoint", "/c",
                     "--label-map", "/lm", "--train", "/t", "--eval", "/e"], {},
                    lambda uri: Path(uri).read_text())
    task = GlobalBatchRetinaNetTask(task_config(cfg, 91, "/t"))
    model_config = task.task_config.model
    assert model_config.backbone.mobilenet.model_id == "MobileNetV2"
    assert (model_config.decoder.fpn.num_filters, model_config.decoder.fpn.use_separable_conv,
            model_config.head.num_filters, model_config.head.use_separable_conv,
            model_config.anchor.num_scales, model_config.input_size[0]) == (128, True, 128, True,
                                                                            2, 320)
    assert task.task_config.losses.focal_loss_gamma == 2.0
    model = task.build_model()
    outputs = model(tf.zeros([1, 320, 320, 3]), training=False)
    separable = [layer for layer in model.submodules
                 if isinstance(layer, tf_keras.layers.SeparableConv2D)]
    assert separable, "the FPN and head should use depthwise-separable convolutions"
    # 2 scales x 3 aspect ratios per location, 91 classes, at the first level (stride 8).
    assert outputs["cls_outputs"]["3"].shape == (1, 40, 40, 6 * 91)
