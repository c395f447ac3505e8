"""pipeline.config files as the TensorFlow team publishes them (tensorflow/models
research/object_detection/configs/tf2 and samples/configs): every family either gives the values
the trainer uses, each with where it came from, or one refusal line naming the field and what is
supported. The fixtures below copy the zoo's constructs (comments, quoting, trailing commas,
repeated fields, PATH_TO_BE_CONFIGURED), condensed to the fields that differ between families."""

from __future__ import annotations

import pytest

from trainer.config import ConfigError, from_args, parse_label_map, resolve_num_classes
from trainer.pipeline_config import PipelineConfigError, parse

SSD_HEAD = """
    box_coder { faster_rcnn_box_coder { y_scale: 10.0 x_scale: 10.0 height_scale: 5.0
                                        width_scale: 5.0 } }
    matcher { argmax_matcher { matched_threshold: 0.5 unmatched_threshold: 0.5 } }
    anchor_generator { multiscale_anchor_generator { min_level: 3 max_level: 7
      anchor_scale: 4.0 aspect_ratios: [1.0, 2.0, 0.5] scales_per_octave: 2 } }
    loss {
      classification_loss { weighted_sigmoid_focal { alpha: 0.25 gamma: 2.0 } }
      localization_loss { weighted_smooth_l1 { } }
    }
    post_processing { batch_non_max_suppression { score_threshold: 1e-8 iou_threshold: 0.6 }
                      score_converter: SIGMOID }
"""


def retinanet(extractor: str = "ssd_resnet50_v1_fpn_keras", size: str = "640",
              resizer: str | None = None, lr: str | None = None, optimizer: str = "momentum",
              augment: str = "random_horizontal_flip { }", steps: int = 25000) -> str:
    """ssd_resnet50_v1_fpn_640x640_coco17_tpu-8.config, with parts swappable."""
    resizer = resizer or f"fixed_shape_resizer {{ height: {size} width: {size} }}"
    lr = lr or f"""cosine_decay_learning_rate {{
          learning_rate_base: .04
          total_steps: {steps}
          warmup_learning_rate: .013333
          warmup_steps: 2000
        }}"""
    return f"""# SSD with Resnet 50 v1 FPN feature extractor, shared box predictor and focal
# loss (a.k.a Retinanet).
model {{
  ssd {{
    inplace_batchnorm_update: true
    freeze_batchnorm: false
    num_classes: 90
    {SSD_HEAD}
    image_resizer {{ {resizer} }}
    box_predictor {{
      weight_shared_convolutional_box_predictor {{
        depth: 256
        class_prediction_bias_init: -4.6
        conv_hyperparams {{ activation: RELU_6, batch_norm {{ scale: true, decay: 0.997, }} }}
        num_layers_before_predictor: 4
        kernel_size: 3
      }}
    }}
    feature_extractor {{
      type: '{extractor}'
      fpn {{ min_level: 3 max_level: 7 }}
      min_depth: 16
      depth_multiplier: 1.0
    }}
  }}
}}

train_config: {{
  fine_tune_checkpoint_version: V2
  fine_tune_checkpoint: "PATH_TO_BE_CONFIGURED/resnet50.ckpt-1"
  fine_tune_checkpoint_type: "classification"
  batch_size: 64
  sync_replicas: true
  use_bfloat16: true
  num_steps: {steps}
  data_augmentation_options {{ {augment} }}
  optimizer {{
    {optimizer}_optimizer: {{
      learning_rate: {{
        {lr}
      }}
      momentum_optimizer_value: 0.9
    }}
    use_moving_average: false
  }}
  max_number_of_boxes: 100
  unpad_groundtruth_tensors: false
}}

train_input_reader: {{
  label_map_path: "PATH_TO_BE_CONFIGURED/label_map.txt"
  tf_record_input_reader {{
    input_path: "PATH_TO_BE_CONFIGURED/train2017-?????-of-00256.tfrecord"
  }}
}}

eval_input_reader: {{
  label_map_path: "PATH_TO_BE_CONFIGURED/label_map.txt"
  shuffle: false
  num_epochs: 1
  tf_record_input_reader {{
    input_path: "PATH_TO_BE_CONFIGURED/val2017-?????-of-00032.tfrecord"
  }}
}}
"""


