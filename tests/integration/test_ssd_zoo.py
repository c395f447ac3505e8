"""A TF2 Detection Zoo download fine-tuned as a user would: the zoo's
``ssd_mobilenet_v2_fpnlite_320x320`` pipeline.config (the fixture's copy of it) with the paths,
class count and schedule edited, and its zoo-layout checkpoint (``checkpoint/ckpt-0``, written by
../shared/odapi's ``make_checkpoint.py``), on two run-local workers, through SIGTERM and resume,
evaluation and export; then one worker against two. The math is checked against the OD API in
``test_od_api_fixtures.py``."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from tests.integration.conftest import (
    BUCKET,
    CLASSES,
    check_saved_model,
    model_weights,
    preempt_and_resume,
    train_one_and_two_workers,
    trainer_env,
    write_spec,
)
from tests.integration.test_od_api_fixtures import FIXTURES
from trainer import contract
from trainer.run.storage import Storage

ZOO = "ssd_mobilenet_v2_fpnlite_320x320_coco17_tpu-8"
pytestmark = [pytest.mark.integration, pytest.mark.skipif(
    not (FIXTURES / "fixtures" / ZOO).is_dir(), reason=f"no OD API fixtures at {FIXTURES}")]
SIZE = 128  # the fixture's 256 halved, for CPU time


@pytest.fixture(scope="module")
def zoo(gcs: Storage, dataset: dict[str, str], tmp_path_factory: Any) -> dict[str, str]:
    """The zoo model in the emulator: ``checkpoint/ckpt-0`` and the pipeline.config a user has
    edited (paths, 4 classes, 8 steps, a smaller fixed shape); the checkpoint's 6-class head
    does not fit the new class count."""
    sys.path.insert(0, str(FIXTURES))
    import make_checkpoint

    local = tmp_path_factory.mktemp("zoo")
    fixture = FIXTURES / "fixtures" / ZOO
    seed = json.loads((fixture / "meta.json").read_text())["seed"]
    prefix, _ = make_checkpoint.write_checkpoint(
        make_checkpoint.load_entries(str(fixture / "variables.json")), seed,
        str(local / "checkpoint"), manager=True)
    for path in (local / "checkpoint").iterdir():
        gcs.upload(path, f"gs://{BUCKET}/zoo/{ZOO}/checkpoint/{path.name}")
    text = (fixture / "pipeline.config").read_text()
    edits = {
        "PATH_TO_BE_CONFIGURED/mobilenet_v2.ckpt-1": f"gs://{BUCKET}/zoo/{ZOO}/checkpoint/ckpt-0",
        'fine_tune_checkpoint_type: "classification"': 'fine_tune_checkpoint_type: "detection"',
        "PATH_TO_BE_CONFIGURED/label_map.txt": dataset["label_map"],
        "PATH_TO_BE_CONFIGURED/train2017-?????-of-00256.tfrecord": dataset["train"],
        "PATH_TO_BE_CONFIGURED/val2017-?????-of-00032.tfrecord": dataset["eval"],
        "num_classes: 6": f"num_classes: {len(CLASSES)}",
        "height: 256": f"height: {SIZE}", "width: 256": f"width: {SIZE}",
        "total_steps: 50000": "total_steps: 8", "warmup_steps: 1000": "warmup_steps: 2",
        "num_steps: 50000": "num_steps: 8", "batch_size: 128": "batch_size: 8",
    }
    for old, new in edits.items():
        assert old in text, old
        text = text.replace(old, new)
    (local / "pipeline.config").write_text(text)
    gcs.upload(local / "pipeline.config", f"gs://{BUCKET}/zoo/{ZOO}/pipeline.config")
    short = text.replace("total_steps: 8", "total_steps: 3").replace("warmup_steps: 2",
                                                                     "warmup_steps: 1")
    (local / "short.config").write_text(short.replace("num_steps: 8", "num_steps: 3"))
    gcs.upload(local / "short.config", f"gs://{BUCKET}/zoo/{ZOO}/short.config")
    return {"pipeline": f"gs://{BUCKET}/zoo/{ZOO}/pipeline.config",
            "short": f"gs://{BUCKET}/zoo/{ZOO}/short.config",
            "checkpoint": f"gs://{BUCKET}/zoo/{ZOO}/checkpoint/ckpt-0",
            "local_checkpoint": prefix}


def _spec(path: Path, dataset: dict[str, str], zoo: dict[str, str], **training: Any) -> Path:
    """A 2-worker run-local spec naming the family and the pipeline.config, nothing else of the
    model: the config's paths, classes and schedule stand."""
    write_spec(path, dataset, "", training={"logEvery": 1, **training})
    spec = yaml.safe_load(path.read_text())
    spec["model"] = {"family": "ssd", "pipelineConfig": zoo["pipeline"]}
    del spec["data"]
    path.write_text(yaml.safe_dump(spec))
    return path


