"""The detector family in the spec and on the trainer's command line: it renders into a flag the
trainer reads back (and writes into config.json), and the combinations that cannot be honoured
are one line naming the field."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from launcher.api import build_objects
from launcher.errors import SpecError
from launcher.render import trainer_args
from launcher.spec import build_spec
from launcher.validate import validate_objects
from tests.conftest import BASE_SPEC
from trainer.config import ConfigError, from_args


def _detection(**model: Any) -> dict[str, Any]:
    raw = copy.deepcopy(BASE_SPEC)
    raw["model"] = {"checkpoint": "gs://bucket-a/models/frcnn/ckpt-6",
                    "labelMap": "gs://bucket-a/data/label_map.pbtxt", **model}
    return raw


@pytest.mark.parametrize("family", ["faster_rcnn", "yolo"])
def test_the_family_reaches_the_trainer_and_its_objects_are_schema_valid(family: str) -> None:
    spec = build_spec(_detection(family=family, size="tiny"))
    args = trainer_args(spec)
    assert f"--family={family}" in args
    cfg = from_args(args, {})
    assert (cfg.family, cfg.sources["family"], cfg.model_size) == (family, "flag", "tiny")
    _, objects = build_objects(spec, "1.34")
    validate_objects(objects, "1.31", "gke")


def test_without_a_family_the_trainer_builds_retinanet() -> None:
    args = trainer_args(build_spec(_detection()))
    assert not any(a.startswith("--family") for a in args)
    cfg = from_args(args, {})
    assert (cfg.family, cfg.sources["family"]) == ("retinanet", "default")


@pytest.mark.parametrize(("model", "field", "words"), [
    ({"family": "faster_rcnn", "pipelineConfig": "gs://bucket-a/pipeline.config"},
     "model.pipelineConfig", "a pipeline.config describes an OD-API ssd model (retinanet, ssd), "
                             "not model.family: faster_rcnn"),
    ({"family": "centernet"}, "model.family", "invalid enum value 'centernet'"),
    ({"family": "yolo", "backbone": "resnet50"}, "model.backbone",
     "yolo's backbone is CSP-Darknet"),
    ({"task": "keras", "family": "faster_rcnn"}, "model.family",
     "only with model.task: detection"),
])
def test_family_mistakes_name_the_field(model: dict[str, Any], field: str, words: str) -> None:
    with pytest.raises(SpecError) as err:
        build_spec(_detection(**model))
    assert err.value.field == field and words in str(err.value), str(err.value)


def test_the_trainer_refuses_a_family_a_pipeline_config_does_not_describe() -> None:
    files = {"gs://b/pipeline.config": "train_config { batch_size: 4 }"}
    with pytest.raises(ConfigError, match=r"--pipeline-config \(model\.pipelineConfig\): a "
                                           r"pipeline\.config describes an OD-API ssd model "
                                           r"\(retinanet, ssd\), not --family faster_rcnn"):
        from_args(["--run-dir", "gs://b/r", "--train", "gs://b/t-*", "--family",
                   "faster_rcnn", "--pipeline-config", "gs://b/pipeline.config"], {},
                  files.__getitem__)
    with pytest.raises(ConfigError, match=r"--backbone \(model\.backbone\): yolo's backbone is "
                                           "CSP-Darknet"):
        from_args(["--run-dir", "gs://b/r", "--train", "gs://b/t-*", "--family", "yolo",
                   "--backbone", "resnet50"], {})
    with pytest.raises(ConfigError, match=r"--family \(model\.family\): only with --task "
                                           "detection"):
        from_args(["--run-dir", "gs://b/r", "--train", "gs://b/t-*", "--task", "keras",
                   "--checkpoint", "gs://b/m.h5", "--family", "faster_rcnn"], {})