FASTER_RCNN_PETS = """
model {
  faster_rcnn {
    num_classes: 37
    image_resizer { keep_aspect_ratio_resizer { min_dimension: 600 max_dimension: 1024 } }
    feature_extractor { type: 'faster_rcnn_resnet50' first_stage_features_stride: 16 }
    first_stage_anchor_generator { grid_anchor_generator { scales: [0.25, 0.5, 1.0, 2.0] } }
    second_stage_post_processing { score_converter: SOFTMAX }
  }
}
train_config: {
  batch_size: 1
  optimizer { momentum_optimizer: { learning_rate: { manual_step_learning_rate {
    initial_learning_rate: 0.0003
    schedule { step: 900000 learning_rate: .00003 }
    schedule { step: 1200000 learning_rate: .000003 } } }
    momentum_optimizer_value: 0.9 }
    use_moving_average: false }
  gradient_clipping_by_norm: 10.0
  fine_tune_checkpoint: "PATH_TO_BE_CONFIGURED/model.ckpt"
  from_detection_checkpoint: true
  num_steps: 200000
  data_augmentation_options { random_horizontal_flip { } }
}
"""

CENTERNET = """
model {
  center_net {
    num_classes: 90
    feature_extractor { type: "hourglass_104" bgr_ordering: true channel_means: [104.0] }
    image_resizer { keep_aspect_ratio_resizer { min_dimension: 512 max_dimension: 512
                                                pad_to_max_dimension: true } }
    object_detection_task { task_loss_weight: 1.0 offset_loss_weight: 1.0 }
  }
}
train_config: { batch_size: 128 num_steps: 140000
  optimizer { adam_optimizer: { epsilon: 1e-7 learning_rate: { cosine_decay_learning_rate {
    learning_rate_base: 1e-3 total_steps: 140000 warmup_learning_rate: 2.5e-4
    warmup_steps: 5000 } } } use_moving_average: false } }
"""

EFFICIENTDET = retinanet("ssd_efficientnet-b0_bifpn_keras", size="512")
PLAIN_SSD = retinanet("ssd_mobilenet_v2_keras", size="300").replace(
    "weight_shared_convolutional_box_predictor", "convolutional_box_predictor")


def _cfg(text: str, tmp_path, *flags: str):
    path = tmp_path / "pipeline.config"
    path.write_text(text)
    return from_args(["--run-dir", "/r", "--pipeline-config", str(path), *flags], {},
                     lambda uri: open(uri).read())


def test_retinanet_zoo_config_values_and_where_they_came_from(tmp_path) -> None:
    cfg = _cfg(retinanet(), tmp_path, "--checkpoint", "/ckpt", "--label-map", "/lm",
               "--train", "/t-*", "--eval", "/e-*")
    assert (cfg.backbone, cfg.image_size, cfg.global_batch_size, cfg.steps) == (
        "resnet50", 640, 64, 25000)
    assert (cfg.lr_schedule, cfg.learning_rate, cfg.total_steps, cfg.warmup_steps,
            cfg.warmup_learning_rate, cfg.momentum) == ("cosine", 0.04, 25000, 2000, 0.013333,
                                                        0.9)
    assert (cfg.fine_tune_type, cfg.horizontal_flip, cfg.clip_norm) == ("classification", True,
                                                                         0.0)
    assert cfg.sources["backbone"] == "pipeline.config:model.ssd.feature_extractor.type"
    assert cfg.sources["learning_rate"] == (
        "pipeline.config:train_config.optimizer.momentum_optimizer.learning_rate."
        "cosine_decay_learning_rate.learning_rate_base")
    assert cfg.sources["checkpoint"] == "flag"
    assert cfg.sources["log_every"] == "default"


def test_mobilenet_fpnlite_maps_to_the_mobilenet_backbone(tmp_path) -> None:
    cfg = _cfg(retinanet("ssd_mobilenet_v2_fpn_keras", size="320"), tmp_path, "--checkpoint",
               "/c", "--label-map", "/lm", "--train", "/t", "--eval", "/e")
    assert (cfg.backbone, cfg.image_size) == ("mobilenetv2", 320)


