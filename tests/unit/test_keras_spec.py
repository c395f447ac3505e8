"""The keras task in the spec and on the trainer's command line: its fields render into flags the
trainer reads back, the objects pass the schema check, and cross-field mistakes are one line
naming the field."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest

from launcher.api import build_objects
from launcher.errors import SpecError
from launcher.render import trainer_args
from launcher.spec import build_spec
from launcher.validate import validate_objects
from tests.conftest import BASE_SPEC
from trainer.config import ConfigError, from_args, resolve_keras_classes


def _keras(**keras: Any) -> dict[str, Any]:
    raw = copy.deepcopy(BASE_SPEC)
    raw["model"] = {"task": "keras", "checkpoint": "gs://bucket-a/models/classifier.h5",
                    "labelMap": "gs://bucket-a/data/label_map.pbtxt"}
    if keras:
        raw["model"]["keras"] = keras
    return raw


@pytest.mark.parametrize("profile", ["gke", "kind", "generic"])
def test_a_keras_job_renders_schema_valid_objects(profile: str) -> None:
    raw = _keras(trainableLayers=2, features={"label": "label", "labelOffset": 1})
    raw["profile"] = profile
    if profile == "kind":
        raw["runDir"] = "gs://bucket-a/runs"
    _, objects = build_objects(build_spec(raw), "1.34")
    validate_objects(objects, "1.31", profile)


def test_keras_fields_reach_the_trainer_and_back() -> None:
    spec = build_spec(_keras(
        freezePatterns=["^conv", "bn$"], head="replace", loss="categorical_crossentropy",
        optimizer="adam", inputRange="-1-1", customObjects="my_layers",
        features={"image": "jpeg", "labelOffset": -1}))
    args = trainer_args(spec)
    assert "--task=keras" in args and not any(a.startswith("--model-size") for a in args)
    cfg = from_args(args, {})
    assert (cfg.task, cfg.freeze_patterns, cfg.head, cfg.loss, cfg.optimizer, cfg.input_range,
            cfg.custom_objects, cfg.image_key, cfg.label_key) == (
        "keras", ["^conv", "bn$"], "replace", "categorical_crossentropy", "adam", "-1-1",
        "my_layers", "jpeg", "image/class/label")
    assert cfg.label_offset == -1
    defaults = trainer_args(build_spec(_keras()))
    assert not any(a.startswith(("--head", "--image-key")) for a in defaults)


@pytest.mark.parametrize(("change", "field", "words"), [
    ({"pipelineConfig": "gs://bucket-a/p.config"}, "model.pipelineConfig", "only with model.task: "
                                                                    "detection"),
    ({"fineTuneType": "full"}, "model.fineTuneType", "only with model.task: detection"),
    ({"size": "tiny"}, "model.size", "has the size it was saved with"),
    ({"keras": {"trainableLayers": 2, "freezeUntil": "conv2"}}, "model.keras.freezeUntil",
     "set only one of model.keras.trainableLayers, model.keras.freezeUntil, "
     "model.keras.freezePatterns (also set: model.keras.trainableLayers)"),
    ({"keras": {"freezePatterns": ["conv[", "x"]}}, "model.keras.freezePatterns[0]",
     "is not a regular expression"),
    ({"keras": {"customObjects": "my-layers.py"}}, "model.keras.customObjects",
     "is not a Python module name"),
    ({"keras": {"head": "new"}}, "model.keras.head", "invalid enum value 'new'"),
])
def test_keras_cross_field_mistakes_name_the_field(change: dict[str, Any], field: str,
                                                   words: str) -> None:
    raw = _keras()
    raw["model"].update(change)
    with pytest.raises(SpecError) as err:
        build_spec(raw)
    assert err.value.field == field and words in str(err.value), str(err.value)


def test_keras_settings_need_the_keras_task() -> None:
    raw = copy.deepcopy(BASE_SPEC)
    raw["model"]["keras"] = {"trainableLayers": 2}
    with pytest.raises(SpecError) as err:
        build_spec(raw)
    assert err.value.field == "model.keras"


@pytest.mark.parametrize(("argv", "words"), [
    (["--task", "keras"], "--checkpoint (model.checkpoint): required with --task keras"),
    (["--task", "keras", "--checkpoint", "m.h5", "--trainable-layers", "2", "--freeze-until",
      "x"], "--freeze-until (model.keras.freezeUntil): set only one of --trainable-layers "
            "(model.keras.trainableLayers), --freeze-until"),
    (["--task", "keras", "--checkpoint", "m.h5", "--backbone", "resnet50"],
     "--backbone (model.backbone): only with --task detection"),
    (["--checkpoint", "c", "--trainable-layers", "2"], "--trainable-layers "
     "(model.keras.trainableLayers): only with --task keras"),
    (["--task", "keras", "--checkpoint", "m.h5", "--trainable-layers", "0"],
     "--trainable-layers (model.keras.trainableLayers): must be >= 1"),
])
def test_trainer_refuses_flags_of_the_other_task(argv: list[str], words: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(words)):
        from_args(["--run-dir", "/r", "--train", "/t", *argv], {})


def test_keras_classes_come_from_flag_label_map_or_the_model() -> None:
    cfg = from_args(["--run-dir", "/r", "--train", "/t", "--task", "keras", "--checkpoint",
                     "m.h5"], {})
    assert resolve_keras_classes(cfg, None) is None  # the model's own head decides
    assert resolve_keras_classes(cfg, {1: "a", 2: "b", 5: "e"}) == 5
    cfg = from_args(["--run-dir", "/r", "--train", "/t", "--task", "keras", "--checkpoint",
                     "m.h5", "--num-classes", "3"], {})
    with pytest.raises(ConfigError, match="smaller than the label map's largest id 5"):
        resolve_keras_classes(cfg, {1: "a", 5: "e"})