def test_zoo_model_fine_tunes_on_two_workers_resumes_evaluates_and_exports(
        tmp_path: Path, gcs: Storage, dataset: dict[str, str], zoo: dict[str, str]) -> None:
    spec = _spec(tmp_path / "spec.yaml", dataset, zoo, checkpointEvery=8, export=True)
    out = preempt_and_resume(spec, 8)
    assert f"fine-tuning (detection) from {zoo['checkpoint']}" in out
    run_dir = f"gs://{BUCKET}/runs-{spec.parent.name}/default/ft"
    metrics = json.loads(gcs.read_text(f"{run_dir}/{contract.RUN_EVAL_METRICS}"))
    assert metrics["step"] == 8 and 0.0 <= metrics["eval"]["AP"] <= 1.0
    weights = model_weights(gcs, run_dir, tmp_path / "ckpt", ("model",))
    # The OD API's layout, with the new class count: 6 anchors x (4 classes + background).
    head = ("model/_box_predictor/_prediction_heads/class_predictions_with_background/"
            "_class_predictor_layers/0/pointwise_kernel/.ATTRIBUTES/VARIABLE_VALUE")
    assert weights[head].shape == (1, 1, 128, 6 * (len(CLASSES) + 1))
    import tensorflow as tf

    zoo_shapes = tf.train.load_checkpoint(zoo["local_checkpoint"]).get_variable_to_shape_map()
    extractor = {k: v.shape for k, v in weights.items() if k.startswith("model/_feature_")}
    assert extractor == {k: tuple(s) for k, s in zoo_shapes.items()
                         if k.startswith("model/_feature_")}
    check_saved_model(gcs, f"{run_dir}/{contract.RUN_EXPORT}", tmp_path / "export")
    losses = re.findall(r"worker 0 step \d+/8 loss (\S+)", out)
    assert losses and all(np.isfinite(float(x)) for x in losses)


def _validate(spec: Path, *overrides: str) -> subprocess.CompletedProcess[str]:
    sets = [arg for override in overrides for arg in ("--set", override)]
    return subprocess.run([sys.executable, "-m", "launcher", "validate", str(spec), *sets],
                          env=trainer_env(), capture_output=True, text=True, timeout=600)


def test_validate_says_what_the_zoo_checkpoint_restores_and_names_the_key_that_does_not_fit(
        tmp_path: Path, dataset: dict[str, str], zoo: dict[str, str]) -> None:
    import tensorflow as tf

    spec = _spec(tmp_path / "spec.yaml", dataset, zoo)
    ok = _validate(spec)
    assert ok.returncode == 0, ok.stderr
    plan = re.search(r"info: restore: detection: (\d+) variables restored, (\d+) new \((.*)\), "
                     r"(\d+) of the checkpoint's unused", ok.stderr)
    assert plan, ok.stderr
    theirs = [name for name, _ in tf.train.list_variables(zoo["local_checkpoint"])]
    extractor = [k for k in theirs if k.startswith("model/_feature_extractor/")]
    predictor = [k for k in theirs if k.startswith("model/_box_predictor/")]
    # the OD API's "detection": the feature extractor restores, the box predictor starts anew
    assert int(plan[1]) == len(extractor) and int(plan[4]) == len(predictor) > 0
    assert int(plan[2]) == len(predictor) and plan[3].startswith("model/_box_predictor/")
    assert "(the same keys: they start anew)" in ok.stderr

    full = _validate(spec, "model.fineTuneType=full")
    assert full.returncode != 0
    error = full.stderr.strip().splitlines()[-1]
    # the checkpoint's 6-class head against the spec's 4 classes, and what fits instead
    assert re.search(r"model/_box_predictor/_prediction_heads/class_predictions_with_background"
                     r"/\S+: shape \[.*\] in the checkpoint, \[.*\] in the model: it does not "
                     r"fit fine-tune type full; it fits fine-tune type detection "
                     r"\(set model.fineTuneType: detection\)", error), error
    assert "info: restore" not in full.stderr
    # the zoo file's own type (its training started from an ImageNet classifier)
    zoo_type = _validate(spec, "model.fineTuneType=classification")
    assert zoo_type.returncode != 0
    assert zoo_type.stderr.strip().splitlines()[-1].endswith(
        "is not in the checkpoint (its variables are under model/): it does not fit fine-tune "
        "type classification; it fits fine-tune type detection (set model.fineTuneType: "
        "detection)"), zoo_type.stderr


def _equivalence_args(run_dir: str, zoo: dict[str, str]) -> list[str]:
    # Batch norm frozen, as in the other families' equivalence tests: TensorFlow's synchronised
    # batch norm matches one worker in the forward pass but not exactly in its gradient.
    return [sys.executable, "-m", "trainer", "--run-dir", run_dir, "--family", "ssd",
            "--pipeline-config", zoo["short"], "--checkpoint-every", "3",
            "--deterministic-input", "--no-export", "--freeze-batchnorm"]


def test_two_workers_match_one_worker_with_the_same_global_batch(
        gcs: Storage, zoo: dict[str, str], tmp_path: Path) -> None:
    single, double = f"gs://{BUCKET}/ssd-equiv-1", f"gs://{BUCKET}/ssd-equiv-2"
    train_one_and_two_workers(lambda run: _equivalence_args(run, zoo), single, double)
    one = model_weights(gcs, single, tmp_path / "one", ("model",))
    two = model_weights(gcs, double, tmp_path / "two", ("model",))
    assert one.keys() == two.keys() and len(one) > 300
    import tensorflow as tf

    reader = tf.train.load_checkpoint(zoo["local_checkpoint"])
    restored = [k for k in one if k.startswith("model/_feature_extractor/")]
    moved = max(float(np.abs(one[k] - reader.get_tensor(k)).max()) for k in restored)
    assert moved > 1e-5, "training did not change the restored feature extractor"
    mismatched = {k: float(np.abs(two[k] - one[k]).max()) for k in one
                  if not np.allclose(two[k], one[k], rtol=1e-4, atol=2e-5)}
    assert not mismatched, sorted(mismatched.items(), key=lambda kv: -kv[1])[:20]