@pytest.mark.parametrize(("text", "field", "supported"), [
    (FASTER_RCNN_PETS, "model.faster_rcnn", "cannot build faster_rcnn"),
    (CENTERNET, "model.center_net", "cannot build center_net"),
    (EFFICIENTDET, "model.ssd.feature_extractor.type",
     "'ssd_efficientnet-b0_bifpn_keras' is not supported; supported: ssd_resnet50_v1_fpn_keras"),
    (PLAIN_SSD, "model.ssd.feature_extractor.type", "'ssd_mobilenet_v2_keras' is not supported"),
    (retinanet(optimizer="adam"), "train_config.optimizer.adam_optimizer",
     "supported: momentum_optimizer"),
    (retinanet(optimizer="rms_prop"), "train_config.optimizer.rms_prop_optimizer",
     "supported: momentum_optimizer"),
    (retinanet(lr="manual_step_learning_rate { initial_learning_rate: 0.0003 "
                  "schedule { step: 900 learning_rate: .00003 } }"),
     "learning_rate.manual_step_learning_rate", "supported: cosine_decay_learning_rate"),
    (retinanet(lr="exponential_decay_learning_rate { initial_learning_rate: 0.004 "
                  "decay_steps: 800720 decay_factor: 0.95 }"),
     "learning_rate.exponential_decay_learning_rate", "supported: cosine_decay_learning_rate"),
    (retinanet(resizer="keep_aspect_ratio_resizer { min_dimension: 800 max_dimension: 1333 }"),
     "model.ssd.image_resizer.keep_aspect_ratio_resizer", "supported: fixed_shape_resizer"),
    (retinanet(size="300"), "model.ssd.image_resizer.fixed_shape_resizer",
     "300x300: supported: a square size that is a multiple of 32 (e.g. 288x288)"),
    (retinanet(augment="random_crop_image { min_object_covered: 0.0 min_area: 0.75 }"),
     "train_config.data_augmentation_options.random_crop_image",
     "supported: random_horizontal_flip"),
    (retinanet().replace("use_moving_average: false", "use_moving_average: true"),
     "train_config.optimizer.use_moving_average", "not supported"),
])
def test_what_the_trainer_cannot_honour_is_refused_in_one_line(text: str, field: str,
                                                               supported: str) -> None:
    with pytest.raises(PipelineConfigError) as err:
        parse(text, "gs://b/pipeline.config")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("gs://b/pipeline.config: ")
    assert field in message and supported in message, message


def test_placeholders_are_refused_unless_the_spec_sets_the_field(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"train_config.fine_tune_checkpoint is "
                                          r"'PATH_TO_BE_CONFIGURED/resnet50.ckpt-1'.*--checkpoint"):
        _cfg(retinanet(), tmp_path, "--label-map", "/lm", "--train", "/t", "--eval", "/e")
    with pytest.raises(ConfigError, match=r"label_map_path .*--label-map"):
        _cfg(retinanet(), tmp_path, "--checkpoint", "/c", "--train", "/t", "--eval", "/e")
    with pytest.raises(ConfigError, match=r"tf_record_input_reader.input_path .*--train"):
        _cfg(retinanet(), tmp_path, "--checkpoint", "/c", "--label-map", "/lm", "--eval", "/e")


def test_warm_up_and_decay_must_fit_the_run(tmp_path) -> None:
    flags = ["--checkpoint", "/c", "--label-map", "/lm", "--train", "/t", "--eval", "/e"]
    with pytest.raises(ConfigError, match=r"warm-up of 2000 steps \(train_config.*warmup_steps\)"
                                          r" is not shorter than the run's 4 steps \(flag\)"):
        _cfg(retinanet(), tmp_path, *flags, "--steps", "4")
    with pytest.raises(ConfigError, match=r"total_steps 25000 .* differs from the run's 3000"):
        _cfg(retinanet(), tmp_path, *flags, "--steps", "3000")
    cfg = _cfg(retinanet(steps=3000), tmp_path, *flags, "--steps", "3000", "--warmup-steps",
               "100")
    assert (cfg.steps, cfg.total_steps, cfg.warmup_steps) == (3000, 3000, 100)
    constant = retinanet(lr="constant_learning_rate { learning_rate: 0.01 }")
    cfg = _cfg(constant, tmp_path, *flags, "--steps", "10")
    assert (cfg.lr_schedule, cfg.learning_rate, cfg.warmup_steps) == ("constant", 0.01, 0)


