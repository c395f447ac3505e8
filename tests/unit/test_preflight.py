"""`launcher validate` (and `submit`) read the pipeline.config and label map as the trainer will,
so what the trainer would refuse inside a pod is refused before any GPU is paid for."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from launcher.cli import app
from launcher.errors import SpecError
from launcher.spec import build_spec
from tests.conftest import BASE_SPEC
from tests.unit.test_pipeline_rules import FASTER_RCNN_PETS, MSCOCO_LABEL_MAP, retinanet


def _validate(tmp_path: Path, config: str, **model: str) -> tuple[int, str, str]:
    (tmp_path / "pipeline.config").write_text(config)
    (tmp_path / "label_map.pbtxt").write_text(MSCOCO_LABEL_MAP)
    (tmp_path / "train-0.tfrecord").write_bytes(b"")
    raw = copy.deepcopy(BASE_SPEC)
    raw["runDir"] = str(tmp_path / "runs")
    raw["model"] = {"pipelineConfig": str(tmp_path / "pipeline.config"), **model}
    raw.pop("data")
    spec = tmp_path / "job.yaml"
    spec.write_text(yaml.safe_dump(raw))
    result = CliRunner().invoke(app, ["validate", str(spec), "--set", "training.steps=25000"])
    return result.exit_code, result.stdout, result.stderr


def _filled(tmp_path: Path, config: str) -> str:
    """The zoo config with its PATH_TO_BE_CONFIGURED placeholders filled in, as users do."""
    for placeholder, path in [("resnet50.ckpt-1", "c"), ("label_map.txt", "label_map.pbtxt"),
                              ("train2017-?????-of-00256.tfrecord", "train-*.tfrecord"),
                              ("val2017-?????-of-00032.tfrecord", "train-*.tfrecord")]:
        config = config.replace(f"PATH_TO_BE_CONFIGURED/{placeholder}", str(tmp_path / path))
    return config


def test_a_zoo_config_with_its_paths_filled_in_is_refused_only_for_its_missing_checkpoint(
        tmp_path: Path) -> None:
    # (no data.train and no model.checkpoint in the spec: both come from the config; the
    # checkpoint is not downloaded here, and the restore check says so before any pod runs)
    missing = f"error: pipeline.config train_config.fine_tune_checkpoint {tmp_path}/c: not " \
              f"found (no {tmp_path}/c.index)"
    code, out, err = _validate(tmp_path, _filled(tmp_path, retinanet()))
    assert code == 2 and out == ""
    assert err.splitlines()[-1] == missing, err
    # As the OD API's SSD (the default for an ssd block) nothing differs from the OD API ...
    assert "Model Garden" not in err
    # ... mapped onto Model Garden's RetinaNet, what Model Garden does its own way is said
    # before anything runs.
    code, out, err = _validate(tmp_path, _filled(tmp_path, retinanet()), family="retinanet")
    assert code == 2 and err.splitlines()[-1] == missing, err
    assert "warning: model.pipelineConfig model.ssd.post_processing.batch_non_max_" \
           "suppression: Model Garden keeps the 5000 best-scoring boxes per class" in err


def test_refusals_reach_validate_as_one_line(tmp_path: Path) -> None:
    code, out, err = _validate(tmp_path, FASTER_RCNN_PETS, checkpoint="/c")
    assert code == 2 and out == ""
    assert err.count("\n") == 1
    assert "model.faster_rcnn: only the OD API's SSD family is ported" in err
    code, _, err = _validate(tmp_path, retinanet())
    assert code == 2
    assert "train_config.fine_tune_checkpoint is 'PATH_TO_BE_CONFIGURED/resnet50.ckpt-1'" in err
    code, _, err = _validate(tmp_path, _filled(tmp_path, retinanet()).replace(
        "num_classes: 90", "num_classes: 80"))
    assert code == 2 and "is smaller than the label map's largest id 90" in err


def test_without_a_config_the_spec_still_needs_checkpoint_and_data() -> None:
    raw = copy.deepcopy(BASE_SPEC)
    raw.pop("data")
    with pytest.raises(SpecError) as err:
        build_spec(raw)
    assert err.value.field == "data.train"
    raw = copy.deepcopy(BASE_SPEC)
    del raw["model"]["checkpoint"]
    with pytest.raises(SpecError) as err:
        build_spec(raw)
    assert err.value.field == "model.checkpoint"


def _validate_keras(tmp_path: Path, checkpoint: Path) -> tuple[int, str]:
    (tmp_path / "train-0.tfrecord").write_bytes(b"")
    raw = copy.deepcopy(BASE_SPEC)
    raw.update(runDir=str(tmp_path / "runs"), data={"train": [str(tmp_path / "train-*")]})
    raw["model"] = {"task": "keras", "checkpoint": str(checkpoint), "numClasses": 3}
    spec = tmp_path / "job.yaml"
    spec.write_text(yaml.safe_dump(raw))
    result = CliRunner().invoke(app, ["validate", str(spec)])
    return result.exit_code, result.stderr


def test_a_keras_model_the_trainer_would_refuse_is_refused_by_validate(tmp_path: Path) -> None:
    """Without TensorFlow: only the file's metadata is read."""
    import h5py

    code, err = _validate_keras(tmp_path, tmp_path / "missing.h5")
    assert code == 2 and "model.checkpoint: " in err and "missing.h5 not found" in err
    (tmp_path / "exported").mkdir()
    (tmp_path / "exported" / "model.onnx").write_bytes(b"\x08")
    code, err = _validate_keras(tmp_path, tmp_path / "exported")
    assert code == 2 and "no saved_model.pb" in err
    (tmp_path / "exported" / "saved_model.pb").write_bytes(b"\x08")  # tf.saved_model.save's
    code, err = _validate_keras(tmp_path, tmp_path / "exported")
    assert code == 2 and "a SavedModel without Keras metadata (keras_metadata.pb)" in err
    with h5py.File(tmp_path / "keras3.h5", "w") as f:
        f.attrs["keras_version"] = "3.4.1"
    code, err = _validate_keras(tmp_path, tmp_path / "keras3.h5")
    assert code == 2 and "saved by Keras 3.4.1" in err and err.count("\n") == 1
    with h5py.File(tmp_path / "keras2.h5", "w") as f:
        f.attrs["keras_version"] = "2.15.0"
    code, err = _validate_keras(tmp_path, tmp_path / "keras2.h5")
    assert code == 0, err


@pytest.mark.parametrize(("label_map", "words"), [
    (b"\x80\x81 not text", "not UTF-8 text (byte 0x80 at offset 0)"),
    (None, "cannot be read (File name too long)")])
def test_a_label_map_that_cannot_be_read_fails_validate(tmp_path: Path, label_map: bytes | None,
                                                        words: str) -> None:
    """Once a warning ("inputs not checked") and `ok`, although the trainer would refuse it."""
    path = tmp_path / ("x" * 300 if label_map is None else "label_map.pbtxt")
    if label_map is not None:
        path.write_bytes(label_map)
    (tmp_path / "train-0.tfrecord").write_bytes(b"")
    raw = copy.deepcopy(BASE_SPEC)
    raw.update(runDir=str(tmp_path / "runs"))
    raw["model"] = {"checkpoint": str(tmp_path / "c"), "labelMap": str(path)}
    raw["data"] = {"train": [str(tmp_path / "train-*.tfrecord")]}
    spec = tmp_path / "job.yaml"
    spec.write_text(yaml.safe_dump(raw))
    result = CliRunner().invoke(app, ["validate", str(spec)])
    assert result.exit_code == 2 and result.stdout == ""
    assert words in result.stderr and result.stderr.count("\n") == 1, result.stderr
