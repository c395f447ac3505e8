"""Every registered family brings every named preset (``model.size``), and its task config is
built for each one without building a model."""

from __future__ import annotations

import pytest

from trainer.config import from_args
from trainer.detection import families
from trainer.detection.families.base import PRESETS
from trainer.detection.families.common import BACKBONES


@pytest.mark.parametrize("family", families.names())
def test_each_family_has_every_preset(family: str) -> None:
    found = families.get(family)
    assert set(found.tasks().PRESETS) == set(found.presets)
    # Every preset, unless a pipeline.config sizes the network (one: "standard").
    assert set(found.presets) == ({"standard"} if found.od_api_native else set(PRESETS))
    if found.od_api_native:
        return  # its network is in the pipeline.config, not the task config (test_od_api_*)
    sizes = {}
    for preset in found.presets:
        cfg = from_args(["--run-dir=/r", "--train=/t", f"--family={family}",
                         f"--model-size={preset}", "--image-size=128"], {})
        model = found.task_config(cfg, 3).model
        sizes[preset] = model.as_dict()
        # The image-size rule's level is the one the model is built with.
        levels = model.max_level if hasattr(model, "max_level") else \
            model.backbone.get().max_level
        assert found.max_levels[preset] == levels, (family, preset)
        for backbone in found.backbones:
            assert (backbone, preset) in BACKBONES
    assert sizes["tiny"] != sizes["standard"]