MSCOCO_LABEL_MAP = """
item {
  name: "/m/01g317"
  id: 1
  display_name: "person"
}
item {
  name: "/m/0199g"
  id: 2
  display_name: "bicycle"
}
item {
  name: "/m/0k1tl"
  id: 90
  display_name: "toothbrush"
}
"""


def test_label_map_ids_are_not_counts(tmp_path) -> None:
    labels = parse_label_map(MSCOCO_LABEL_MAP, "mscoco_label_map.pbtxt")
    assert sorted(labels) == [1, 2, 90]
    flags = ["--checkpoint", "/c", "--label-map", "/lm", "--train", "/t", "--eval", "/e"]
    cfg = _cfg(retinanet(), tmp_path, *flags)  # num_classes: 90
    assert resolve_num_classes(cfg, labels) == 91
    small = _cfg(retinanet().replace("num_classes: 90", "num_classes: 80"), tmp_path, *flags)
    with pytest.raises(ConfigError, match=r"num_classes 80 \(model.ssd.num_classes\) is smaller "
                                          r"than the label map's largest id 90"):
        resolve_num_classes(small, labels)


FPNLITE_EXTRACTOR = """feature_extractor {
      type: 'ssd_mobilenet_v2_fpn_keras'
      use_depthwise: true
      fpn { min_level: 3 max_level: 7 additional_layer_depth: 128 }"""


def fpnlite() -> str:
    """ssd_mobilenet_v2_fpnlite_320x320_coco17_tpu-8.config: narrower, depthwise FPN and head."""
    text = retinanet("ssd_mobilenet_v2_fpn_keras", size="320")
    text = text.replace("""feature_extractor {
      type: 'ssd_mobilenet_v2_fpn_keras'
      fpn { min_level: 3 max_level: 7 }""", FPNLITE_EXTRACTOR)
    return text.replace("depth: 256", "depth: 128\n        share_prediction_tower: true\n"
                        "        use_depthwise: true")


def test_retinanet_structure_is_honoured(tmp_path) -> None:
    flags = ["--checkpoint", "/c", "--label-map", "/lm", "--train", "/t", "--eval", "/e"]
    cfg = _cfg(retinanet(), tmp_path, *flags)
    assert (cfg.min_level, cfg.max_level, cfg.anchor_size, cfg.aspect_ratios,
            cfg.num_scales) == (3, 7, 4.0, [1.0, 2.0, 0.5], 2)
    assert (cfg.head_filters, cfg.head_convs, cfg.head_separable) == (256, 4, None)
    assert (cfg.focal_alpha, cfg.focal_gamma) == (0.25, 2.0)
    lite = _cfg(fpnlite(), tmp_path, *flags)
    assert (lite.fpn_filters, lite.fpn_separable, lite.head_filters, lite.head_separable) == (
        128, True, 128, True)
    assert lite.sources["fpn_filters"] == (
        "pipeline.config:model.ssd.feature_extractor.fpn.additional_layer_depth")


@pytest.mark.parametrize(("change", "field", "supported"), [
    (("multiscale_anchor_generator { min_level: 3", "ssd_anchor_generator { num_layers: 6 } "
      "multiscale_anchor_generator { min_level: 3"), "anchor_generator.ssd_anchor_generator",
     "supported: multiscale_anchor_generator"),
    (("weighted_sigmoid_focal { alpha: 0.25 gamma: 2.0 }", "weighted_softmax { }"),
     "classification_loss.weighted_softmax", "supported: weighted_sigmoid_focal"),
    (("kernel_size: 3", "kernel_size: 5"), "box_predictor.weight_shared_convolutional_box_"
     "predictor.kernel_size", "5: supported: 3"),
    (("fpn { min_level: 3 max_level: 7 }", "fpn { min_level: 3 max_level: 6 }"),
     "multiscale_anchor_generator.min_level/max_level", "(3, 7) differ from the FPN's (3, 6)"),
])
def test_structure_the_trainer_cannot_build_is_refused(change: tuple[str, str], field: str,
                                                       supported: str) -> None:
    text = retinanet()
    assert change[0] in text
    with pytest.raises(PipelineConfigError) as err:
        parse(text.replace(*change))
    assert field in str(err.value) and supported in str(err.value), str(err.value)
