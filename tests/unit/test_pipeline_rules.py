"""pipeline.config files as the TensorFlow team publishes them (tensorflow/models
research/object_detection/configs/tf2 and samples/configs): every family either gives the values
the trainer uses, each with where it came from, or one refusal line naming the field and what is
supported. The fixtures below copy the zoo's constructs (comments, quoting, trailing commas,
repeated fields, PATH_TO_BE_CONFIGURED), condensed to the fields that differ between families."""

from __future__ import annotations

import pytest

from trainer.config import ConfigError, from_args, parse_label_map, resolve_num_classes
from trainer.pipeline.config import PipelineConfigError, parse

HYPERPARAMS = """conv_hyperparams {{
          activation: RELU_6,
          regularizer {{
            l2_regularizer {{
              weight: 0.0004
            }}
          }}
          initializer {{
            {init} {{
              stddev: {stddev}
              mean: 0.0
            }}
          }}
          batch_norm {{
            scale: true,
            decay: 0.997,
            epsilon: 0.001,
          }}
        }}"""


def retinanet(extractor: str = "ssd_resnet50_v1_fpn_keras", size: str = "640",
              resizer: str | None = None, lr: str | None = None, optimizer: str = "momentum",
              augment: str = "random_horizontal_flip { }", steps: int = 25000) -> str:
    """ssd_resnet50_v1_fpn_640x640_coco17_tpu-8.config as published (its random_crop_image
    augmentation aside: refused, see below), with parts swappable."""
    resizer = resizer or f"fixed_shape_resizer {{ height: {size} width: {size} }}"
    lr = lr or f"""cosine_decay_learning_rate {{
          learning_rate_base: .04
          total_steps: {steps}
          warmup_learning_rate: .013333
          warmup_steps: 2000
        }}"""
    head = HYPERPARAMS.format(init="random_normal_initializer", stddev="0.01")
    extractor_params = HYPERPARAMS.format(init="truncated_normal_initializer", stddev="0.03")
    return f"""# SSD with Resnet 50 v1 FPN feature extractor, shared box predictor and focal
# loss (a.k.a Retinanet).
model {{
  ssd {{
    inplace_batchnorm_update: true
    freeze_batchnorm: false
    num_classes: 90
    box_coder {{
      faster_rcnn_box_coder {{
        y_scale: 10.0
        x_scale: 10.0
        height_scale: 5.0
        width_scale: 5.0
      }}
    }}
    matcher {{
      argmax_matcher {{
        matched_threshold: 0.5
        unmatched_threshold: 0.5
        ignore_thresholds: false
        negatives_lower_than_unmatched: true
        force_match_for_each_row: true
        use_matmul_gather: true
      }}
    }}
    similarity_calculator {{
      iou_similarity {{
      }}
    }}
    encode_background_as_zeros: true
    anchor_generator {{
      multiscale_anchor_generator {{
        min_level: 3
        max_level: 7
        anchor_scale: 4.0
        aspect_ratios: [1.0, 2.0, 0.5]
        scales_per_octave: 2
      }}
    }}
    image_resizer {{ {resizer} }}
    box_predictor {{
      weight_shared_convolutional_box_predictor {{
        depth: 256
        class_prediction_bias_init: -4.6
        {head}
        num_layers_before_predictor: 4
        kernel_size: 3
      }}
    }}
    feature_extractor {{
      type: '{extractor}'
      fpn {{ min_level: 3 max_level: 7 }}
      min_depth: 16
      depth_multiplier: 1.0
      {extractor_params}
      override_base_feature_extractor_hyperparams: true
    }}
    loss {{
      classification_loss {{
        weighted_sigmoid_focal {{
          alpha: 0.25
          gamma: 2.0
        }}
      }}
      localization_loss {{
        weighted_smooth_l1 {{
        }}
      }}
      classification_weight: 1.0
      localization_weight: 1.0
    }}
    normalize_loss_by_num_matches: true
    normalize_loc_loss_by_codesize: true
    post_processing {{
      batch_non_max_suppression {{
        score_threshold: 1e-8
        iou_threshold: 0.6
        max_detections_per_class: 100
        max_total_detections: 100
      }}
      score_converter: SIGMOID
    }}
  }}
}}

train_config: {{
  fine_tune_checkpoint_version: V2
  fine_tune_checkpoint: "PATH_TO_BE_CONFIGURED/resnet50.ckpt-1"
  fine_tune_checkpoint_type: "classification"
  batch_size: 64
  sync_replicas: true
  startup_delay_steps: 0
  replicas_to_aggregate: 8
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

eval_config: {{
  metrics_set: "coco_detection_metrics"
  use_moving_averages: false
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
    return from_args(["--run-dir", "/r", "--family", "retinanet", "--pipeline-config",
                      str(path), *flags], {}, lambda uri: open(uri).read())


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
    cfg = _cfg(retinanet("ssd_mobilenet_v2_fpn_keras", size="384"), tmp_path, "--checkpoint",
               "/c", "--label-map", "/lm", "--train", "/t", "--eval", "/e")
    assert (cfg.backbone, cfg.image_size) == ("mobilenetv2", 384)


def test_an_image_size_the_feature_levels_do_not_divide_is_refused(tmp_path) -> None:
    """At levels 3-7 Model Garden pads a 320-pixel image to 384, which the model refuses at
    its first step: refused before, naming the size's field, the level and a size that fits."""
    flags = ["--checkpoint", "/c", "--label-map", "/lm", "--train", "/t", "--eval", "/e"]
    with pytest.raises(ConfigError, match=r"^pipeline.config model.ssd.image_resizer\S*: 320 is "
                                          r"not a multiple of 128 \(2\^7, the pipeline.config's "
                                          r"max_level\): try 384$"):
        _cfg(retinanet("ssd_mobilenet_v2_fpn_keras", size="320"), tmp_path, *flags)
    assert _cfg(retinanet("ssd_mobilenet_v2_fpn_keras", size="320"), tmp_path, *flags,
                "--image-size", "384").image_size == 384


