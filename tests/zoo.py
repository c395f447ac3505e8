"""The TF2 Detection Zoo's ten SSD pipeline.configs (tensorflow/models
research/object_detection/configs/tf2), field for field as published: nine share one layout (an
FPN, the weight-shared predictor, focal loss) and differ in a few values, the tenth is the plain
SSD. Comments aside, ``CONFIGS[name]`` is the file a user downloads, PATH_TO_BE_CONFIGURED and
all; ``STRUCTURE[name]`` names the fixture in ../shared/odapi whose network has the same
variables (size and step counts do not change them), None where there is none."""

from __future__ import annotations

_HYPERPARAMS = """conv_hyperparams {{
          activation: RELU_6,
          regularizer {{
            l2_regularizer {{
              weight: {l2}
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

_FPN = """model {{
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
    image_resizer {{
      fixed_shape_resizer {{
        height: {size}
        width: {size}
      }}
    }}
    box_predictor {{
      weight_shared_convolutional_box_predictor {{
        depth: {depth}
        class_prediction_bias_init: -4.6
        {head}
        num_layers_before_predictor: 4
        {lite_head}kernel_size: 3
      }}
    }}
    feature_extractor {{
      type: '{extractor}'
      {lite_extractor}fpn {{
        min_level: 3
        max_level: 7
        {lite_fpn}}}
      min_depth: 16
      depth_multiplier: 1.0
      {extractor_hyperparams}
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
  fine_tune_checkpoint: "PATH_TO_BE_CONFIGURED/{checkpoint}.ckpt-1"
  fine_tune_checkpoint_type: "classification"
  batch_size: {batch}
  sync_replicas: true
  startup_delay_steps: 0
  replicas_to_aggregate: 8
  {bfloat16}num_steps: {steps}
  data_augmentation_options {{
    random_horizontal_flip {{
    }}
  }}
  data_augmentation_options {{
    random_crop_image {{
      min_object_covered: 0.0
      min_aspect_ratio: 0.75
      max_aspect_ratio: 3.0
      min_area: 0.75
      max_area: 1.0
      overlap_thresh: 0.0
    }}
  }}
  optimizer {{
    momentum_optimizer: {{
      learning_rate: {{
        cosine_decay_learning_rate {{
          learning_rate_base: {lr}
          total_steps: {steps}
          warmup_learning_rate: {warmup_lr}
          warmup_steps: {warmup}
        }}
      }}
      momentum_optimizer_value: 0.9
    }}
    use_moving_average: false
  }}
  max_number_of_boxes: 100
  unpad_groundtruth_tensors: false
}}
{readers}"""

_READERS = """
train_input_reader: {{
  label_map_path: "PATH_TO_BE_CONFIGURED/label_map.txt"
  tf_record_input_reader {{
    input_path: "PATH_TO_BE_CONFIGURED/train2017-?????-of-00256.tfrecord"
  }}
}}

eval_config: {{
  metrics_set: "coco_detection_metrics"
  use_moving_averages: false
  {eval_batch}}}

eval_input_reader: {{
  label_map_path: "PATH_TO_BE_CONFIGURED/label_map.txt"
  shuffle: false
  num_epochs: 1
  tf_record_input_reader {{
    input_path: "PATH_TO_BE_CONFIGURED/val2017-?????-of-00032.tfrecord"
  }}
}}
"""

_PLAIN_SSD = """model {
  ssd {
    inplace_batchnorm_update: true
    freeze_batchnorm: false
    num_classes: 90
    box_coder {
      faster_rcnn_box_coder {
        y_scale: 10.0
        x_scale: 10.0
        height_scale: 5.0
        width_scale: 5.0
      }
    }
    matcher {
      argmax_matcher {
        matched_threshold: 0.5
        unmatched_threshold: 0.5
        ignore_thresholds: false
        negatives_lower_than_unmatched: true
        force_match_for_each_row: true
        use_matmul_gather: true
      }
    }
    similarity_calculator {
      iou_similarity {
      }
    }
    encode_background_as_zeros: true
    anchor_generator {
      ssd_anchor_generator {
        num_layers: 6
        min_scale: 0.2
        max_scale: 0.95
        aspect_ratios: 1.0
        aspect_ratios: 2.0
        aspect_ratios: 0.5
        aspect_ratios: 3.0
        aspect_ratios: 0.3333
      }
    }
    image_resizer {
      fixed_shape_resizer {
        height: 300
        width: 300
      }
    }
    box_predictor {
      convolutional_box_predictor {
        min_depth: 0
        max_depth: 0
        num_layers_before_predictor: 0
        use_dropout: false
        dropout_keep_probability: 0.8
        kernel_size: 1
        box_code_size: 4
        apply_sigmoid_to_scores: false
        class_prediction_bias_init: -4.6
        conv_hyperparams {
          activation: RELU_6,
          regularizer {
            l2_regularizer {
              weight: 0.00004
            }
          }
          initializer {
            random_normal_initializer {
              stddev: 0.01
              mean: 0.0
            }
          }
          batch_norm {
            train: true,
            scale: true,
            center: true,
            decay: 0.97,
            epsilon: 0.001,
          }
        }
      }
    }
    feature_extractor {
      type: 'ssd_mobilenet_v2_keras'
      min_depth: 16
      depth_multiplier: 1.0
      conv_hyperparams {
        activation: RELU_6,
        regularizer {
          l2_regularizer {
            weight: 0.00004
          }
        }
        initializer {
          truncated_normal_initializer {
            stddev: 0.03
            mean: 0.0
          }
        }
        batch_norm {
          train: true,
          scale: true,
          center: true,
          decay: 0.97,
          epsilon: 0.001,
        }
      }
      override_base_feature_extractor_hyperparams: true
    }
    loss {
      classification_loss {
        weighted_sigmoid_focal {
          alpha: 0.75,
          gamma: 2.0
        }
      }
      localization_loss {
        weighted_smooth_l1 {
          delta: 1.0
        }
      }
      classification_weight: 1.0
      localization_weight: 1.0
    }
    normalize_loss_by_num_matches: true
    normalize_loc_loss_by_codesize: true
    post_processing {
      batch_non_max_suppression {
        score_threshold: 1e-8
        iou_threshold: 0.6
        max_detections_per_class: 100
        max_total_detections: 100
      }
      score_converter: SIGMOID
    }
  }
}

train_config: {
  fine_tune_checkpoint_version: V2
  fine_tune_checkpoint: "PATH_TO_BE_CONFIGURED/mobilenet_v2.ckpt-1"
  fine_tune_checkpoint_type: "classification"
  batch_size: 512
  sync_replicas: true
  startup_delay_steps: 0
  replicas_to_aggregate: 8
  num_steps: 50000
  data_augmentation_options {
    random_horizontal_flip {
    }
  }
  data_augmentation_options {
    ssd_random_crop {
    }
  }
  optimizer {
    momentum_optimizer: {
      learning_rate: {
        cosine_decay_learning_rate {
          learning_rate_base: .08
          total_steps: 50000
          warmup_learning_rate: 0.013333
          warmup_steps: 2000
        }
      }
      momentum_optimizer_value: 0.9
    }
    use_moving_average: false
  }
  max_number_of_boxes: 100
  unpad_groundtruth_tensors: false
}
"""


def _fpn(extractor: str, size: int, steps: int, checkpoint: str, *, lite: bool = False,
         resnet: bool = False, eval_batch: bool = False) -> str:
    l2 = "0.0004" if resnet else "0.00004"
    init = ("truncated_normal_initializer", "0.03") if resnet else \
        ("random_normal_initializer", "0.01")
    return _FPN.format(
        size=size, depth=128 if lite else 256, extractor=extractor, checkpoint=checkpoint,
        head=_HYPERPARAMS.format(l2=l2, init="random_normal_initializer", stddev="0.01"),
        extractor_hyperparams=_HYPERPARAMS.format(l2=l2, init=init[0], stddev=init[1]),
        lite_head="share_prediction_tower: true\n        use_depthwise: true\n        "
        if lite else "",
        lite_extractor="use_depthwise: true\n      " if lite else "",
        lite_fpn="additional_layer_depth: 128\n      " if lite else "",
        batch=128 if lite else 64, bfloat16="use_bfloat16: true\n  " if resnet else "",
        steps=steps, lr=".08" if lite else ".04", warmup_lr=".026666" if lite else ".013333",
        warmup=1000 if lite else 2000,
        readers=_READERS.format(eval_batch="batch_size: 1;\n" if eval_batch else ""))


def _plain() -> str:
    return _PLAIN_SSD + _READERS.format(eval_batch="")


def _resnets() -> dict[str, str]:
    return {f"ssd_resnet{depth}_v1_fpn_{size}x{size}_coco17_tpu-8": _fpn(
        f"ssd_resnet{depth}_v1_fpn_keras", size, 25000 if size == 640 else 100000,
        f"resnet{depth}", resnet=True) for depth in (50, 101, 152) for size in (640, 1024)}


CONFIGS: dict[str, str] = {
    "ssd_mobilenet_v2_320x320_coco17_tpu-8": _plain(),
    "ssd_mobilenet_v1_fpn_640x640_coco17_tpu-8": _fpn(
        "ssd_mobilenet_v1_fpn_keras", 640, 25000, "mobilenet_v1", eval_batch=True),
    **{f"ssd_mobilenet_v2_fpnlite_{s}x{s}_coco17_tpu-8": _fpn(
        "ssd_mobilenet_v2_fpn_keras", s, 50000, "mobilenet_v2", lite=True) for s in (320, 640)},
    **_resnets(),
}

STRUCTURE: dict[str, str | None] = {
    name: None if "resnet152" in name else name.replace("1024x1024", "640x640").replace(
        "fpnlite_640x640", "fpnlite_320x320") for name in CONFIGS}
