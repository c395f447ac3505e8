"""Trainer configuration: OD-API pipeline.config and label maps as real files are written, flags
over config over defaults, TF_CONFIG handling. No TensorFlow is imported here."""

from __future__ import annotations

import json

import pytest

from trainer.config import ConfigError, from_args, parse_label_map, resolve_num_classes
from trainer.pipeline.config import PipelineConfigError, parse
from trainer.run.cluster import ClusterError, ClusterInfo, from_env, wait_for_peers

PIPELINE = """\
# SSD with Mobilenet v2 FPNLite, as exported by the TF2 Detection Zoo.
model {
  ssd {
    num_classes: 3
    freeze_batchnorm: true
    image_resizer { fixed_shape_resizer { height: 384 width: 384 } }
    feature_extractor {
      type: 'ssd_mobilenet_v2_fpn_keras'
      depth_multiplier: 1.0,
    }
    box_coder { faster_rcnn_box_coder { y_scale: 10.0; x_scale: 10.0 } }
    encode_background_as_zeros: true
    normalize_loss_by_num_matches: true
  }
}
train_config: {
  fine_tune_checkpoint: "gs://models/ssd/checkpoint/ckpt-0"
  fine_tune_checkpoint_type: "fine_tune"
  batch_size: 64
  num_steps: 25000
  data_augmentation_options { random_horizontal_flip { } }
  optimizer {
    momentum_optimizer: {
      learning_rate: {
        cosine_decay_learning_rate {
          learning_rate_base: .04
          total_steps: 25000
          warmup_learning_rate: .013333
          warmup_steps: 2000
        }
      }
      momentum_optimizer_value: 0.9
    }
    use_moving_average: false
  }
}
train_input_reader: {
  label_map_path: "gs://data/label_map.pbtxt"
  tf_record_input_reader {
    input_path: "gs://data/train-?????-of-00100.tfrecord"
    input_path: 'gs://data/extra-*.tfrecord'
  }
}
eval_input_reader: {
  label_map_path: "gs://data/label_map.pbtxt"
  shuffle: false
  tf_record_input_reader { input_path: "gs://data/val-*.tfrecord" }
}
"""


# PIPELINE's partial ssd block, mapped onto Model Garden's RetinaNet
MAPPED = ["--run-dir", "/r", "--family", "retinanet", "--pipeline-config", "p.config"]


def _reader(files: dict[str, str]):
    def read(uri: str) -> str:
        if uri not in files:
            raise ConfigError(f"{uri}: not found")
        return files[uri]
    return read


def test_pipeline_config_fields() -> None:
    config = parse(PIPELINE, native=False)  # onto Model Garden's RetinaNet
    assert config.num_classes == 3
    assert config.image_size == 384
    assert config.batch_size == 64 and config.num_steps == 25000
    assert config.fine_tune_checkpoint == "gs://models/ssd/checkpoint/ckpt-0"
    assert config.fine_tune_checkpoint_type == "detection"  # TF2 "fine_tune"
    assert config.learning_rate == pytest.approx(0.04) and config.warmup_steps == 2000
    assert config.train_input_paths == ["gs://data/train-?????-of-00100.tfrecord",
                                        "gs://data/extra-*.tfrecord"]
    assert config.eval_input_paths == ["gs://data/val-*.tfrecord"]
    assert config.freeze_batchnorm is True


def test_faster_rcnn_is_refused_not_trained_as_retinanet() -> None:
    with pytest.raises(PipelineConfigError,
                       match=r"model\.faster_rcnn: only the OD API.s SSD family is ported so "
                             r"far .*Model Garden's Faster R-CNN is model.family: faster_rcnn"):
        parse("""model { faster_rcnn { num_classes: 90 image_resizer {
            keep_aspect_ratio_resizer { min_dimension: 600 max_dimension: 1024 } } } }
            train_config { optimizer { adam_optimizer { learning_rate {
            constant_learning_rate { learning_rate: 0.0001 } } } } }""")


@pytest.mark.parametrize("text", ["model { ssd { num_classes: three } }",
                                  "train_config { batch_size: 4 ",
                                  "train_config { fine_tune_checkpoint_type: 'everything' }"])
def test_unreadable_pipeline_config_is_a_config_error(text: str) -> None:
    with pytest.raises(ConfigError, match="--pipeline-config: "):
        from_args(MAPPED, {},
                  _reader({"p.config": text}))


def test_flags_override_pipeline_config_over_defaults() -> None:
    read = _reader({"p.config": PIPELINE})
    cfg = from_args([*MAPPED, "--global-batch-size",
                     "32"], {}, read)
    assert cfg.global_batch_size == 32  # flag
    assert cfg.steps == 25000 and cfg.image_size == 384  # pipeline.config
    assert cfg.backbone == "mobilenetv2" and cfg.momentum == 0.9 and cfg.total_steps == 25000
    assert cfg.checkpoint_every == 100  # default
    assert cfg.train == ["gs://data/train-?????-of-00100.tfrecord", "gs://data/extra-*.tfrecord"]
    assert cfg.label_map == "gs://data/label_map.pbtxt"
    assert cfg.fine_tune_type == "detection"
    cfg = from_args([*MAPPED, "--train", "/x/*",
                     "--fine-tune-type", "full"], {}, read)
    assert cfg.train == ["/x/*"] and cfg.fine_tune_type == "full"