@pytest.mark.parametrize(("text", "field", "supported"), [
    (FASTER_RCNN_PETS, "model.faster_rcnn", "set model.family: faster_rcnn"),
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
        parse(text, "gs://b/pipeline.config", native=False)
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
    with pytest.raises(ConfigError, match=r"pipeline.config train_config.*warmup_steps: 2000 "
                                          r"steps of warm-up are not fewer than the run's 4 "
                                          r"steps \(--steps \(training.steps\)\)"):
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


def fpnlite(share_tower: bool = True) -> str:
    """ssd_mobilenet_v2_fpnlite_320x320_coco17_tpu-8.config at 384 pixels (levels 3-7 need a
    multiple of 128): narrower, depthwise FPN and head,
    one tower shared by the class and box predictors (``share_tower``)."""
    text = retinanet("ssd_mobilenet_v2_fpn_keras", size="384")
    text = text.replace("""feature_extractor {
      type: 'ssd_mobilenet_v2_fpn_keras'
      fpn { min_level: 3 max_level: 7 }""", FPNLITE_EXTRACTOR)
    return text.replace("depth: 256", "depth: 128\n"
                        f"        share_prediction_tower: {str(share_tower).lower()}\n"
                        "        use_depthwise: true")


MG = "model_garden."


def test_retinanet_structure_is_honoured(tmp_path) -> None:
    flags = ["--checkpoint", "/c", "--label-map", "/lm", "--train", "/t", "--eval", "/e"]
    mg = _cfg(retinanet(), tmp_path, *flags).model_garden
    assert (mg["model.min_level"], mg["model.max_level"], mg["model.anchor.anchor_size"],
            mg["model.anchor.aspect_ratios"], mg["model.anchor.num_scales"]) == (
        3, 7, 4.0, [1.0, 2.0, 0.5], 2)
    assert (mg["model.head.num_filters"], mg["model.head.num_convs"]) == (256, 4)
    assert "model.head.use_separable_conv" not in mg
    assert (mg["losses.focal_loss_alpha"], mg["losses.focal_loss_gamma"]) == (0.25, 2.0)
    lite = _cfg(fpnlite(share_tower=False), tmp_path, *flags)
    assert (lite.model_garden["model.decoder.fpn.num_filters"],
            lite.model_garden["model.decoder.fpn.use_separable_conv"],
            lite.model_garden["model.head.num_filters"],
            lite.model_garden["model.head.use_separable_conv"]) == (128, True, 128, True)
    assert lite.sources[MG + "model.decoder.fpn.num_filters"] == (
        "pipeline.config:model.ssd.feature_extractor.fpn.additional_layer_depth")


def test_targets_losses_and_post_processing_are_honoured(tmp_path) -> None:
    """Box coder, matcher, smooth-L1 (as Huber on the scaled encoding), NMS and the box cap all
    reach Model Garden's settings; each value says where it came from."""
    flags = ["--checkpoint", "/c", "--label-map", "/lm", "--train", "/t", "--eval", "/e"]
    cfg = _cfg(retinanet(), tmp_path, *flags)
    mg = cfg.model_garden
    assert mg["model.detection_generator.box_coder_weights"] == [10.0, 10.0, 5.0, 5.0]
    for split in ("train_data", "validation_data"):
        assert (mg[f"{split}.parser.match_threshold"], mg[f"{split}.parser.unmatched_threshold"],
                mg[f"{split}.parser.max_num_instances"]) == (0.5, 0.5, 100)
    assert (mg["losses.huber_loss_delta"], mg["losses.box_loss_weight"]) == (1.0, 1.0)
    assert (mg["model.detection_generator.pre_nms_score_threshold"],
            mg["model.detection_generator.nms_iou_threshold"],
            mg["model.detection_generator.max_num_detections"]) == (1e-8, 0.6, 100)
    assert cfg.sources[MG + "model.detection_generator.nms_iou_threshold"] == (
        "pipeline.config:model.ssd.post_processing.batch_non_max_suppression.iou_threshold")
    # Without normalize_loc_loss_by_codesize the OD loss is a sum over the 4 coordinates.
    summed = _cfg(retinanet().replace("normalize_loc_loss_by_codesize: true", "").replace(
        "localization_weight: 1.0", "localization_weight: 2.0").replace(
        "weighted_smooth_l1 {\n        }", "weighted_smooth_l1 { delta: 0.5 }"), tmp_path, *flags)
    assert (summed.model_garden["losses.box_loss_weight"],
            summed.model_garden["losses.huber_loss_delta"]) == (8.0, 0.5)
    # Unset matcher thresholds and box-coder scales take the OD API's proto defaults.
    defaults = _cfg(retinanet().replace(" matched_threshold: 0.5", "").replace(
        "unmatched_threshold: 0.5", "unmatched_threshold: 0.4").replace(
        "height_scale: 5.0", ""), tmp_path, *flags).model_garden
    assert defaults["model.detection_generator.box_coder_weights"] == [10.0, 10.0, 5.0, 5.0]
    assert (defaults["train_data.parser.match_threshold"],
            defaults["train_data.parser.unmatched_threshold"]) == (0.5, 0.4)


def test_conv_hyperparameters_reach_the_parts_they_govern(tmp_path) -> None:
    flags = ["--checkpoint", "/c", "--label-map", "/lm", "--train", "/t", "--eval", "/e"]
    cfg = _cfg(retinanet(), tmp_path, *flags)
    common = {"activation": "relu6", "norm_momentum": 0.997, "norm_epsilon": 0.001,
              "l2": 0.0004}
    fpn = {**common, "initializer": {"class_name": "TruncatedNormal",
                                     "config": {"mean": 0.0, "stddev": 0.03}}}
    head = {**common, "initializer": {"class_name": "RandomNormal",
                                      "config": {"mean": 0.0, "stddev": 0.01}}}
    assert cfg.layer_hyperparams == {"head": head, "decoder": fpn, "backbone": fpn}
    assert cfg.sources["layer_hyperparams.backbone"] == ("pipeline.config:model.ssd."
                                                         "feature_extractor.override_base_"
                                                         "feature_extractor_hyperparams")
    own = _cfg(retinanet().replace("override_base_feature_extractor_hyperparams: true", "")
               .replace("activation: RELU_6,", "activation: SWISH,", 1), tmp_path, *flags)
    assert set(own.layer_hyperparams) == {"head", "decoder"}  # the backbone keeps its own
    assert own.layer_hyperparams["head"]["activation"] == "swish"
    assert own.layer_hyperparams["decoder"]["activation"] == "relu6"
    unregularized = _cfg(retinanet().replace("unpad_groundtruth_tensors: false",
                                             "add_regularization_loss: false"), tmp_path, *flags)
    assert {p["l2"] for p in unregularized.layer_hyperparams.values()} == {0.0}
    assert unregularized.model_garden["losses.l2_weight_decay"] == 0.0
    scaled = _cfg(retinanet().replace(
        "truncated_normal_initializer {\n              stddev: 0.03\n              mean: 0.0\n"
        "            }",
        "variance_scaling_initializer { factor: 1.0 mode: FAN_AVG uniform: true }"),
        tmp_path, *flags)
    assert scaled.layer_hyperparams["decoder"]["initializer"] == {
        "class_name": "VarianceScaling",
        "config": {"scale": 1.0, "mode": "fan_avg", "distribution": "uniform"}}
    # What stays Model Garden's is said, in config.json and the logs: the pre-NMS cap only.
    assert "5000 best-scoring boxes" in cfg.differences[0]
    assert "change nothing on GPUs" in cfg.differences[1] and len(cfg.differences) == 2


@pytest.mark.parametrize(("change", "field", "supported"), [
    (("multiscale_anchor_generator {\n        min_level: 3",
      "ssd_anchor_generator { num_layers: 6 } multiscale_anchor_generator { min_level: 3"),
     "anchor_generator.ssd_anchor_generator", "supported: multiscale_anchor_generator"),
    (("weighted_sigmoid_focal {\n          alpha: 0.25\n          gamma: 2.0\n        }",
      "weighted_softmax { }"), "classification_loss.weighted_softmax",
     "supported: weighted_sigmoid_focal"),
    (("alpha: 0.25", ""), "weighted_sigmoid_focal.alpha", "unset (no class weighting)"),
    (("kernel_size: 3", "kernel_size: 5"), "box_predictor.weight_shared_convolutional_box_"
     "predictor.kernel_size", "5: supported: 3"),
    (("fpn { min_level: 3 max_level: 7 }", "fpn { min_level: 3 max_level: 6 }"),
     "multiscale_anchor_generator.min_level/max_level", "(3, 7) differ from the FPN's (3, 6)"),
    (("faster_rcnn_box_coder {", "mean_stddev_box_coder {"),
     "box_coder.mean_stddev_box_coder", "supported: faster_rcnn_box_coder"),
    (("argmax_matcher {", "bipartite_matcher {"),
     "matcher.bipartite_matcher", "supported: argmax_matcher"),
    (("force_match_for_each_row: true", "force_match_for_each_row: false"),
     "argmax_matcher.force_match_for_each_row", "false: supported: true"),
    (("force_match_for_each_row: true", ""),  # the proto default is false
     "argmax_matcher.force_match_for_each_row", "false: supported: true"),
    (("ignore_thresholds: false", "ignore_thresholds: true"),
     "argmax_matcher.ignore_thresholds", "true: supported: false"),
    (("iou_similarity {", "ioa_similarity {"),
     "similarity_calculator.ioa_similarity", "supported: iou_similarity"),
    (("encode_background_as_zeros: true", ""), "model.ssd.encode_background_as_zeros",
     "false (the OD API's default): supported: true"),
    (("normalize_loss_by_num_matches: true", "normalize_loss_by_num_matches: false"),
     "model.ssd.normalize_loss_by_num_matches", "supported: true"),
    (("weighted_smooth_l1 {", "weighted_l2 {"),
     "localization_loss.weighted_l2", "supported: weighted_smooth_l1"),
    (("classification_weight: 1.0", "classification_weight: 2.0"),
     "loss.classification_weight", "2.0: supported: 1.0"),
    (("classification_weight: 1.0", "hard_example_miner { num_hard_examples: 3000 } "
      "classification_weight: 1.0"), "loss.hard_example_miner", "not supported"),
    (("score_converter: SIGMOID", "score_converter: SOFTMAX"),
     "post_processing.score_converter", "SOFTMAX: supported: SIGMOID"),
    (("max_detections_per_class: 100", "max_detections_per_class: 10"),
     "batch_non_max_suppression.max_detections_per_class", "10 is below max_total_detections"),
    (("activation: RELU_6,", "activation: NONE,"), "conv_hyperparams.activation",
     "NONE: supported: RELU, RELU_6, SWISH"),
    (("scale: true,", "scale: false,"), "conv_hyperparams.batch_norm.scale",
     "false: supported: true"),
    (("l2_regularizer {", "l1_regularizer {"), "regularizer.l1_regularizer",
     "supported: l2_regularizer"),
    (("class_prediction_bias_init: -4.6", "class_prediction_bias_init: -2.0"),
     "class_prediction_bias_init", "-2.0: supported: -4.6"),
    (("depth_multiplier: 1.0", "depth_multiplier: 0.5"), "feature_extractor.depth_multiplier",
     "0.5: supported: 1.0"),
    (("fine_tune_checkpoint_version: V2", "fine_tune_checkpoint_version: V1"),
     "train_config.fine_tune_checkpoint_version", "V1 (a TF1 checkpoint): supported: V2"),
    (('metrics_set: "coco_detection_metrics"', 'metrics_set: "pascal_voc_detection_metrics"'),
     "eval_config.metrics_set", "supported: coco_detection_metrics"),
    (("num_epochs: 1", "num_epochs: 2"), "eval_input_reader.num_epochs", "supported: 1"),
])
def test_structure_the_trainer_cannot_build_is_refused(change: tuple[str, str], field: str,
                                                       supported: str) -> None:
    text = retinanet()
    assert change[0] in text
    with pytest.raises(PipelineConfigError) as err:
        parse(text.replace(change[0], change[1], 1), native=False)
    assert field in str(err.value) and supported in str(err.value), str(err.value)


def test_the_zoo_fpnlite_shared_tower_is_refused() -> None:
    with pytest.raises(PipelineConfigError, match=r"share_prediction_tower: true: supported: "
                                                  r"false \(Model Garden's RetinaNet head has "
                                                  r"separate class and box towers\)"):
        parse(fpnlite(), native=False)


@pytest.mark.parametrize(("change", "name", "message"), [
    (("use_matmul_gather: true", "use_matmul_gather: true\n        num_valid_rows: 3"),
     "num_valid_rows", "ArgMax"),
    (("max_number_of_boxes: 100", "max_number_of_boxes: 100\n  retain_original_images: true"),
     "retain_original_images", "TrainConfig"),
    (("shuffle: false", "shuffle: false\n  num_readers: 4"), "num_readers", "InputReader"),
    (("random_horizontal_flip { }", "random_horizontal_flip { probability: 0.3 }"),
     "probability", "Any"),
])
def test_a_field_nobody_reads_is_refused_not_ignored(change: tuple[str, str], name: str,
                                                     message: str) -> None:
    text = retinanet()
    assert change[0] in text
    with pytest.raises(PipelineConfigError) as err:
        parse(text.replace(*change), native=False)
    line = str(err.value)
    assert f"{name} (in a {message} block) is not read by this trainer: remove it" in line, line
    assert line.startswith("pipeline.config:") and "\n" not in line
