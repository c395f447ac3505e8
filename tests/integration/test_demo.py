"""``launcher demo`` end to end (shortened): ``--task keras`` (data and a pre-trained ``.h5``),
``--family faster_rcnn`` and ``--family yolo`` (data and a pre-trained detector), each a 2-worker
fine-tune through run-local, the same network from scratch, and the comparison."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from launcher.demo import DemoSettings, KerasDemoSettings, run_demo, run_keras_demo, summary

pytestmark = pytest.mark.integration


def test_keras_demo_fine_tunes_and_compares(tmp_path: Path) -> None:
    stages: list[str] = []

    def stage(title: str, total: int) -> Any:
        stages.append(title)
        return lambda done, _total: None

    result = run_keras_demo(tmp_path / "demo", KerasDemoSettings(finetune_steps=9,
                                                                 global_batch_size=8), stage)
    assert len(stages) == 3
    assert result.finetuned["step"] == result.scratch["step"] == 9
    for metrics in (result.finetuned, result.scratch):
        assert 0.0 <= metrics["eval"]["accuracy"] <= 1.0
    assert (result.run_dir / "export" / "model.h5").is_file()
    assert (result.run_dir / "export" / "saved_model" / "saved_model.pb").is_file()
    text = summary(result)
    assert "eval accuracy" in text and "after 9 steps" in text


@pytest.mark.parametrize(("family", "loss"), [("faster_rcnn", "frcnn_cls_loss"),
                                              ("yolo", "conf_loss")])
def test_detector_demo_fine_tunes_and_compares(tmp_path: Path, family: str, loss: str) -> None:
    stages: list[str] = []

    def stage(title: str, total: int) -> Any:
        stages.append(title)
        return lambda done, _total: None

    settings = DemoSettings(pretrain_steps=4, finetune_steps=4, family=family)
    result = run_demo(tmp_path / "demo", settings, stage)
    assert len(stages) == 4
    assert result.finetuned["step"] == result.scratch["step"] == 4
    for metrics in (result.finetuned, result.scratch):
        assert loss in metrics["train"] and 0.0 <= metrics["eval"]["AP"] <= 1.0
    config = (result.run_dir / "config.json").read_text()
    assert f'"family": "{family}"' in config
    assert (result.run_dir / "export" / "saved_model.pb").is_file()
    assert "eval AP50" in summary(result)
