"""The TF2 Detection Zoo's ten SSD pipeline.configs (``tests.zoo``), unedited, with the paths in
the spec as a user gives them: `launcher validate` accepts every one as the OD API's SSD, and
the trainer reads from each what the file says (size, batch, schedule, augmentations), with one
warning naming the TPU/TF1 fields that change nothing on GPUs."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from launcher.cli import app
from tests.conftest import BASE_SPEC
from tests.unit.test_pipeline_rules import MSCOCO_LABEL_MAP
from tests.zoo import CONFIGS
from trainer.config import ConfigError, from_args

PLAIN = "ssd_mobilenet_v2_320x320_coco17_tpu-8"  # its fixed_shape_resizer is 300x300


def _paths(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "label_map.pbtxt").write_text(MSCOCO_LABEL_MAP)
    (tmp_path / "train-00000-of-00001.tfrecord").write_bytes(b"")
    return {"checkpoint": str(tmp_path / "checkpoint" / "ckpt-0"),
            "label_map": str(tmp_path / "label_map.pbtxt"),
            "train": str(tmp_path / "train-*.tfrecord"), "eval": str(tmp_path / "train-*")}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_a_zoo_config_validates_unedited_up_to_the_checkpoint(name: str, tmp_path: Path) -> None:
    """Everything but the checkpoint, which is not downloaded here: its restore check is the
    one error (the zoo checkpoints' keys are checked in test_od_api_fixtures.py, the restore
    check itself in test_ssd_zoo.py)."""
    (tmp_path / "pipeline.config").write_text(CONFIGS[name])
    paths = _paths(tmp_path)
    raw = copy.deepcopy(BASE_SPEC)
    raw["runDir"] = str(tmp_path / "runs")
    raw["model"] = {"pipelineConfig": str(tmp_path / "pipeline.config"),
                    "checkpoint": paths["checkpoint"], "labelMap": paths["label_map"]}
    raw["data"] = {"train": [paths["train"]], "eval": [paths["eval"]]}
    raw["training"] = {}  # the file's steps, batch and schedule stand
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(raw))
    result = CliRunner().invoke(app, ["validate", str(tmp_path / "job.yaml")])
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.splitlines()[-1] == (
        f"error: --checkpoint (model.checkpoint) {paths['checkpoint']}: not found (no "
        f"{paths['checkpoint']}.index)"), result.stderr
    assert "train_config.sync_replicas, train_config.startup_delay_steps" in result.stderr
    assert "change nothing on GPUs" in result.stderr


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_the_trainer_reads_what_a_zoo_config_says(name: str, tmp_path: Path) -> None:
    (tmp_path / "pipeline.config").write_text(CONFIGS[name])
    paths = _paths(tmp_path)
    cfg = from_args(["--run-dir", "/r", "--pipeline-config", str(tmp_path / "pipeline.config"),
                     "--checkpoint", paths["checkpoint"], "--label-map", paths["label_map"],
                     "--train", paths["train"], "--eval", paths["eval"]], {},
                    lambda uri: Path(uri).read_text())
    size = 300 if name == PLAIN else int(name.split("x")[1].split("_")[0])
    assert (cfg.family, cfg.image_size, cfg.num_classes) == ("ssd", size, 90)
    assert cfg.sources["family"] == "pipeline.config:model.ssd"
    assert cfg.fine_tune_type == "classification"
    assert cfg.global_batch_size == (512 if size == 300 else 128 if "lite" in name else 64)
    assert cfg.steps == cfg.total_steps and cfg.lr_schedule == "cosine"
    assert cfg.bfloat16 is ("resnet" in name)
    assert cfg.eval_batch_size == (1 if "mobilenet_v1" in name else None)
    crop = "ssd_random_crop" if size == 300 else "random_crop_image"
    assert [a for a, _ in cfg.augmentations] == ["random_horizontal_flip", crop]
    if size == 300:  # SSD's seven crops, none listed in the file
        operations = dict(cfg.augmentations)[crop]["operations"]
        assert [op["min_object_covered"] for op in operations] == [0.0, 0.1, 0.3, 0.5, 0.7,
                                                                   0.9, 1.0]
    assert cfg.differences == [
        "train_config.sync_replicas, train_config.startup_delay_steps, "
        "train_config.replicas_to_aggregate, train_config.unpad_groundtruth_tensors, "
        "model.ssd.inplace_batchnorm_update, model.ssd.matcher.argmax_matcher.use_matmul_gather"
        ": TPU and TF1 settings that change nothing on GPUs: accepted, not used"]


def test_an_fpn_size_that_its_levels_do_not_divide_is_refused(tmp_path: Path) -> None:
    """An FPN upsamples level 5 onto level 4: its size is a multiple of 32; SSD's own extra
    layers take any size (the zoo's plain SSD is 300x300)."""
    text = CONFIGS["ssd_mobilenet_v2_fpnlite_320x320_coco17_tpu-8"].replace(
        "height: 320", "height: 300").replace("width: 320", "width: 300")
    (tmp_path / "pipeline.config").write_text(text)
    paths = _paths(tmp_path)
    with pytest.raises(ConfigError, match=r"pipeline.config model.ssd.image_resizer.fixed_shape_"
                                        r"resizer: 300 is not a multiple of 32 \(2\^5, the "
                                        r"pipeline.config's FPN\): try 288"):
        from_args(["--run-dir", "/r", "--pipeline-config", str(tmp_path / "pipeline.config"),
                   "--checkpoint", paths["checkpoint"], "--label-map", paths["label_map"],
                   "--train", paths["train"], "--eval", paths["eval"]], {},
                  lambda uri: Path(uri).read_text())


# The zoo's other families, from ../shared/odapi's copies of their published files.
OTHER_FAMILIES = {"ssd_efficientdet_d0_512x512_coco17_tpu-8": "model.ssd.feature_extractor.type",
                  "faster_rcnn_resnet50_v1_640x640_coco17_tpu-8": "model.faster_rcnn",
                  "centernet_resnet50_v1_fpn_512x512_coco17_tpu-8": "model.center_net"}


@pytest.mark.parametrize("name", sorted(OTHER_FAMILIES))
def test_the_zoos_other_families_are_refused_naming_what_is_ported(name: str,
                                                                    tmp_path: Path) -> None:
    from tests.integration.test_od_api_fixtures import FIXTURES

    config = FIXTURES / "fixtures" / name / "pipeline.config"
    if not config.is_file():
        pytest.skip(f"no OD API fixtures at {FIXTURES}")
    paths = _paths(tmp_path)
    with pytest.raises(ConfigError) as err:
        from_args(["--run-dir", "/r", "--pipeline-config", str(config), "--checkpoint",
                   paths["checkpoint"], "--label-map", paths["label_map"], "--train",
                   paths["train"], "--eval", paths["eval"]], {}, lambda uri: Path(uri).read_text())
    assert OTHER_FAMILIES[name] in str(err.value)
    assert "only the OD API's SSD family is ported so far" in str(err.value)