def test_run_dir_from_environment_and_required_fields() -> None:
    cfg = from_args(["--train", "/d/*"], {"LAUNCHER_RUN_DIR": "gs://b/runs/j"})
    assert cfg.run_dir == "gs://b/runs/j"
    with pytest.raises(ConfigError, match="--run-dir: required"):
        from_args(["--train", "/d/*"], {})
    with pytest.raises(ConfigError, match=r"--train \(data.train\): at least one"):
        from_args(["--run-dir", "/r"], {})
    with pytest.raises(ConfigError, match=r"--image-size \(model.imageSize\): 100 is not a "
                                          r"multiple of 128 \(2\^7, the standard retinanet's "
                                          r"coarsest feature level\): try 128"):
        from_args(["--run-dir", "/r", "--train", "/d/*", "--image-size", "100"], {})


def test_label_map_as_written_by_hand() -> None:
    text = """# classes
    item {
      id: 1
      name: 'cat'
      display_name: "Cat"
    }
    item { name: "dog" id: 2 }
    item: { id: 3, name: 'bird', keypoints { id: 0 label: "beak" } }
    """
    assert parse_label_map(text) == {1: "cat", 2: "dog", 3: "bird"}


@pytest.mark.parametrize(("text", "message"), [
    ("item { id: 0 name: 'background' }", "must be >= 1"),
    ("item { id: 1 name: 'a' } item { id: 1 name: 'b' }", "appears twice"),
    ("", "has no items"),
    ("item { id: 1 name: 'a' ", "not a StringIntLabelMap"),
])
def test_bad_label_maps(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_label_map(text, "label_map.pbtxt")


def test_num_classes_must_cover_the_label_maps_ids() -> None:
    cfg = from_args(["--run-dir", "/r", "--train", "/d/*", "--num-classes", "3"], {})
    assert resolve_num_classes(cfg, {1: "a", 2: "b"}) == 4  # ids 1..3, one unused
    cfg = from_args(["--run-dir", "/r", "--train", "/d/*", "--num-classes", "1"], {})
    with pytest.raises(ConfigError, match=r"num_classes 1 \(flag\) is smaller than the label "
                                          r"map's largest id 2"):
        resolve_num_classes(cfg, {1: "a", 2: "b"})
    cfg = from_args(["--run-dir", "/r", "--train", "/d/*"], {})
    assert resolve_num_classes(cfg, {1: "a", 2: "b", 5: "e"}) == 6  # ids + background


def test_tf_config_from_env_and_from_the_completion_index() -> None:
    tf_config = {"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 1}}
    info = from_env({"TF_CONFIG": json.dumps(tf_config)})
    assert info == ClusterInfo(["a:1", "b:1"], 1) and not info.is_chief
    info = from_env({"JOB_COMPLETION_INDEX": "0", "LAUNCHER_JOB_NAME": "j",
                     "LAUNCHER_NUM_WORKERS": "3", "LAUNCHER_PORT": "2222"})
    assert info.workers == ["j-0.j:2222", "j-1.j:2222", "j-2.j:2222"] and info.is_chief
    assert from_env({}).workers == []


@pytest.mark.parametrize("env", [
    {"TF_CONFIG": "{not json"},
    {"TF_CONFIG": json.dumps({"cluster": {"worker": ["a:1"]}, "task": {"index": 3}})},
    {"TF_CONFIG": json.dumps({"cluster": {"worker": ["a:1"]},
                              "task": {"type": "ps", "index": 0}})},
])
def test_bad_tf_config(env: dict[str, str]) -> None:
    with pytest.raises(ClusterError):
        from_env(env)


def test_waiting_for_peers_is_bounded() -> None:
    wait_for_peers(ClusterInfo(["127.0.0.1:1", "localhost:2"], 0), timeout=1)
    with pytest.raises(ClusterError, match="did not resolve within"):
        wait_for_peers(ClusterInfo(["127.0.0.1:1", "no-such-peer.invalid:1"], 0),
                       timeout=0.2, interval=0.1)


def test_a_value_from_the_pipeline_config_is_named_by_its_field_there() -> None:
    """A restore mismatch once named --checkpoint for a path the config gave."""
    from trainer.config import field_name

    read = _reader({"p.config": PIPELINE})
    cfg = from_args(MAPPED, {}, read)
    assert field_name(cfg, "checkpoint") == "pipeline.config train_config.fine_tune_checkpoint"
    cfg = from_args([*MAPPED, "--checkpoint=/c"], {},
                    read)
    assert field_name(cfg, "checkpoint") == "--checkpoint (model.checkpoint)"
